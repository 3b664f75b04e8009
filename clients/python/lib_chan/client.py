"""The application client of lib_chan (PROTOCOL.md sections 1, 4 and 5), standard library only.

::

    from lib_chan.client import connect
    from lib_chan.etf import A

    with connect("localhost", 1234, "nameServer", "ABXy45", ca="certs/ca.pem") as ch:
        ch.cast((A.store, A.joe, "writing a book"))
        ch.rpc((A.lookup, A.joe))      # -> (Atom('ok'), 'writing a book')
        ch.rpc((A.lookup, A.jim))      # -> Atom('undefined')

:func:`connect` opens TCP, then TLS (1.2 at least; the server's certificate verified
against ``ca`` and the host name checked), sends ``{start_service, Service, Credential,
ArgsC}`` and waits for the welcome. The credential is one of:

* the service password (``password``, sent as a binary), the book's lib_chan;
* ``user`` with ``password``: ``{user, Name, {password, P}}`` (section 4.1);
* ``user`` with ``key``: an Ed25519 key login, ``{challenge, Ref}`` first and then
  ``{user, Name, {ed25519, Signature}}`` over the nonce, the server certificate's
  SHA-256, the user and the service (section 4.2). The standard library has no
  Ed25519: this needs the ``cryptography`` package, and says so when it is missing;
* ``user`` with ``cert`` and ``cert_key`` and no password: ``{user, Name, certificate}``,
  the TLS client certificate presented in this connection.

A :class:`Channel` is safe to share between threads. Its I/O runs on an ``asyncio``
event loop in a thread of its own (so the TLS object is only ever touched by one
thread); :meth:`Channel.rpc` may be called from many threads at once: each call gets
its own ``Ref`` and waits for its own ``{reply, Ref, Y}``. What the service pushes
(``{send, Y}``) is queued for :meth:`Channel.recv`.

Errors are exceptions, all :class:`LibChanError`: :class:`AuthFailed` (the server said
``{error, auth_failed}``; it never says why), :class:`Busy`, :class:`HandshakeError`
(any other refusal), :class:`TLSError`, :class:`Timeout` (also a ``TimeoutError``),
:class:`Closed` (with the ``reason`` the channel ended), :class:`RemoteError` (a call
answered ``{error, Ref, Reason}``), :class:`ProtocolError`. A failure to reach the
server at all (connection refused, unknown host) is the ``OSError`` the socket raised.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import itertools
import os
import queue
import ssl
import stat
import struct
import threading
import time
import weakref
from typing import Any, Optional, Union

from . import etf
from .etf import A, Atom, format_term

__all__ = [
    "connect", "Channel",
    "LibChanError", "HandshakeError", "AuthFailed", "Busy", "TLSError", "Timeout",
    "Closed", "RemoteError", "ProtocolError", "challenge_message", "default_ca",
]

#: The client's first frames are at most this large (PROTOCOL.md section 2).
HANDSHAKE_MAX_SEND = 4096
#: The largest frame accepted from the server before the welcome.
HANDSHAKE_MAX_RECV = 64 * 1024
#: The least receive limit after the welcome: max(max_frame, this).
MIN_MAX_RECV = 1 << 20
#: The message a key login signs starts with this (section 4.2).
CHALLENGE_CONTEXT = b"lib_chan-ed25519-v2\x00"

PathLike = Union[str, "os.PathLike[str]"]


# ---------------------------------------------------------------------------------------
# Errors


class LibChanError(Exception):
    """Base of this module's errors."""


class HandshakeError(LibChanError):
    """The server refused to start the service: ``{error, Reason}`` before the welcome."""

    def __init__(self, reason: Any, message: Optional[str] = None):
        self.reason = reason
        super().__init__(message or f"the server refused the handshake: {format_term(reason)}")


class AuthFailed(HandshakeError):
    """``{error, auth_failed}``: unknown service, wrong password, unknown user, wrong
    credential, service not allowed... The server never tells which."""

    def __init__(self, message: Optional[str] = None):
        super().__init__(A.auth_failed, message or "authentication failed (auth_failed)")


class Busy(HandshakeError):
    """``{error, busy}``: the server is at a connection or authentication limit."""

    def __init__(self):
        super().__init__(A.busy, "the server is busy (busy); try again later")


class TLSError(LibChanError):
    """TLS failed: the certificate was not trusted, the host name did not match, an alert."""


class Timeout(LibChanError, TimeoutError):
    """No answer in time (handshake, call, or :meth:`Channel.recv`)."""


class Closed(LibChanError):
    """The channel is closed. ``reason`` says why: ``close`` (the service closed it),
    ``closed`` (closed here), ``eof`` (the connection ended without a word), or the
    ``Reason`` of the server's ``{error, Reason}`` (e.g. ``idle_timeout``, ``shutdown``,
    ``revoked``)."""

    def __init__(self, reason: Any):
        self.reason = reason
        text = {
            A.close: "the service closed the channel",
            A.closed: "the channel was closed",
            A.eof: "the connection ended",
        }.get(reason) if isinstance(reason, Atom) else None
        super().__init__(f"channel closed: {text or 'server error ' + format_term(reason)}")


class RemoteError(LibChanError):
    """A call answered ``{error, Ref, Reason}``: ``no_reply``, ``handler_crashed``,
    ``busy``, ``{bad_request, X}``, ``forbidden``... The channel stays open."""

    def __init__(self, reason: Any):
        self.reason = reason
        super().__init__(f"call failed: {format_term(reason)}")


class ProtocolError(LibChanError):
    """The server sent something that is not the protocol."""


# ---------------------------------------------------------------------------------------
# Helpers


def default_ca() -> Optional[str]:
    """The CA file trusted when ``ca`` is not given: ``$LIB_CHAN_CA``, else ``ca.pem`` in
    ``$LIB_CHAN_HOME`` or ``~/.lib_chan`` (where ``lib_chan serve`` keeps its
    development CA) if it exists; else ``None``, the system's roots."""
    env = os.environ.get("LIB_CHAN_CA")
    if env:
        return env
    home = os.environ.get("LIB_CHAN_HOME") or os.path.join(os.path.expanduser("~"), ".lib_chan")
    path = os.path.join(home, "ca.pem")
    return path if os.path.isfile(path) else None


def _text(x: Union[str, bytes, Atom], what: str) -> bytes:
    if isinstance(x, (bytes, bytearray)):
        b = bytes(x)
    elif isinstance(x, str):
        b = x.encode("utf-8")
    else:
        raise TypeError(f"{what} must be a str or bytes, not {type(x).__name__}")
    return b


def challenge_message(nonce: bytes, cert_hash: bytes, user: bytes, service: bytes) -> bytes:
    """The message a key login signs (PROTOCOL.md section 4.2)."""
    if len(nonce) != 32 or len(cert_hash) != 32:
        raise ValueError("nonce and certificate hash are 32 bytes each")
    return (CHALLENGE_CONTEXT + nonce + cert_hash
            + struct.pack(">H", len(user)) + user
            + struct.pack(">H", len(service)) + service)


def _load_ed25519(key: Any):
    """An Ed25519 private key from a PKCS#8 PEM file path, 32 raw seed bytes, or a
    ``cryptography`` key object."""
    try:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
    except ImportError:
        raise LibChanError(
            "Ed25519 key logins need the 'cryptography' package (the Python standard "
            "library has no Ed25519): pip install cryptography, or log in with a "
            "password or a client certificate") from None
    if isinstance(key, Ed25519PrivateKey):
        return key
    if isinstance(key, (bytes, bytearray)) and len(key) == 32:
        return Ed25519PrivateKey.from_private_bytes(bytes(key))
    if isinstance(key, (str, os.PathLike)):
        path = os.fspath(key)
        st = os.stat(path)
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise LibChanError(f"key file {path} is readable or writable by others: run chmod 600 {path}")
        with open(path, "rb") as f:
            pem = f.read()
        try:
            k = load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as e:
            raise LibChanError(f"key file {path}: not a PKCS#8 PEM private key ({e})") from None
        if not isinstance(k, Ed25519PrivateKey):
            raise LibChanError(f"key file {path}: not an Ed25519 key")
        return k
    raise TypeError("key must be a PEM file path, 32 seed bytes or an Ed25519PrivateKey")


def _is(t: Any, tag: str, n: int) -> bool:
    """Whether ``t`` is a tuple of ``n`` elements tagged with the atom ``tag``:
    ``_is(t, "reply", 3)`` is true for ``{reply, _, _}``."""
    return isinstance(t, tuple) and len(t) == n and t[0] == Atom(tag)


def _is_ref(x: Any) -> bool:
    return type(x) is int and x >= 0


# ---------------------------------------------------------------------------------------
# Frames over asyncio streams


async def _read_frame(reader: asyncio.StreamReader, limit: int) -> Optional[Any]:
    """One decoded frame, or None at a clean end of stream."""
    try:
        header = await reader.readexactly(4)
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            return None
        raise ProtocolError("connection ended inside a frame header") from None
    (n,) = struct.unpack(">I", header)
    if n == 0 or n > limit:
        raise ProtocolError(f"server frame of {n} bytes (limit {limit})")
    # readexactly's buffer grows with the bytes that arrive: nothing is reserved for n.
    try:
        payload = await reader.readexactly(n)
    except asyncio.IncompleteReadError:
        raise ProtocolError(f"connection ended inside a frame of {n} bytes") from None
    try:
        return etf.decode(payload)
    except etf.DecodeError as e:
        raise ProtocolError(f"undecodable frame from the server: {e}") from None


# ---------------------------------------------------------------------------------------
# The I/O side, living on the channel's event loop


class _Link:
    """The state shared by the loop thread and the callers' threads."""

    def __init__(self, loop: asyncio.AbstractEventLoop, thread: threading.Thread):
        self.loop = loop
        self.thread = thread
        self.reader: Optional[asyncio.StreamReader] = None
        self.writer: Optional[asyncio.StreamWriter] = None
        self.lock = threading.Lock()
        self.pending: dict[int, concurrent.futures.Future] = {}
        self.pushes: "queue.Queue[Any]" = queue.Queue()
        self.reason: Any = None          # set once: why the channel ended
        self.closing = False             # close() was called here
        self.reader_task: Optional[asyncio.Task] = None
        self.recv_limit = HANDSHAKE_MAX_RECV
        self.welcome: dict = {}
        self.peer_cert: bytes = b""
        self.stopped = False

    # --- running on the loop ---

    async def dispatch(self) -> None:
        assert self.reader is not None
        reason: Any = A.eof
        try:
            while True:
                msg = await _read_frame(self.reader, self.recv_limit)
                if msg is None:
                    break
                if msg == A.close:
                    reason = A.close
                    break
                if _is(msg, "reply", 3) and _is_ref(msg[1]):
                    self._resolve(msg[1], result=msg[2])
                elif _is(msg, "error", 3) and _is_ref(msg[1]):
                    self._resolve(msg[1], error=RemoteError(msg[2]))
                elif _is(msg, "send", 2):
                    self.pushes.put(msg[1])
                elif _is(msg, "pong", 2) and _is_ref(msg[1]):
                    self._resolve(msg[1], result=time.monotonic())
                elif _is(msg, "error", 2):
                    reason = msg[1]
                    break
                else:
                    reason = A.bad_message
                    break
        except ProtocolError:
            reason = A.bad_message
        except (OSError, ssl.SSLError, ConnectionError):
            reason = A.eof
        except asyncio.CancelledError:
            reason = A.closed
        self.finish(A.closed if self.closing and reason == A.eof else reason)
        if self.writer is not None:
            self.writer.close()

    def _resolve(self, ref: int, result: Any = None, error: Optional[BaseException] = None) -> None:
        with self.lock:
            fut = self.pending.pop(ref, None)
        if fut is None or fut.done():
            return  # a late answer to a call that timed out: dropped
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)

    def finish(self, reason: Any) -> None:
        """Ends the channel: every call waiting fails with Closed(reason), recv too."""
        with self.lock:
            if self.reason is not None:
                return
            self.reason = reason
            pending, self.pending = self.pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(Closed(reason))
        self.pushes.put(_END)

    async def write(self, data: bytes) -> None:
        if self.reason is not None:
            raise Closed(self.reason)
        assert self.writer is not None
        self.writer.write(data)
        try:
            await self.writer.drain()
        except (OSError, ConnectionError) as e:
            raise Closed(self.reason if self.reason is not None else A.eof) from e

    async def close(self, wait: float) -> None:
        self.closing = True
        if self.reason is None and self.writer is not None:
            try:
                self.writer.write(etf.frame(A.close))
                await asyncio.wait_for(self.writer.drain(), wait)
            except (OSError, ConnectionError, asyncio.TimeoutError):
                pass
            # The server closes after close: wait for that, within `wait`.
            if self.reader_task is not None:
                try:
                    await asyncio.wait_for(asyncio.shield(self.reader_task), wait)
                except (asyncio.TimeoutError, Exception):
                    pass
        if self.reader_task is not None and not self.reader_task.done():
            self.reader_task.cancel()
            try:
                await self.reader_task
            except BaseException:
                pass
        self.finish(A.closed)
        if self.writer is not None:
            self.writer.close()
            try:
                await asyncio.wait_for(self.writer.wait_closed(), 1)
            except BaseException:
                pass

    # --- from any thread ---

    def run(self, coro, timeout: Optional[float]):
        """Runs ``coro`` on the loop and waits for it (Timeout when it takes too long)."""
        if self.stopped:
            coro.close()
            raise Closed(self.reason if self.reason is not None else A.closed)
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise Timeout(f"no progress within {timeout} s") from None

    def stop(self) -> None:
        """Stops the loop and its thread (idempotent)."""
        if self.stopped:
            return
        self.stopped = True
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:
            pass
        if threading.current_thread() is not self.thread:
            self.thread.join(5)
            if not self.thread.is_alive() and not self.loop.is_closed():
                self.loop.close()


_END = object()  # after the last push


def _start_loop() -> _Link:
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        loop.run_forever()
        # Let cancelled tasks finish their clean-up.
        tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        # and the callbacks their closing scheduled (connection_lost)
        loop.run_until_complete(asyncio.sleep(0))

    thread = threading.Thread(target=run, name="lib_chan-channel", daemon=True)
    link = _Link(loop, thread)
    thread.start()
    ready.wait()
    return link


# ---------------------------------------------------------------------------------------
# The user's side


class Channel:
    """An open channel to a service. Use :func:`connect` to make one; ``with`` closes it.

    Attributes: ``welcome`` (the server's welcome map, keys as atoms), ``protocol``,
    ``max_frame``, ``user`` (the named user's name, a ``str``, or ``None``),
    ``session`` (bytes or ``None``), ``peer_cert`` (the server certificate's DER)."""

    def __init__(self, link: _Link, address: str):
        self._link = link
        self._refs = itertools.count(1)
        self._ref_lock = threading.Lock()
        self.address = address
        self.welcome: dict = link.welcome
        self.max_frame: int = link.welcome.get(A.max_frame, etf.DEFAULT_MAX_FRAME)
        self.protocol: int = link.welcome.get(A.protocol, 1)
        user = link.welcome.get(A.user)
        self.user: Optional[str] = user.decode("utf-8", "replace") if isinstance(user, bytes) else None
        session = link.welcome.get(A.session)
        self.session: Optional[bytes] = session if isinstance(session, bytes) else None
        self.peer_cert: bytes = link.peer_cert
        self._finalizer = weakref.finalize(self, link.stop)

    def __repr__(self) -> str:
        state = "open" if self._link.reason is None else f"closed ({format_term(self._link.reason)})"
        return f"<lib_chan Channel {self.address} {state}>"

    def __enter__(self) -> "Channel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """Whether the channel has ended."""
        return self._link.reason is not None

    @property
    def close_reason(self) -> Any:
        """Why the channel ended (see :class:`Closed`), or None while it is open."""
        return self._link.reason

    def _next_ref(self) -> int:
        with self._ref_lock:
            return next(self._refs)

    def _frame(self, term: Any) -> bytes:
        payload = etf.encode(term)
        if len(payload) > self.max_frame:
            raise ValueError(
                f"a frame of {len(payload)} bytes is over the server's max_frame of {self.max_frame}")
        return struct.pack(">I", len(payload)) + payload

    def _send(self, data: bytes, timeout: Optional[float]) -> None:
        if self._link.reason is not None:
            raise Closed(self._link.reason)
        self._link.run(self._link.write(data), timeout)

    def cast(self, term: Any, timeout: Optional[float] = 30) -> None:
        """Sends ``{send, term}``: the service gets ``term`` and answers nothing (unless it
        pushes something, which :meth:`recv` returns). Returns once the frame is handed
        to the connection (waiting while the server reads slower than we write)."""
        self._send(self._frame((A.send, term)), timeout)

    def rpc(self, term: Any, timeout: Optional[float] = 30) -> Any:
        """Sends ``{call, Ref, term}`` and returns the service's reply ``Y`` of
        ``{reply, Ref, Y}``. Raises :class:`RemoteError` for ``{error, Ref, Reason}``,
        :class:`Timeout` when no reply came within ``timeout`` seconds (a late reply is
        dropped), :class:`Closed` when the channel ends first. Thread-safe: many threads
        may have calls outstanding at once."""
        deadline = None if timeout is None else time.monotonic() + timeout
        ref = self._next_ref()
        data = self._frame((A.call, ref, term))
        fut: concurrent.futures.Future = concurrent.futures.Future()
        link = self._link
        with link.lock:
            if link.reason is not None:
                raise Closed(link.reason)
            link.pending[ref] = fut
        try:
            self._send(data, timeout)
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return fut.result(left)
            except concurrent.futures.TimeoutError:
                raise Timeout(f"no reply to {format_term(term)} within {timeout} s") from None
        finally:
            with link.lock:
                link.pending.pop(ref, None)

    def ping(self, timeout: Optional[float] = 10) -> float:
        """Sends ``{ping, Ref}`` (answered by the server itself) and returns the round
        trip time in seconds."""
        ref = self._next_ref()
        fut: concurrent.futures.Future = concurrent.futures.Future()
        link = self._link
        with link.lock:
            if link.reason is not None:
                raise Closed(link.reason)
            link.pending[ref] = fut
        start = time.monotonic()
        try:
            self._send(self._frame((A.ping, ref)), timeout)
            try:
                return fut.result(timeout) - start
            except concurrent.futures.TimeoutError:
                raise Timeout(f"no pong within {timeout} s") from None
        finally:
            with link.lock:
                link.pending.pop(ref, None)

    def recv(self, timeout: Optional[float] = None) -> Any:
        """The next term the service pushed (``{send, Y}`` gives ``Y``), in arrival order.
        Waits up to ``timeout`` seconds (None: for ever) and raises :class:`Timeout`
        then; raises :class:`Closed` once the channel has ended and every push that came
        before the end has been returned."""
        try:
            item = self._link.pushes.get(timeout=timeout)
        except queue.Empty:
            raise Timeout(f"nothing pushed within {timeout} s") from None
        if item is _END:
            self._link.pushes.put(_END)  # every later recv ends the same way
            raise Closed(self._link.reason)
        return item

    def close(self, timeout: float = 2.0) -> None:
        """Sends ``close`` (the service is told the channel closed), waits up to
        ``timeout`` seconds for the server to close the connection, and ends. Calls still
        waiting fail with :class:`Closed`. Idempotent."""
        link = self._link
        if not link.stopped:
            try:
                link.run(link.close(timeout), timeout * 2 + 2)
            except (Timeout, Closed):
                pass
            link.finish(A.closed)
        self._finalizer()


def connect(host: str, port: int, service: Union[str, Atom], password: Union[str, bytes, None] = None,
            args: Any = None, *, ca: Optional[PathLike] = None, user: Optional[str] = None,
            key: Any = None, cert: Optional[PathLike] = None, cert_key: Optional[PathLike] = None,
            timeout: float = 10.0, server_hostname: Optional[str] = None,
            options: Optional[dict] = None, context: Optional[ssl.SSLContext] = None) -> Channel:
    """Opens a channel to ``service`` at ``host:port`` (see the module's docstring).

    :param password: the service password, or with ``user`` the user's own password
        (``str`` as UTF-8, or ``bytes``; sent as a binary).
    :param args: ``ArgsC``, any term (default ``[]``, the book's ``""``).
    :param ca: the CA file (PEM) the server's certificate must chain to; default
        :func:`default_ca`.
    :param user: log in as this named user (section 4.1).
    :param key: with ``user``, an Ed25519 private key: a PKCS#8 PEM file (mode 0600,
        as ``lib_chan keygen`` writes it), its 32-byte seed, or a ``cryptography``
        key. Needs the ``cryptography`` package.
    :param cert: a client certificate (PEM) to present in TLS, with its ``cert_key``;
        with ``user`` and no password or key, it is the login's credential.
    :param timeout: seconds for TCP, TLS and the handshake together.
    :param server_hostname: the name to check the certificate against, if not ``host``.
    :param options: the handshake options map of section 4.3 (e.g.
        ``{A.session: A.new}``); its keys may be ``str`` (turned into atoms).
    :param context: an ``ssl.SSLContext`` to use as it is, instead of ``ca``/``cert``.
    :raises AuthFailed, Busy, HandshakeError, TLSError, Timeout, Closed, ProtocolError,
        OSError: see the module's docstring.
    """
    service_term: Any
    if isinstance(service, Atom):
        service_term = service
        service_bytes = str(service).encode("utf-8")
    else:
        service_bytes = _text(service, "service")
        service_term = service_bytes
    args_c = [] if args is None else args

    # The credential.
    signer = None
    if user is None:
        if key is not None:
            raise ValueError("key needs user: a key login is a named user's")
        if password is None:
            raise ValueError("give the service password, or user with a credential")
        credential: Any = _text(password, "password")
    else:
        name = _text(user, "user")
        if not 1 <= len(name) <= 64:
            raise ValueError("a user name is 1 to 64 bytes of UTF-8")
        if key is not None:
            signer = _load_ed25519(key)
            credential = None  # built after the challenge
        elif password is not None:
            credential = (A.user, name, (A.password, _text(password, "password")))
        elif cert is not None:
            credential = (A.user, name, A.certificate)
        else:
            raise ValueError("user needs a credential: password, key, or cert with cert_key")

    if context is None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
        cafile = os.fspath(ca) if ca is not None else default_ca()
        if cafile is not None:
            context.load_verify_locations(cafile=cafile)
        else:
            context.load_default_certs()
        if cert is not None:
            context.load_cert_chain(os.fspath(cert), os.fspath(cert_key) if cert_key else None)
    sni = server_hostname or host
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    hs_options = None
    if options is not None:
        hs_options = {Atom(k) if type(k) is str else k: v for k, v in options.items()}

    link = _start_loop()

    async def handshake() -> None:
        try:
            reader, writer = await asyncio.open_connection(
                host, port, ssl=context, server_hostname=sni,
                ssl_handshake_timeout=timeout)
        except ssl.SSLCertVerificationError as e:
            raise TLSError(f"TLS with {address}: the server's certificate was not accepted: "
                           f"{e.verify_message or e.reason} (trusting {ca or default_ca() or 'the system roots'})") from None
        except ssl.SSLError as e:
            raise TLSError(f"TLS with {address} failed: {e.reason or e}") from None
        link.reader, link.writer = reader, writer
        ssl_obj = writer.get_extra_info("ssl_object")
        link.peer_cert = ssl_obj.getpeercert(binary_form=True) if ssl_obj else b""

        async def send(term: Any) -> None:
            data = etf.frame(term)
            if len(data) - 4 > HANDSHAKE_MAX_SEND:
                raise ValueError(f"the first frame is {len(data) - 4} bytes: at most {HANDSHAKE_MAX_SEND} "
                                 "(a smaller ArgsC?)")
            writer.write(data)
            await writer.drain()

        async def answer() -> Any:
            try:
                msg = await _read_frame(reader, HANDSHAKE_MAX_RECV)
            except (ConnectionError, OSError, ssl.SSLError) as e:
                raise Closed(A.eof) from e
            if msg is None:
                raise Closed(A.eof)
            return msg

        cred = credential
        if signer is not None:
            await send((A.challenge, 1))
            msg = await answer()
            if not (_is(msg, "challenge", 3) and msg[1] == 1
                    and isinstance(msg[2], bytes) and len(msg[2]) == 32):
                _raise_refusal(msg)
                raise ProtocolError(f"expected {{challenge, 1, Nonce}}, got {format_term(msg)}")
            signed = challenge_message(msg[2], hashlib.sha256(link.peer_cert).digest(),
                                       name, service_bytes)
            cred = (A.user, name, (A.ed25519, signer.sign(signed)))
        start = (A.start_service, service_term, cred, args_c)
        if hs_options is not None:
            start = start + (hs_options,)
        await send(start)
        msg = await answer()
        if _is(msg, "ok", 2) and isinstance(msg[1], dict):
            link.welcome = msg[1]
            max_frame = msg[1].get(A.max_frame)
            link.recv_limit = max(max_frame if type(max_frame) is int else 0, MIN_MAX_RECV)
            link.reader_task = asyncio.get_running_loop().create_task(link.dispatch())
            return
        _raise_refusal(msg)
        raise ProtocolError(f"expected the welcome {{ok, #{{...}}}}, got {format_term(msg)}")

    async def guarded() -> None:
        try:
            await asyncio.wait_for(handshake(), timeout)
        except asyncio.TimeoutError:
            raise Timeout(f"no welcome from {address} within {timeout} s") from None
        except BaseException:
            if link.writer is not None:
                link.writer.close()
                try:
                    await asyncio.wait_for(link.writer.wait_closed(), 1)
                except BaseException:  # noqa: BLE001 - closing after a failure
                    pass
            raise

    try:
        link.run(guarded(), timeout + 5)
    except BaseException:
        link.stop()
        raise
    return Channel(link, address)


def _raise_refusal(msg: Any) -> None:
    """Raises the error for a handshake answer ``{error, Reason}``."""
    if _is(msg, "error", 2):
        reason = msg[1]
        if reason == A.auth_failed:
            raise AuthFailed()
        if reason == A.busy:
            raise Busy()
        raise HandshakeError(reason)

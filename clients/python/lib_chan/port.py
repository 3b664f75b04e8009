"""Write a lib_chan service in Python as a port program (PROTOCOL.md section 9).

The channel server starts the program (``handler = "port"``) and talks to it in
``{packet, 4}`` ETF frames on its standard input and output; one program serves every
connection of its service, each told apart by ``Conn``. This module hides the frames::

    from lib_chan.port import Service, CallError
    from lib_chan.etf import A

    svc = Service("counter")

    @svc.on_open
    def opened(conn, args_c, info):
        conn.state["n"] = 0                  # per-connection state

    @svc.on_call
    def call(conn, request):                 # {call, Conn, Ref, X} -> its return value
        if request == A.incr:
            conn.state["n"] += 1
            return conn.state["n"]           # {reply, Conn, Ref, N}
        raise CallError((A.bad_request, request))   # {error, Conn, Ref, {bad_request, X}}

    @svc.on_cast
    def cast(conn, message):                 # {chan, Conn, X}: answer nothing, or push
        conn.send((A.got, message))          # {send, Conn, Y}; conn.close() -> {close, Conn}

    @svc.on_closed
    def closed(conn):                        # {closed, Conn}
        pass

    svc.run()

What each frame from the server does:

=============================  ========================================================
``{hello, 2, ArgsS}``          ``svc.args = ArgsS``; ``on_hello(args_s)`` if set
``{open, Conn, ArgsC, Info}``  a :class:`Conn` is made (``conn.info``, ``conn.peer``,
                               ``conn.user``, ``conn.state``); ``on_open(conn, args_c,
                               info)``. If it raises, the channel is closed.
``{chan, Conn, X}``            ``on_cast(conn, X)``; its return value is ignored
``{call, Conn, Ref, X}``       ``on_call(conn, X)``, answered by what it does:
``{closed, Conn}``             ``on_closed(conn)``, then the conn is forgotten
=============================  ========================================================

How a call is answered:

* it returns ``Y``: ``{reply, Conn, Ref, Y}`` (``True``/``False`` are the atoms);
* it raises :class:`CallError(Reason) <CallError>`: ``{error, Conn, Ref, Reason}``;
* it raises anything else: ``{error, Conn, Ref, handler_crashed}``, with the traceback on
  standard error; the program goes on serving;
* it returns ``None``: ``{error, Conn, Ref, no_reply}`` (the handler answered nothing);
* it returns what is not a term: ``handler_crashed``; a reply over ``max_frame`` bytes:
  ``{error, Conn, Ref, reply_too_large}``;
* it calls ``conn.defer()`` and returns that :class:`Deferred`: nothing now; the answer
  comes when some code (another thread, a later frame) calls ``deferred.reply(Y)`` or
  ``deferred.error(Reason)``;
* no ``on_call`` handler: ``{error, Conn, Ref, {bad_request, X}}``.

Handlers run one at a time, in the order frames arrive, on the thread that called
:meth:`Service.run`. ``conn.send`` and ``Deferred`` answers may be used from other
threads (writes are serialised). Frames for a ``Conn`` that is not open, unknown frames
and undecodable ones are logged and ignored; the program ends (``run`` returns) when the
server closes its standard input.

Standard output is the protocol: :meth:`Service.run` keeps the real descriptors for the
frames and points file descriptor 1 and ``sys.stdout`` at standard error (and
descriptor 0 at ``/dev/null``), so a stray ``print()`` or a child process cannot
corrupt a frame. Logging (module ``logging``, configured to standard error if nothing
configured it) goes to the server's log.
"""

from __future__ import annotations

import logging
import os
import struct
import sys
import threading
import traceback
from typing import Any, BinaryIO, Callable, Optional

from . import etf
from .etf import A, Atom, format_term

__all__ = ["Service", "Conn", "CallError", "Deferred", "PROTOCOL_VERSION"]

#: The port protocol version this module speaks (the ``2`` of ``{hello, 2, ArgsS}``).
PROTOCOL_VERSION = 2
#: Frames from the server may exceed ``max_frame`` by this much: it wraps a client's
#: term (at most ``max_frame``) with ``Conn`` and ``Ref``, and adds the ``Info`` map.
WRAP_SLACK = 64 * 1024


class CallError(Exception):
    """Raise it in ``on_call`` to fail the call with ``{error, Conn, Ref, Reason}``, e.g.
    ``raise CallError((A.bad_request, request))`` or ``raise CallError(A.forbidden)``."""

    def __init__(self, reason: Any):
        super().__init__(format_term(reason))
        self.reason = reason


class Deferred:
    """A call to be answered later: what ``conn.defer()`` returns inside ``on_call``.
    Answer it once, with :meth:`reply` or :meth:`error`, from any thread."""

    def __init__(self, conn: "Conn", ref: int):
        self.conn = conn
        self.ref = ref
        self._answered = False
        self._lock = threading.Lock()

    @property
    def answered(self) -> bool:
        return self._answered

    def reply(self, term: Any) -> None:
        """Answers ``{reply, Conn, Ref, term}``."""
        self._answer(term, error=False)

    def error(self, reason: Any) -> None:
        """Answers ``{error, Conn, Ref, reason}``."""
        self._answer(reason, error=True)

    def _answer(self, term: Any, error: bool) -> None:
        with self._lock:
            if self._answered:
                self.conn.service.log.warning("call %d of conn %d answered twice; the second answer is dropped",
                                              self.ref, self.conn.id)
                return
            self._answered = True
        svc = self.conn.service
        what = "error reason" if error else "reply"
        try:
            payload = etf.encode((A.error if error else A.reply, self.conn.id, self.ref, term))
        except etf.EncodeError as e:
            svc.log.error("conn %d: the %s of call %d is not a term (%s): answering handler_crashed",
                          self.conn.id, what, self.ref, e)
            svc._write((A.error, self.conn.id, self.ref, A.handler_crashed))
            return
        if len(payload) > svc.max_frame:
            svc.log.error("conn %d: the %s of call %d is %d bytes, over max_frame %d: answering reply_too_large",
                          self.conn.id, what, self.ref, len(payload), svc.max_frame)
            svc._write((A.error, self.conn.id, self.ref, A.reply_too_large))
            return
        svc._write_payload(payload)


class Conn:
    """One client's connection to the service.

    ``id`` (the ``Conn`` number), ``args`` (its ``ArgsC``), ``info`` (the ``Info`` map,
    atom keys), ``peer`` (``"ADDR:PORT"``), ``user`` (the named user, or ``None``),
    ``state`` (a dict of your own), ``closed`` (true once the server said
    ``{closed, Conn}`` or :meth:`close` was called)."""

    def __init__(self, service: "Service", conn_id: int, args: Any, info: Any):
        self.service = service
        self.id = conn_id
        self.args = args
        self.info = info if isinstance(info, dict) else {}
        self.peer: Optional[str] = _text(self.info.get(A.peer))
        self.user: Optional[str] = _text(self.info.get(A.user))
        self.state: dict = {}
        self.closed = False
        self._call: Optional[Deferred] = None

    def __repr__(self) -> str:
        who = f" user {self.user}" if self.user else ""
        return f"<Conn {self.id} {self.peer}{who}{' closed' if self.closed else ''}>"

    def send(self, term: Any) -> None:
        """Pushes ``term`` to the client (``{send, Conn, term}``; the client gets
        ``{send, term}``). Thread-safe. Raises ``ValueError`` for what is not a term or
        is over ``max_frame``."""
        if self.closed:
            self.service.log.debug("send to closed conn %d dropped", self.id)
            return
        self.service._write((A.send, self.id, term))

    def close(self) -> None:
        """Closes the channel (``{close, Conn}``); the server then says ``{closed, Conn}``."""
        if not self.closed:
            self.closed = True
            self.service._write((A.close, self.id))

    def defer(self) -> Deferred:
        """Inside ``on_call``: return the result to answer the call later."""
        if self._call is None:
            raise RuntimeError("defer() is only for the call being handled, inside on_call")
        return self._call


def _text(x: Any) -> Optional[str]:
    if isinstance(x, (bytes, str)):
        return x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)
    return None


def _is(t: Any, tag: str, n: int) -> bool:
    return isinstance(t, tuple) and len(t) == n and t[0] == Atom(tag)


def _is_id(x: Any) -> bool:
    return type(x) is int and x >= 0


class Service:
    """A service run as a port program. Register handlers with the decorators, then call
    :meth:`run`.

    :param name: the logger's name (default ``"lib_chan.port"``).
    :param max_frame: the largest frame written (and, plus :data:`WRAP_SLACK`, read);
        the protocol's default 1 MiB, as the server's ``max_frame``.
    """

    def __init__(self, name: Optional[str] = None, *, max_frame: int = etf.DEFAULT_MAX_FRAME):
        self.log = logging.getLogger(name or "lib_chan.port")
        self.max_frame = max_frame
        self.args: Any = None
        self.connections: dict[int, Conn] = {}
        self._on_hello: Optional[Callable] = None
        self._on_open: Optional[Callable] = None
        self._on_call: Optional[Callable] = None
        self._on_cast: Optional[Callable] = None
        self._on_closed: Optional[Callable] = None
        self._out: Optional[BinaryIO] = None
        self._out_lock = threading.Lock()
        self._saw_hello = False

    # --- decorators ---

    def on_hello(self, fn: Callable[[Any], Any]) -> Callable:
        """``fn(args_s)`` on ``{hello, 2, ArgsS}``."""
        self._on_hello = fn
        return fn

    def on_open(self, fn: Callable[[Conn, Any, dict], Any]) -> Callable:
        """``fn(conn, args_c, info)`` on ``{open, Conn, ArgsC, Info}``."""
        self._on_open = fn
        return fn

    def on_call(self, fn: Callable[[Conn, Any], Any]) -> Callable:
        """``fn(conn, request) -> reply`` on ``{call, Conn, Ref, X}`` (see the module)."""
        self._on_call = fn
        return fn

    def on_cast(self, fn: Callable[[Conn, Any], Any]) -> Callable:
        """``fn(conn, message)`` on ``{chan, Conn, X}``."""
        self._on_cast = fn
        return fn

    def on_closed(self, fn: Callable[[Conn], Any]) -> Callable:
        """``fn(conn)`` on ``{closed, Conn}``."""
        self._on_closed = fn
        return fn

    # --- output ---

    def send(self, conn: "Conn | int", term: Any) -> None:
        """Pushes ``term`` to connection ``conn`` (a :class:`Conn` or its id)."""
        c = conn if isinstance(conn, Conn) else self.connections.get(conn)
        if c is None:
            self.log.debug("send to unknown conn %r dropped", conn)
            return
        c.send(term)

    def _write(self, term: Any) -> None:
        payload = etf.encode(term)
        if len(payload) > self.max_frame:
            raise ValueError(f"a frame of {len(payload)} bytes is over max_frame {self.max_frame}")
        self._write_payload(payload)

    def _write_payload(self, payload: bytes) -> None:
        out = self._out
        if out is None:
            raise RuntimeError("the service is not running")
        with self._out_lock:
            out.write(struct.pack(">I", len(payload)))
            out.write(payload)
            out.flush()

    # --- input ---

    def run(self, stdin: Optional[BinaryIO] = None, stdout: Optional[BinaryIO] = None) -> None:
        """Serves until the server closes standard input. With no arguments it takes the
        process's standard input and output (see the module's docstring); streams given
        (binary) are used as they are, for tests."""
        if not logging.getLogger().handlers:
            logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                                format="%(name)s: %(levelname)s %(message)s")
        restore = None
        if stdin is None and stdout is None:
            stdin, stdout, restore = _claim_stdio()
        elif stdin is None or stdout is None:
            raise ValueError("give both stdin and stdout, or neither")
        self._out = stdout
        try:
            self._serve(stdin)
        except BrokenPipeError:
            self.log.info("the server closed our standard output; stopping")
        except EOFError as e:
            self.log.error("%s; stopping", e)
        except KeyboardInterrupt:
            self.log.info("interrupted; stopping")
        finally:
            self._out = None
            if restore is not None:
                restore()

    def _serve(self, stdin: BinaryIO) -> None:
        limit = self.max_frame + WRAP_SLACK
        while True:
            header = stdin.read(4)
            if not header:
                self.log.info("standard input closed; stopping")
                return
            if len(header) < 4:
                header += _read_exact(stdin, 4 - len(header))
            (n,) = struct.unpack(">I", header)
            if n == 0:
                self.log.error("empty frame from the server; ignored")
                continue
            if n > limit:
                self.log.error("frame of %d bytes from the server is over %d; skipped", n, limit)
                _skip(stdin, n)
                continue
            payload = _read_exact(stdin, n)
            try:
                msg = etf.decode(payload)
            except etf.DecodeError as e:
                self.log.error("undecodable frame from the server (%s); ignored", e)
                continue
            self._dispatch(msg)

    def _dispatch(self, msg: Any) -> None:
        if _is(msg, "hello", 3):
            self._saw_hello = True
            if msg[1] != PROTOCOL_VERSION:
                self.log.warning("the server speaks port protocol %s; this module speaks %d",
                                 format_term(msg[1]), PROTOCOL_VERSION)
            self.args = msg[2]
            if self._on_hello is not None:
                self._guard("on_hello", self._on_hello, msg[2])
            return
        if not self._saw_hello:
            self.log.warning("no {hello, 2, ArgsS} before %s", _brief(msg))
            self._saw_hello = True
        if _is(msg, "open", 4) and _is_id(msg[1]):
            self._open(msg[1], msg[2], msg[3])
        elif _is(msg, "chan", 3) and _is_id(msg[1]):
            conn = self._conn(msg[1], msg)
            if conn is None:
                return
            if self._on_cast is None:
                self.log.info("conn %d: no on_cast handler; ignored %s", conn.id, _brief(msg[2]))
                return
            self._guard("on_cast", self._on_cast, conn, msg[2])
        elif _is(msg, "call", 4) and _is_id(msg[1]) and _is_id(msg[2]):
            conn = self._conn(msg[1], msg)
            if conn is not None:
                self._call(conn, msg[2], msg[3])
        elif _is(msg, "closed", 2) and _is_id(msg[1]):
            conn = self.connections.pop(msg[1], None)
            if conn is None:
                self.log.info("closed for conn %d, which is not open; ignored", msg[1])
                return
            conn.closed = True
            if self._on_closed is not None:
                self._guard("on_closed", self._on_closed, conn)
        else:
            self.log.error("unknown frame from the server, ignored: %s", _brief(msg))

    def _conn(self, conn_id: int, msg: Any) -> Optional[Conn]:
        conn = self.connections.get(conn_id)
        if conn is None:
            self.log.info("frame for conn %d, which is not open; ignored: %s", conn_id, _brief(msg))
        return conn

    def _open(self, conn_id: int, args_c: Any, info: Any) -> None:
        if conn_id in self.connections:
            self.log.warning("open for conn %d, which is already open: starting it afresh", conn_id)
        conn = Conn(self, conn_id, args_c, info)
        self.connections[conn_id] = conn
        if self._on_open is not None and not self._guard("on_open", self._on_open, conn, args_c, conn.info):
            self.log.error("conn %d: on_open failed; closing the channel", conn_id)
            conn.close()

    def _call(self, conn: Conn, ref: int, request: Any) -> None:
        call = Deferred(conn, ref)
        if self._on_call is None:
            call.error((A.bad_request, request))
            return
        conn._call = call
        try:
            result = self._on_call(conn, request)
        except CallError as e:
            call.error(e.reason)
            return
        except Exception:
            self.log.error("conn %d: on_call crashed on %s:\n%s", conn.id, _brief(request),
                           traceback.format_exc().rstrip())
            call.error(A.handler_crashed)
            return
        finally:
            conn._call = None
        if result is call:
            return  # answered later (or already) through the Deferred
        if call.answered:
            if result is not None:
                self.log.warning("conn %d: call %d was answered through defer(); the return value is dropped",
                                 conn.id, ref)
            return
        if result is None:
            self.log.warning("conn %d: on_call returned None for %s: answering no_reply", conn.id, _brief(request))
            call.error(A.no_reply)
            return
        call.reply(result)

    def _guard(self, what: str, fn: Callable, *args: Any) -> bool:
        try:
            fn(*args)
            return True
        except Exception:
            self.log.error("%s crashed:\n%s", what, traceback.format_exc().rstrip())
            return False


def _brief(t: Any, limit: int = 200) -> str:
    s = format_term(t)
    return s if len(s) <= limit else s[:limit] + "..."


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    try:
        return etf.read_exact(stream.read, n)
    except EOFError:
        raise EOFError("standard input ended inside a frame") from None


def _skip(stream: BinaryIO, n: int) -> None:
    while n > 0:
        chunk = stream.read(min(n, 64 * 1024))
        if not chunk:
            raise EOFError("standard input ended inside a frame")
        n -= len(chunk)


def _claim_stdio():
    """Takes descriptors 0 and 1 for the protocol: returns binary streams on copies of
    them, and points 0 at /dev/null and 1 (and ``sys.stdout``) at standard error."""
    sys.stdout.flush()
    in_fd = os.dup(0)
    out_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    saved_stdout = sys.stdout
    sys.stdout = sys.stderr
    stdin = open(in_fd, "rb", closefd=False)
    stdout = open(out_fd, "wb", closefd=False)

    def restore() -> None:
        """Puts descriptors 0 and 1 and ``sys.stdout`` back as they were."""
        try:
            stdout.flush()
        except OSError:
            pass
        sys.stdout = saved_stdout
        os.dup2(in_fd, 0)
        os.dup2(out_fd, 1)
        os.close(in_fd)
        os.close(out_fd)

    return stdin, stdout, restore

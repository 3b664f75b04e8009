"""The port-program API (lib_chan.port), driven the way the server drives it (PROTOCOL.md section 9).

Each test starts a program as a subprocess and plays the server: it writes
``{packet, 4}`` frames on the program's standard input and reads the program's frames
from its standard output, comparing each answer with the exact bytes expected.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from lib_chan.etf import A, decode, encode, format_term, frame, read_frame

PKG = Path(__file__).resolve().parent.parent
NAME_SERVER = PKG / "examples" / "name_server.py"
INFO = {A.peer: b"127.0.0.1:50000"}


class Program:
    """A port program under test, with the server's side of its pipes."""

    def __init__(self, path: Path):
        self.proc = subprocess.Popen([sys.executable, str(path)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env={"PYTHONPATH": str(PKG), "PATH": "/usr/bin:/bin"})
        self.stderr = b""
        self._err = threading.Thread(target=self._drain, daemon=True)
        self._err.start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()

    def send(self, term) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(frame(term))
        self.proc.stdin.flush()

    def recv(self, timeout: float = 10):
        """The next frame's term; its bytes must be the canonical encoding of it."""
        box: list = []
        t = threading.Thread(target=lambda: box.append(read_frame(self.proc.stdout)), daemon=True)
        t.start()
        t.join(timeout)
        assert box, f"no frame from the program within {timeout} s; stderr: {self.stderr!r}"
        payload = box[0]
        assert payload is not None, f"the program closed its stdout; stderr: {self.stderr!r}"
        term = decode(payload)
        assert encode(term) == payload
        return term

    def expect(self, term) -> None:
        """The next frame is exactly ``term`` (its bytes; ``True`` stands for the atom)."""
        got = self.recv()
        assert format_term(got) == format_term(term)
        assert encode(got) == encode(term)

    def finish(self) -> tuple[int, bytes, str]:
        """Closes stdin, waits for the exit; returns (code, rest of stdout, stderr)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        rest = self.proc.stdout.read()
        code = self.proc.wait(10)
        self._err.join(5)
        return code, rest, self.stderr.decode(errors="replace")

    def kill(self) -> None:
        """Ends the program if it still runs, and closes our ends of its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._err.join(5)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None and not pipe.closed:
                try:
                    pipe.close()
                except OSError:
                    pass


@pytest.fixture
def name_server():
    p = Program(NAME_SERVER)
    yield p
    p.kill()


def test_name_server_seed_session(name_server):
    ns = name_server
    ns.send((A.hello, 2, A.notUsed))
    ns.send((A.open, 1, [], INFO))
    ns.send((A.call, 1, 1, (A.store, A.joe, "writing a book")))
    ns.expect((A.reply, 1, 1, True))
    ns.send((A.call, 1, 2, (A.lookup, A.joe)))
    ns.expect((A.reply, 1, 2, (A.ok, "writing a book")))
    ns.send((A.call, 1, 3, (A.lookup, A.jim)))
    ns.expect((A.reply, 1, 3, A.undefined))
    # as sends: a store answers nothing, a lookup answers {send, Conn, Answer}
    ns.send((A.chan, 1, (A.store, A.jim, b"a binary value")))
    ns.send((A.chan, 1, (A.lookup, A.jim)))
    ns.expect((A.send, 1, (A.ok, b"a binary value")))
    ns.send((A.chan, 1, (A.lookup, A.nobody)))
    ns.expect((A.send, 1, A.undefined))
    ns.send((A.closed, 1))
    code, rest, err = ns.finish()
    assert code == 0
    assert rest == b""
    assert "started with ArgsS" in err


def test_name_server_keys_are_terms_and_shared_between_connections(name_server):
    ns = name_server
    ns.send((A.hello, 2, []))
    ns.send((A.open, 7, [], INFO))
    ns.send((A.open, 8, "args", {A.peer: b"127.0.0.1:50001", A.user: b"alice"}))
    # "joe" (a charlist) and [106, 111, 101] are one key; 1 and 1.0 are two
    ns.send((A.call, 7, 10, (A.store, "joe", 1)))
    ns.expect((A.reply, 7, 10, True))
    ns.send((A.call, 8, 10, (A.lookup, [106, 111, 101])))
    ns.expect((A.reply, 8, 10, (A.ok, 1)))
    ns.send((A.call, 8, 11, (A.store, {A.k: [1, 2, 300]}, A.map_key)))
    ns.expect((A.reply, 8, 11, True))
    ns.send((A.call, 7, 11, (A.lookup, {A.k: [1, 2, 300]})))
    ns.expect((A.reply, 7, 11, (A.ok, A.map_key)))
    ns.send((A.call, 7, 12, (A.store, 1, A.int)))
    ns.expect((A.reply, 7, 12, True))
    ns.send((A.call, 7, 13, (A.lookup, 1.0)))
    ns.expect((A.reply, 7, 13, A.undefined))
    ns.send((A.call, 7, 14, A.names))  # in term order: number < map < list
    ns.expect((A.reply, 7, 14, [1, {A.k: [1, 2, 300]}, "joe"]))
    ns.send((A.call, 8, 12, (A.delete, "joe")))
    ns.expect((A.reply, 8, 12, True))
    ns.send((A.call, 8, 13, (A.lookup, "joe")))
    ns.expect((A.reply, 8, 13, A.undefined))
    # anything else: {error, Conn, Ref, {bad_request, X}} for a call, a log line for a send
    ns.send((A.chan, 7, (A.frobnicate, 1)))
    ns.send((A.call, 7, 15, (A.frobnicate, 2)))
    ns.expect((A.error, 7, 15, (A.bad_request, (A.frobnicate, 2))))
    # frames for a conn that is not open are ignored
    ns.send((A.call, 99, 1, (A.lookup, 1)))
    ns.send((A.closed, 7))
    ns.send((A.call, 7, 16, (A.lookup, 1)))
    ns.send((A.call, 8, 14, (A.lookup, 1)))
    ns.expect((A.reply, 8, 14, (A.ok, A.int)))
    ns.send((A.closed, 8))
    code, rest, err = ns.finish()
    assert code == 0 and rest == b""
    assert "does not understand" in err
    assert "not open" in err


EXERCISE = textwrap.dedent('''
    """A service exercising every way of answering."""
    import threading
    from lib_chan.etf import A
    from lib_chan.port import CallError, Service

    svc = Service("exercise")

    @svc.on_hello
    def hello(args_s):
        svc.state_args = args_s

    @svc.on_open
    def opened(conn, args_c, info):
        if args_c == A.refuse:
            raise RuntimeError("refused in on_open")
        conn.state["count"] = 0
        conn.send((A.welcome, conn.id, conn.peer, conn.user or A.undefined, svc.state_args))

    @svc.on_call
    def call(conn, request):
        print("a stray print must not reach the protocol")
        conn.state["count"] += 1
        if request == A.count:
            return conn.state["count"]
        if request == A.crash:
            raise ValueError("boom")
        if request == A.nothing:
            return None
        if request == A.forbidden:
            raise CallError(A.forbidden)
        if request == A.unencodable:
            return object()
        if request == A.later:
            d = conn.defer()
            threading.Timer(0.05, d.reply, args=[(A.later, A.done)]).start()
            return d
        if request == A.push_then_reply:
            conn.send(A.pushed)
            return A.replied
        if request == A.close_me:
            conn.close()
            return A.closing
        return (A.echo, request)

    @svc.on_cast
    def cast(conn, message):
        if message == A.crash:
            raise ValueError("cast boom")
        conn.send((A.got, message))

    @svc.on_closed
    def closed(conn):
        import sys
        print("closed", conn.id, conn.state["count"], file=sys.stderr)

    svc.run()
''')


@pytest.fixture
def exercise(tmp_path):
    path = tmp_path / "exercise.py"
    path.write_text(EXERCISE)
    p = Program(path)
    yield p
    p.kill()


def test_every_way_of_answering(exercise):
    ex = exercise
    ex.send((A.hello, 2, {A.config: 1}))
    ex.send((A.open, 3, [], {A.peer: b"10.0.0.1:4000", A.user: b"alice"}))
    ex.expect((A.send, 3, (A.welcome, 3, "10.0.0.1:4000", "alice", {A.config: 1})))
    ex.send((A.call, 3, 1, A.count))
    ex.expect((A.reply, 3, 1, 1))
    ex.send((A.call, 3, 2, A.crash))
    ex.expect((A.error, 3, 2, A.handler_crashed))
    ex.send((A.call, 3, 3, A.nothing))
    ex.expect((A.error, 3, 3, A.no_reply))
    ex.send((A.call, 3, 4, A.forbidden))
    ex.expect((A.error, 3, 4, A.forbidden))
    ex.send((A.call, 3, 5, A.unencodable))
    ex.expect((A.error, 3, 5, A.handler_crashed))
    # a deferred answer comes after frames handled meanwhile
    ex.send((A.call, 3, 6, A.later))
    ex.send((A.call, 3, 7, (1, 2)))
    ex.expect((A.reply, 3, 7, (A.echo, (1, 2))))
    ex.expect((A.reply, 3, 6, (A.later, A.done)))
    # pushes reach the server before the reply, in the order produced
    ex.send((A.call, 3, 8, A.push_then_reply))
    ex.expect((A.send, 3, A.pushed))
    ex.expect((A.reply, 3, 8, A.replied))
    # a crashing cast is logged; the program goes on
    ex.send((A.chan, 3, A.crash))
    ex.send((A.chan, 3, "hello"))
    ex.expect((A.send, 3, (A.got, "hello")))
    # per-connection state
    ex.send((A.open, 4, [], INFO))
    ex.expect((A.send, 4, (A.welcome, 4, "127.0.0.1:50000", A.undefined, {A.config: 1})))
    ex.send((A.call, 4, 1, A.count))
    ex.expect((A.reply, 4, 1, 1))
    ex.send((A.call, 3, 9, A.count))
    ex.expect((A.reply, 3, 9, 9))
    # on_open raising closes that channel
    ex.send((A.open, 5, A.refuse, INFO))
    ex.expect((A.close, 5))
    # the handler closing the channel
    ex.send((A.call, 4, 2, A.close_me))
    ex.expect((A.close, 4))
    ex.expect((A.reply, 4, 2, A.closing))
    ex.send((A.closed, 4))
    ex.send((A.closed, 3))
    ex.send((A.closed, 5))
    code, rest, err = ex.finish()
    assert code == 0
    assert rest == b"", "only frames on stdout"
    assert "a stray print must not reach the protocol" in err
    assert "ValueError: boom" in err and "cast boom" in err
    assert "refused in on_open" in err
    assert "closed 3 9" in err and "closed 4 2" in err


def test_bad_frames_from_the_server_are_survived(exercise):
    ex = exercise
    ex.send((A.hello, 2, []))
    ex.send((A.open, 1, [], INFO))
    ex.recv()  # the welcome push
    assert ex.proc.stdin is not None
    # an undecodable payload (a pid tag), then an unknown frame, then a good call
    ex.proc.stdin.write(b"\x00\x00\x00\x03\x83\x58\x00")
    ex.send((A.what, 1))
    ex.send((A.call, 1, 1, A.count))
    ex.expect((A.reply, 1, 1, 1))
    code, _, err = ex.finish()
    assert code == 0
    assert "undecodable frame" in err and "unknown frame" in err


def test_no_call_handler_means_bad_request(tmp_path):
    path = tmp_path / "bare.py"
    path.write_text("from lib_chan.port import Service\nService('bare').run()\n")
    p = Program(path)
    try:
        p.send((A.hello, 2, []))
        p.send((A.open, 1, [], INFO))
        p.send((A.call, 1, 5, (A.anything, 1)))
        p.expect((A.error, 1, 5, (A.bad_request, (A.anything, 1))))
        p.send((A.chan, 1, A.ignored))
        p.send((A.closed, 1))
        code, rest, _ = p.finish()
        assert code == 0 and rest == b""
    finally:
        p.kill()

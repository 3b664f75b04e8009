//! The Erlang port runner `clients/erlang/lib_chan_port.erl` and the book-style examples
//! in `clients/erlang/examples/`, run as real port programs (PROTOCOL.md section 9):
//! compiled with `erlc`, started with `erl -noinput -run lib_chan_port main Mod Func` or
//! through the examples' escripts, and driven over their standard input and output with
//! exactly the frames the server sends, each answer checked frame by frame.
//!
//! Erlang is required: without `erl`, `erlc` or `escript` these tests fail and say which
//! Debian package to install.

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use lib_chan_protocol::{etf, parse, Term};

/// How long one frame may take to come.
const FRAME_TIMEOUT: Duration = Duration::from_secs(20);

const INSTALL_HINT: &str =
    "install Erlang/OTP from Debian: apt-get install erlang-base (it has erl, erlc and escript)";

/// A handler written for these tests, in the book's style: it knows `{chan, MM, X}` and
/// `{chan_closed, MM}`, and, for the runner's `calls` option, `{call, MM, Ref, X}`.
const TEST_HANDLER: &str = r#"
-module(port_test_handler).
-export([start/3]).

start(MM, ArgsC, ArgsS) -> loop(MM, {ArgsC, ArgsS}, []).

loop(MM, Args, Held) ->
    receive
        {chan, MM, args} ->
            {C, S} = Args,
            MM ! {send, {C, S, lib_chan_port:info(MM)}},
            loop(MM, Args, Held);
        {chan, MM, two} ->
            MM ! {send, one},
            MM ! {send, two},
            loop(MM, Args, Held);
        {chan, MM, silent} ->
            loop(MM, Args, Held);
        {chan, MM, pid} ->
            MM ! {send, self()},
            loop(MM, Args, Held);
        {chan, MM, {sleep, Ms}} ->
            timer:sleep(Ms),
            loop(MM, Args, Held);
        {chan, MM, {sleep_then_crash, Ms}} ->
            io:format("about to crash~n"),
            timer:sleep(Ms),
            erlang:error(boom);
        {chan, MM, stop} ->
            ok;
        {chan, MM, bye} ->
            MM ! {send, bye},
            MM ! close,
            loop(MM, Args, Held);
        {call, MM, Ref, {echo, X}} ->
            MM ! {reply, Ref, X},
            loop(MM, Args, Held);
        {call, MM, Ref, hold} ->
            loop(MM, Args, [Ref | Held]);
        {call, MM, Ref, release} ->
            [MM ! {reply, R, held} || R <- lists:reverse(Held)],
            MM ! {reply, Ref, released},
            loop(MM, Args, []);
        {call, MM, Ref, refuse} ->
            MM ! {error, Ref, refused},
            loop(MM, Args, Held);
        {call, MM, Ref, {answer_other, R}} ->
            MM ! {reply, R, stray},
            MM ! {reply, Ref, answered},
            loop(MM, Args, Held);
        {call, MM, _Ref, push} ->
            MM ! {send, pushed},
            loop(MM, Args, Held);
        {call, MM, _Ref, crash} ->
            erlang:error(boom);
        {chan_closed, MM} ->
            ok
    end.
"#;

fn erlang_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/erlang")
}

/// Compiles the runner, the examples and the test handler, warnings as errors, into a
/// fresh temporary directory.
fn compile() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let handler = dir.path().join("port_test_handler.erl");
    std::fs::write(&handler, TEST_HANDLER).expect("write the test handler");
    let sources = [
        erlang_dir().join("lib_chan_port.erl"),
        erlang_dir().join("examples/kvs.erl"),
        erlang_dir().join("examples/mod_name_server.erl"),
        erlang_dir().join("examples/mod_chat.erl"),
        handler,
    ];
    let out = Command::new("erlc")
        .arg("+warnings_as_errors")
        .arg("-o")
        .arg(dir.path())
        .args(&sources)
        .output()
        .unwrap_or_else(|e| panic!("cannot run erlc ({e}): {INSTALL_HINT}"));
    assert!(
        out.status.success(),
        "erlc failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for m in [
        "lib_chan_port",
        "kvs",
        "mod_name_server",
        "mod_chat",
        "port_test_handler",
    ] {
        assert!(dir.path().join(format!("{m}.beam")).exists(), "no {m}.beam");
    }
    dir
}

/// What the frame reader saw on the program's standard output.
enum Out {
    Frame(Term),
    /// Bytes that are not a frame of ETF: the program broke the protocol.
    Garbage(String),
}

/// One port program, as the server sees it; killed when dropped.
struct Program {
    child: Child,
    stdin: Option<ChildStdin>,
    frames: mpsc::Receiver<Out>,
    stderr: Arc<Mutex<String>>,
    _beam: Option<tempfile::TempDir>,
}

impl Program {
    /// `erl -noinput -pa BEAM -run lib_chan_port main Mod Func Options...`.
    fn erl(module: &str, function: &str, options: &[&str]) -> Program {
        let beam = compile();
        let mut cmd = Command::new("erl");
        cmd.arg("-noinput")
            .arg("-pa")
            .arg(beam.path())
            .args(["-run", "lib_chan_port", "main", module, function])
            .args(options)
            .current_dir(beam.path());
        Program::spawn(cmd, "erl", Some(beam))
    }

    /// `escript clients/erlang/examples/SCRIPT Options...`, as a config's `command`
    /// would run it.
    fn escript(script: &str, options: &[&str]) -> Program {
        let home = tempfile::tempdir().expect("temp dir");
        let mut cmd = Command::new("escript");
        cmd.arg(erlang_dir().join("examples").join(script))
            .args(options)
            .current_dir(home.path());
        Program::spawn(cmd, "escript", Some(home))
    }

    fn spawn(mut cmd: Command, what: &str, keep: Option<tempfile::TempDir>) -> Program {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {what} ({e}): {INSTALL_HINT}"));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped");
        let (tx, frames) = mpsc::channel();
        std::thread::spawn(move || read_frames(stdout, tx));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("piped");
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => sink
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n])),
                }
            }
        });
        Program {
            child,
            stdin,
            frames,
            stderr,
            _beam: keep,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Writes one frame, the term given in Erlang syntax.
    fn send(&mut self, text: &str) {
        let term = parse(text).unwrap_or_else(|e| panic!("bad term {text:?}: {e}"));
        let payload = etf::encode(&term).expect("encodable");
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&payload);
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(&frame)
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("writing {text}: {e}\nstderr:\n{}", self.stderr()));
    }

    /// The next frame from the program.
    fn recv(&self, waiting_for: &str) -> Term {
        match self.frames.recv_timeout(FRAME_TIMEOUT) {
            Ok(Out::Frame(t)) => t,
            Ok(Out::Garbage(g)) => panic!(
                "standard output is not the protocol: {g}\nstderr:\n{}",
                self.stderr()
            ),
            Err(e) => panic!(
                "no frame while waiting for {waiting_for} ({e})\nstderr:\n{}",
                self.stderr()
            ),
        }
    }

    /// The next frames are exactly these, in this order.
    fn expect(&self, frames: &[&str]) {
        for text in frames {
            let want = parse(text).unwrap_or_else(|e| panic!("bad term {text:?}: {e}"));
            let got = self.recv(text);
            assert_eq!(got, want, "expected {text}\nstderr:\n{}", self.stderr());
        }
    }

    /// The next frames are exactly these, in this order for each connection (the
    /// second element of each frame), however the connections interleave.
    fn expect_per_conn(&self, frames: &[&str]) {
        let mut want: BTreeMap<i64, VecDeque<Term>> = BTreeMap::new();
        for text in frames {
            let t = parse(text).unwrap_or_else(|e| panic!("bad term {text:?}: {e}"));
            want.entry(conn_of(&t)).or_default().push_back(t);
        }
        let mut left = frames.len();
        while left > 0 {
            let got = self.recv(&format!("{frames:?}"));
            let conn = conn_of(&got);
            let next = want.get_mut(&conn).and_then(VecDeque::pop_front);
            assert_eq!(
                next.as_ref(),
                Some(&got),
                "unexpected frame {got} for connection {conn}; expected {frames:?}\nstderr:\n{}",
                self.stderr()
            );
            left -= 1;
        }
    }

    /// Closes standard input (the server stops the program) and waits for the program
    /// to exit; it must exit 0 and write nothing more.
    fn finish(mut self) -> String {
        drop(self.stdin.take());
        let status = self.wait();
        match self.frames.recv_timeout(FRAME_TIMEOUT) {
            Err(mpsc::RecvTimeoutError::Disconnected) => {}
            Ok(Out::Frame(t)) => panic!("frame {t} after the last one expected"),
            Ok(Out::Garbage(g)) => panic!("standard output is not the protocol: {g}"),
            Err(e) => panic!("standard output still open after exit: {e}"),
        }
        let stderr = self.stderr();
        assert!(
            status.success(),
            "the program exited {status} when its input closed\nstderr:\n{stderr}"
        );
        stderr
    }

    /// Waits (bounded) for the program to exit.
    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + FRAME_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the program did not exit\nstderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads `{packet, 4}` frames until the program's standard output closes.
fn read_frames(mut out: ChildStdout, tx: mpsc::Sender<Out>) {
    loop {
        let mut len = [0u8; 4];
        match read_full(&mut out, &mut len) {
            Ok(0) => return,
            Ok(4) => {}
            Ok(n) => {
                let _ = tx.send(Out::Garbage(format!("{n} stray bytes {:?}", &len[..n])));
                return;
            }
            Err(e) => {
                let _ = tx.send(Out::Garbage(format!("read error {e}")));
                return;
            }
        }
        let n = u32::from_be_bytes(len) as usize;
        if n == 0 || n > 1 << 20 {
            let mut rest = Vec::new();
            let _ = out.read_to_end(&mut rest);
            let _ = tx.send(Out::Garbage(format!(
                "a frame length of {n}: {:?}",
                String::from_utf8_lossy(&[&len[..], &rest[..]].concat())
            )));
            return;
        }
        let mut payload = vec![0; n];
        match read_full(&mut out, &mut payload) {
            Ok(m) if m == n => {}
            _ => {
                let _ = tx.send(Out::Garbage(format!("a frame cut short ({n} bytes)")));
                return;
            }
        }
        let sent = match etf::decode(&payload) {
            Ok(t) => tx.send(Out::Frame(t)),
            Err(e) => tx.send(Out::Garbage(format!(
                "{e}: {:?}",
                String::from_utf8_lossy(&payload)
            ))),
        };
        if sent.is_err() {
            return;
        }
    }
}

/// Reads until `buf` is full or the input ends; the number of bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// The `Conn` of a frame from the program: its second element.
fn conn_of(t: &Term) -> i64 {
    t.as_tuple()
        .and_then(|items| items.get(1))
        .and_then(Term::as_int)
        .unwrap_or_else(|| panic!("not a port frame: {t}"))
}

const PEER: &str = r#"#{peer => <<"127.0.0.1:40001">>}"#;

fn open(p: &mut Program, conn: u32) {
    p.send(&format!(r#"{{open, {conn}, "", {PEER}}}"#));
}

#[test]
fn book_name_server_answers_calls_by_the_call_window() {
    let mut p = Program::erl("mod_name_server", "start_me_up", &[]);
    p.send("{hello, 2, notUsed}");
    open(&mut p, 1);
    // The seed session as calls, pipelined: the store sends nothing back and replies
    // true when the handler is back in its receive loop; each lookup's send is its
    // reply.
    p.send(r#"{call, 1, 1, {store, joe, "writing a book"}}"#);
    p.send("{call, 1, 2, {lookup, joe}}");
    p.send("{call, 1, 3, {lookup, jim}}");
    p.expect(&[
        "{reply, 1, 1, true}",
        r#"{reply, 1, 2, {ok, "writing a book"}}"#,
        "{reply, 1, 3, undefined}",
    ]);
    // Casts, as the book's client sends them: a store answers nothing, a lookup is
    // answered by a push.
    p.send(r#"{chan, 1, {store, jim, "also here"}}"#);
    p.send("{chan, 1, {lookup, jim}}");
    p.expect(&[r#"{send, 1, {ok, "also here"}}"#]);
    // A cast's answer is never taken for the answer of the call that follows it.
    p.send("{chan, 1, {lookup, joe}}");
    p.send("{call, 1, 4, {lookup, jim}}");
    p.expect(&[
        r#"{send, 1, {ok, "writing a book"}}"#,
        r#"{reply, 1, 4, {ok, "also here"}}"#,
    ]);
    // A request the handler's receive does not match is a bad request, and stays in
    // its queue without disturbing the next calls.
    p.send("{call, 1, 5, {delete, joe}}");
    p.send("{call, 1, 6, {lookup, joe}}");
    p.expect(&[
        "{error, 1, 5, {bad_request, {delete, joe}}}",
        r#"{reply, 1, 6, {ok, "writing a book"}}"#,
    ]);
    // A second connection at the same time shares the store.
    open(&mut p, 2);
    p.send("{call, 2, 1, {lookup, joe}}");
    p.expect(&[r#"{reply, 2, 1, {ok, "writing a book"}}"#]);
    p.send(r#"{call, 2, 2, {store, joe, <<"rewritten">>}}"#);
    p.send("{call, 1, 7, {lookup, joe}}");
    p.expect(&[
        "{reply, 2, 2, true}",
        r#"{reply, 1, 7, {ok, <<"rewritten">>}}"#,
    ]);
    // Closed: nothing more comes for connection 1, and frames for it are ignored; the
    // other connection goes on (its reply is the very next frame).
    p.send("{closed, 1}");
    p.send("{chan, 1, {lookup, joe}}");
    p.send("{call, 1, 8, {lookup, joe}}");
    p.send("{call, 2, 3, {lookup, nobody}}");
    p.expect(&["{reply, 2, 3, undefined}"]);
    p.send("{closed, 2}");
    let stderr = p.finish();
    assert!(
        !stderr.contains("lib_chan_port:"),
        "nothing to log:\n{stderr}"
    );
}

#[test]
fn name_server_escript_runs_the_seed_session() {
    // PROTOCOL.md section 7's seed session, through the wrapper a config names.
    let mut p = Program::escript("name_server.escript", &[]);
    p.send("{hello, 2, notUsed}");
    open(&mut p, 7);
    p.send(r#"{chan, 7, {store, joe, "writing a book"}}"#);
    p.send("{call, 7, 1, {lookup, joe}}");
    p.send("{call, 7, 2, {lookup, jim}}");
    p.expect(&[
        r#"{reply, 7, 1, {ok, "writing a book"}}"#,
        "{reply, 7, 2, undefined}",
    ]);
    p.send("{closed, 7}");
    p.finish();
}

#[test]
fn chat_members_hear_each_other() {
    let mut p = Program::erl("mod_chat", "start", &[]);
    p.send("{hello, 2, []}");
    open(&mut p, 1);
    open(&mut p, 2);
    // mod_chat is call-aware: a login's reply is true, and its own joined comes first.
    p.send(r#"{call, 1, 1, {login, "room", "joe"}}"#);
    p.expect(&[
        r#"{send, 1, {joined, "joe", "room"}}"#,
        "{reply, 1, 1, true}",
    ]);
    p.send(r#"{call, 2, 1, {login, "room", "jim"}}"#);
    p.expect_per_conn(&[
        r#"{send, 1, {joined, "jim", "room"}}"#,
        r#"{send, 2, {joined, "jim", "room"}}"#,
        "{reply, 2, 1, true}",
    ]);
    // A cast, as the book's chat client relays: both members hear it, the speaker too.
    p.send(r#"{chan, 2, {relay, "hello"}}"#);
    p.expect_per_conn(&[
        r#"{send, 1, {msg, "jim", "room", "hello"}}"#,
        r#"{send, 2, {msg, "jim", "room", "hello"}}"#,
    ]);
    p.send(r#"{call, 1, 2, {relay, "hi jim"}}"#);
    p.expect_per_conn(&[
        r#"{send, 1, {msg, "joe", "room", "hi jim"}}"#,
        "{reply, 1, 2, true}",
        r#"{send, 2, {msg, "joe", "room", "hi jim"}}"#,
    ]);
    p.send("{call, 2, 2, members}");
    p.expect(&[r#"{reply, 2, 2, ["jim", "joe"]}"#]);
    // Refusals, with chat.rs's reasons.
    open(&mut p, 3);
    p.send(r#"{call, 3, 1, {relay, "x"}}"#);
    p.send(r#"{call, 3, 2, {login, "room", "joe"}}"#);
    p.send(r#"{call, 3, 3, {login, "room", 42}}"#);
    p.send("{call, 3, 4, dance}");
    p.send(r#"{call, 1, 3, {login, "other", "joe"}}"#);
    p.expect_per_conn(&[
        "{error, 3, 1, not_logged_in}",
        "{error, 3, 2, nick_taken}",
        r#"{error, 3, 3, {bad_request, {login, "room", 42}}}"#,
        "{error, 3, 4, {bad_request, dance}}",
        "{error, 1, 3, already_logged_in}",
    ]);
    // Logout: the others hear left, the one who left only its reply.
    p.send("{call, 2, 3, logout}");
    p.expect_per_conn(&[r#"{send, 1, {left, "jim", "room"}}"#, "{reply, 2, 3, true}"]);
    // A member whose connection closes leaves too.
    p.send(r#"{call, 3, 5, {login, "room", <<"ann">>}}"#);
    p.expect_per_conn(&[
        r#"{send, 1, {joined, <<"ann">>, "room"}}"#,
        r#"{send, 3, {joined, <<"ann">>, "room"}}"#,
        "{reply, 3, 5, true}",
    ]);
    p.send("{closed, 3}");
    p.expect(&[r#"{send, 1, {left, <<"ann">>, "room"}}"#]);
    // members as a cast comes back as a push.
    p.send("{chan, 1, members}");
    p.expect(&[r#"{send, 1, ["joe"]}"#]);
    p.send("{closed, 1}");
    p.send("{closed, 2}");
    let stderr = p.finish();
    assert!(
        !stderr.contains("lib_chan_port:") && !stderr.contains("mod_chat:"),
        "nothing to log:\n{stderr}"
    );
}

#[test]
fn chat_escript_starts_the_chat() {
    let mut p = Program::escript("chat.escript", &[]);
    p.send("{hello, 2, []}");
    open(&mut p, 1);
    p.send(r#"{chan, 1, {login, general, "joe"}}"#);
    p.send(r#"{chan, 1, {relay, "anyone?"}}"#);
    p.expect(&[
        r#"{send, 1, {joined, "joe", general}}"#,
        r#"{send, 1, {msg, "joe", general, "anyone?"}}"#,
    ]);
    p.finish();
}

#[test]
fn book_handler_crash_mid_call_fails_its_calls() {
    let mut p = Program::erl("port_test_handler", "start", &[]);
    p.send("{hello, 2, {server, args}}");
    p.send(r#"{open, 1, {client, args}, #{peer => <<"10.0.0.1:5000">>, user => <<"ann">>}}"#);
    open(&mut p, 2);
    // ArgsC, ArgsS and Info reach the handler.
    p.send("{call, 1, 1, args}");
    p.expect(&[
        r#"{reply, 1, 1, {{client, args}, {server, args}, #{peer => <<"10.0.0.1:5000">>, user => <<"ann">>}}}"#,
    ]);
    // The first send answers the call; the next is a push.
    p.send("{call, 1, 2, two}");
    p.expect(&["{reply, 1, 2, one}", "{send, 1, two}"]);
    // Nothing sent: true.
    p.send("{call, 1, 3, silent}");
    p.expect(&["{reply, 1, 3, true}"]);
    // An answer that cannot cross the wire (a pid).
    p.send("{call, 1, 4, pid}");
    p.expect(&["{error, 1, 4, bad_term}"]);
    // The handler crashes while call 5 is open; call 6, held back behind it, fails too.
    p.send("{call, 1, 5, {sleep_then_crash, 300}}");
    p.send("{call, 1, 6, args}");
    p.send("{chan, 1, args}");
    p.expect(&[
        "{error, 1, 5, handler_crashed}",
        "{error, 1, 6, handler_crashed}",
        "{close, 1}",
    ]);
    p.send("{closed, 1}");
    // The other connection is unaffected.
    p.send("{call, 2, 1, two}");
    p.expect(&["{reply, 2, 1, one}", "{send, 2, two}"]);
    // A handler that returns: no_reply, then close.
    p.send("{call, 2, 2, stop}");
    p.expect(&["{error, 2, 2, no_reply}", "{close, 2}"]);
    // A handler that closes: its send answers the call, then close.
    open(&mut p, 3);
    p.send("{call, 3, 1, bye}");
    p.expect(&["{reply, 3, 1, bye}", "{close, 3}"]);
    p.send("{closed, 3}");
    let stderr = p.finish();
    // The handler's io:format and the crash report went to standard error.
    assert!(stderr.contains("about to crash"), "stderr:\n{stderr}");
    assert!(stderr.contains("boom"), "stderr:\n{stderr}");
}

#[test]
fn book_call_that_never_comes_to_rest_times_out() {
    let mut p = Program::erl("port_test_handler", "start", &["call_timeout=1500"]);
    p.send("{hello, 2, []}");
    open(&mut p, 1);
    // The handler sleeps (in timer, not at rest) past the call's timeout; the call
    // held behind it gets its own call_timeout from then, and runs once the handler is
    // back in its loop.
    p.send("{call, 1, 1, {sleep, 2000}}");
    p.send("{call, 1, 2, two}");
    p.expect(&[
        "{error, 1, 1, timeout}",
        "{reply, 1, 2, one}",
        "{send, 1, two}",
    ]);
    p.finish();
}

#[test]
fn call_aware_handler_answers_in_any_order() {
    let mut p = Program::erl("port_test_handler", "start", &["calls"]);
    p.send("{hello, 2, []}");
    open(&mut p, 1);
    open(&mut p, 2);
    p.send("{call, 1, 1, hold}");
    p.send("{call, 1, 2, {echo, [1, 2.5, <<\"x\">>]}}");
    p.send("{call, 1, 3, refuse}");
    p.send("{call, 1, 4, release}");
    p.expect(&[
        r#"{reply, 1, 2, [1, 2.5, <<"x">>]}"#,
        "{error, 1, 3, refused}",
        "{reply, 1, 1, held}",
        "{reply, 1, 4, released}",
    ]);
    // In this mode a send is always a push, and an answer to no waiting call is dropped.
    p.send("{call, 1, 5, push}");
    p.send("{call, 1, 6, {answer_other, 99}}");
    p.expect(&["{send, 1, pushed}", "{reply, 1, 6, answered}"]);
    // A crash fails every call still waiting, in Ref order, then closes.
    p.send("{call, 1, 7, hold}");
    p.send("{call, 1, 8, crash}");
    p.expect(&[
        "{error, 1, 5, handler_crashed}",
        "{error, 1, 7, handler_crashed}",
        "{error, 1, 8, handler_crashed}",
        "{close, 1}",
    ]);
    p.send("{call, 2, 1, {echo, still_here}}");
    p.expect(&["{reply, 2, 1, still_here}"]);
    p.finish();
}

#[test]
fn atoms_from_clients_are_created_only_within_the_budget() {
    let mut p = Program::erl("mod_name_server", "start_me_up", &["new_atoms=0"]);
    // hello is always decoded: notUsed is new to the node.
    p.send("{hello, 2, notUsed}");
    open(&mut p, 1);
    p.send("{call, 1, 1, {lookup, ok}}");
    p.send("{call, 1, 2, {lookup, lib_chan_port_test_never_seen_atom}}");
    p.send("{chan, 1, {store, lib_chan_port_test_other_atom, 1}}");
    p.send(r#"{call, 1, 3, {store, ok, "known atoms only"}}"#);
    p.send("{call, 1, 4, {lookup, ok}}");
    p.expect(&[
        "{reply, 1, 1, undefined}",
        "{error, 1, 2, atom_limit}",
        "{reply, 1, 3, true}",
        r#"{reply, 1, 4, {ok, "known atoms only"}}"#,
    ]);
    let stderr = p.finish();
    assert!(stderr.contains("new_atoms limit"), "stderr:\n{stderr}");
}

#[test]
fn runner_refuses_a_node_that_reads_standard_input() {
    // Without -noinput the node's console would take frames off standard input.
    let beam = compile();
    let out = Command::new("erl")
        .args(["-noshell", "-pa"])
        .arg(beam.path())
        .args([
            "-run",
            "lib_chan_port",
            "main",
            "mod_name_server",
            "start_me_up",
        ])
        .current_dir(beam.path())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run erl ({e}): {INSTALL_HINT}"));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("-noinput"),
        "{out:?}"
    );
}

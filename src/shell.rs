//! `lib_chan shell HOST:PORT SERVICE`: an interactive session with one service, in the
//! spirit of the Erlang shell.
//!
//! A term typed at the `N> ` prompt ends with a `.` (then white space or the end of
//! the line, as in Erlang); until it does, further lines continue it under a `.. `
//! prompt. The term is sent as a call and the reply printed as the Erlang shell prints
//! terms; a term written `!Term.` is sent one-way (a cast), and `ok` is printed once it
//! is queued. Several terms may be typed on one line, each with its `.`. What the
//! service pushes is printed as it arrives, as `Shell got Term` (the Erlang shell's
//! `flush()` format), above the line being typed, which rustyline then redraws intact.
//!
//! `q().` (or `halt().`) or end of input (Ctrl-D) closes the channel and exits 0;
//! Ctrl-C drops the term being typed. A term that does not parse prints
//! `* LINE:COLUMN: problem`, a call the service refused `** error: Reason`, and the
//! shell goes on; when the channel closes under it, the shell says so at once and exits
//! 1 at the next line typed (rustyline cannot be interrupted from another thread).
//!
//! With standard input not a terminal (a pipe, a file) the same commands are read line
//! by line without editing, prompts or history: `lib_chan shell ... < session.txt`.
//! On a terminal, history is kept in `shell_history` (mode 0600) in the data directory
//! ($LIB_CHAN_HOME or $HOME/.lib_chan) when that directory exists.
//!
//! The password (never an argument), `--ca`, `--servername` and `--timeout` (for the
//! connection and for each reply) are handled as for `rpc` and `cast` ([`crate::remote`]).

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::{bail, Context};
use erl_tokenize::{ErrorKind, Position, Symbol, TokenKind};
use lib_chan_client::names::Link;
use lib_chan_client::{ChannelEvent, CloseReason, Error, ReconnectPolicy};
use lib_chan_protocol::Term;
use rustyline::error::ReadlineError;
use rustyline::history::FileHistory;
use rustyline::{Config, Editor, ExternalPrinter};

use crate::remote;

/// Arguments of `lib_chan shell`.
#[derive(Debug, clap::Args)]
#[command(after_help = HELP)]
pub(crate) struct ShellArgs {
    /// The server, HOST:PORT (e.g. localhost:1234 or [::1]:1234).
    address: String,
    /// The service name, e.g. nameServer.
    service: String,
    #[command(flatten)]
    login: remote::LoginArgs,
    #[command(flatten)]
    connect: remote::ConnectArgs,
    /// Survive lost connections and server restarts: log in again (first retry at once,
    /// then with backoff up to 5 s) and resume the session; calls typed meanwhile wait.
    #[arg(long)]
    reconnect: bool,
}

/// The shell's channel: one connection, or one that reconnects (`--reconnect`).
type Conn = Link;

/// What `help().` prints, and the end of `lib_chan shell --help`.
const HELP: &str = "\
In the shell:
  Term.        send Term as a call and print the reply, e.g. {lookup, joe}.
  !Term.       send Term one-way (a cast); prints ok once it is queued
  q().         close the channel and quit (so does Ctrl-D; Ctrl-C drops the line)
  help().      this text
A term may span lines: it ends with a '.'. Messages the service pushes are printed
as they arrive, as: Shell got Term";

/// The prompt of a line that continues a term.
const CONTINUATION: &str = ".. ";

/// Runs `lib_chan shell`.
pub(crate) fn run(args: &ShellArgs) -> anyhow::Result<()> {
    crate::init_logging("warn");
    let (host, port) = remote::split_address(&args.address)?;
    let (opts, login) = args
        .login
        .resolve(&host, port, &args.service, args.connect.options()?)?;
    // Pushes are printed by a task while the main thread waits in readline, so the
    // runtime needs a thread of its own.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let channel = if args.reconnect {
        let opts = opts.reconnect(ReconnectPolicy::new());
        Link::Reconnecting(
            runtime
                .block_on(opts.connect_reconnecting(
                    &host,
                    port,
                    &args.service,
                    &login,
                    Term::nil(),
                ))
                .map_err(|e| remote::connect_error(e, &login))?,
        )
    } else {
        Link::Plain(
            runtime
                .block_on(opts.connect_with(&host, port, &args.service, &login, Term::nil()))
                .map_err(|e| remote::connect_error(e, &login))?,
        )
    };

    let interactive = std::io::stdin().is_terminal();
    let config = Config::builder()
        .max_history_size(1000)
        .context("history size")?
        .auto_add_history(false)
        .build();
    let mut editor: Editor<(), FileHistory> =
        Editor::with_config(config).context("cannot set up line editing")?;
    let history = crate::data_dir().join("shell_history");
    if interactive && history.exists() {
        let _ = editor.load_history(&history);
    }
    // On a terminal, rustyline prints pushes above the line being edited and redraws
    // it; otherwise (no terminal, or TERM=dumb) they are plain lines on stdout.
    let printer: Box<dyn ExternalPrinter + Send> = match editor.create_external_printer() {
        Ok(p) => Box::new(p),
        Err(_) => Box::new(StdoutPrinter),
    };
    if let Link::Reconnecting(rc) = &channel {
        runtime.spawn(show_reconnections(rc.events()));
    }
    let pushes = runtime.spawn(show_pushes(channel.clone(), printer, interactive));
    if interactive {
        println!(
            "Connected to {} at {host}:{port}. Terms end with '.'; !Term. casts; q(). quits; help(). for more.",
            args.service
        );
    }

    let mut shell = Shell {
        channel: channel.clone(),
        runtime: &runtime,
        interactive,
    };
    let outcome = shell.repl(&mut editor);

    runtime.block_on(async {
        channel.close().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), pushes).await;
    });
    if interactive && history.parent().is_some_and(|d| d.is_dir()) {
        if let Err(e) = editor.save_history(&history) {
            eprintln!(
                "lib_chan: cannot save the history in {}: {e}",
                history.display()
            );
        }
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    outcome
}

/// With `--reconnect`: says on standard error when the connection is lost and back.
async fn show_reconnections(mut events: tokio::sync::broadcast::Receiver<ChannelEvent>) {
    loop {
        let line = match events.recv().await {
            Ok(ChannelEvent::Disconnected(reason)) => {
                format!("** connection lost: {reason}; reconnecting")
            }
            Ok(ChannelEvent::ServerShuttingDown) => {
                "** the server is shutting down; reconnecting".into()
            }
            Ok(ChannelEvent::Connected(at)) => format!("** reconnected to {at}"),
            Ok(ChannelEvent::SessionResumed) => "** session resumed".into(),
            Ok(ChannelEvent::SessionLost) => "** session lost: what belonged to it is gone".into(),
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        eprintln!("{line}");
    }
}

/// Prints each push as it arrives, then why the channel closed if the server closed it.
async fn show_pushes(
    channel: Conn,
    mut printer: Box<dyn ExternalPrinter + Send>,
    interactive: bool,
) {
    while let Some(push) = channel.recv().await {
        let _ = printer.print(format!("Shell got {push}\n"));
    }
    let reason = channel.closed().await;
    if reason != CloseReason::ClosedByClient {
        let hint = if interactive {
            " (press Enter to leave)"
        } else {
            ""
        };
        let _ = printer.print(format!("** channel closed: {reason}{hint}\n"));
    }
}

/// Prints pushes as plain lines when there is no terminal to edit on.
struct StdoutPrinter;

impl ExternalPrinter for StdoutPrinter {
    fn print(&mut self, msg: String) -> rustyline::Result<()> {
        let mut out = std::io::stdout().lock();
        out.write_all(msg.as_bytes())?;
        out.flush()?;
        Ok(())
    }
}

/// The read-send-print loop.
struct Shell<'a> {
    channel: Conn,
    runtime: &'a tokio::runtime::Runtime,
    interactive: bool,
}

impl Shell<'_> {
    /// Reads entries until `q().`, end of input, or the channel closing (an error).
    fn repl(&mut self, editor: &mut Editor<(), FileHistory>) -> anyhow::Result<()> {
        let mut count = 1;
        loop {
            let Some(entry) = self.read_entry(editor, count)? else {
                return Ok(());
            };
            let Entry::Terms(terms) = split_entry(&entry) else {
                continue;
            };
            if self.interactive {
                let _ = editor.add_history_entry(entry.as_str());
            }
            for text in terms {
                match Input::from_text(text) {
                    Input::Quit => return Ok(()),
                    Input::Help => println!("{HELP}"),
                    Input::Bad(why) => println!("* {why}"),
                    Input::Call(term) => match self.runtime.block_on(self.channel.rpc(term)) {
                        Ok(reply) => println!("{reply}"),
                        Err(e) => self.report(e)?,
                    },
                    Input::Cast(term) => match self.runtime.block_on(self.channel.cast(term)) {
                        Ok(()) => println!("ok"),
                        Err(e) => self.report(e)?,
                    },
                }
            }
            count += 1;
        }
    }

    /// Reads lines until they hold complete terms (or nothing); `None` at end of input.
    fn read_entry(
        &mut self,
        editor: &mut Editor<(), FileHistory>,
        count: u64,
    ) -> anyhow::Result<Option<String>> {
        let mut entry = String::new();
        loop {
            let prompt = if entry.is_empty() {
                format!("{count}> ")
            } else {
                CONTINUATION.to_owned()
            };
            match editor.readline(&prompt) {
                Ok(line) => {
                    if !entry.is_empty() {
                        entry.push('\n');
                    }
                    entry.push_str(&line);
                }
                Err(ReadlineError::Interrupted) => {
                    entry.clear();
                    continue;
                }
                Err(ReadlineError::Eof) => return Ok(None),
                Err(e) => return Err(e).context("cannot read the terminal"),
            }
            self.check_open()?;
            match split_entry(&entry) {
                Entry::Incomplete => continue,
                Entry::Empty => entry.clear(),
                Entry::Terms(_) => return Ok(Some(entry)),
            }
        }
    }

    /// Fails once the channel is closed, with the reason.
    fn check_open(&self) -> anyhow::Result<()> {
        if self.channel.is_closed() {
            let reason = self.runtime.block_on(self.channel.closed());
            bail!("channel closed: {reason}");
        }
        Ok(())
    }

    /// Prints a failed call or cast; fails (ending the shell) when the channel closed.
    fn report(&self, e: Error) -> anyhow::Result<()> {
        match e {
            Error::Remote(reason) => println!("** error: {reason}"),
            Error::Closed(reason) => bail!("channel closed: {reason}"),
            e => println!("** {e}"),
        }
        Ok(())
    }
}

/// What the lines typed so far hold.
#[derive(Debug, PartialEq)]
enum Entry<'a> {
    /// Only white space and comments.
    Empty,
    /// A term not yet ended by its `.`, or a string or quoted atom still open.
    Incomplete,
    /// One or more terms, each ended by a `.` (which is not included).
    Terms(Vec<&'a str>),
}

/// Splits `text` into terms at each `.` that ends one: a `.` token followed by white
/// space, a comment or the end, as `erl_scan` does. Text that does not scan is left for
/// [`lib_chan_protocol::parse`] to report, except an open quotation, which the next
/// line may close.
fn split_entry(text: &str) -> Entry<'_> {
    let mut terms = Vec::new();
    let mut start = 0;
    // Lexical content since the last end of term.
    let mut open = false;
    // The offset of a `.` that ends a term if white space or the end follows.
    let mut dot: Option<usize> = None;
    let mut pos = Position::new();
    loop {
        match erl_tokenize::scan_token(text, pos) {
            Ok(None) => break,
            Ok(Some(token)) => {
                if let Some(at) = dot.take() {
                    if token.kind().is_hidden() {
                        terms.push(&text[start..at]);
                        start = at + 1;
                        open = false;
                    }
                }
                if token.kind() == TokenKind::Symbol(Symbol::Dot) {
                    dot = Some(token.start().offset());
                }
                if token.kind().is_lexical() {
                    open = true;
                }
                pos = token.end();
            }
            Err(e) if e.kind == ErrorKind::NoClosingQuotation => return Entry::Incomplete,
            Err(e) => {
                dot = None;
                open = true;
                pos = e.resume_position;
            }
        }
    }
    if let Some(at) = dot {
        terms.push(&text[start..at]);
        open = false;
    }
    match (open, terms.is_empty()) {
        (true, _) => Entry::Incomplete,
        (false, true) => Entry::Empty,
        (false, false) => Entry::Terms(terms),
    }
}

/// One term typed, understood.
#[derive(Debug, PartialEq)]
enum Input {
    /// Send as a call.
    Call(Term),
    /// `!Term`: send one-way.
    Cast(Term),
    /// `q()` or `halt()`.
    Quit,
    /// `help()`.
    Help,
    /// Not a term: what is wrong, and where.
    Bad(String),
}

impl Input {
    /// Reads one term's text, without its ending `.`.
    fn from_text(text: &str) -> Input {
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        match compact.as_str() {
            "q()" | "halt()" => return Input::Quit,
            "help()" => return Input::Help,
            _ => {}
        }
        let (cast, text) = match text.trim_start().strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        match lib_chan_protocol::parse(text) {
            Ok(term) if cast => Input::Cast(term),
            Ok(term) => Input::Call(term),
            Err(e) => Input::Bad(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lib_chan_protocol::term;

    #[test]
    fn a_term_ends_with_a_dot_followed_by_space_or_the_end() {
        assert_eq!(
            split_entry("{lookup, joe}."),
            Entry::Terms(vec!["{lookup, joe}"])
        );
        assert_eq!(
            split_entry("{lookup, joe}.  "),
            Entry::Terms(vec!["{lookup, joe}"])
        );
        assert_eq!(
            split_entry("{lookup, joe}. % why"),
            Entry::Terms(vec!["{lookup, joe}"])
        );
        assert_eq!(split_entry("{lookup, joe}"), Entry::Incomplete);
        assert_eq!(
            split_entry("{lookup,\njoe}."),
            Entry::Terms(vec!["{lookup,\njoe}"])
        );
        assert_eq!(split_entry("a. b."), Entry::Terms(vec!["a", " b"]));
        assert_eq!(split_entry("a. b"), Entry::Incomplete);
        assert_eq!(split_entry("   "), Entry::Empty);
        assert_eq!(split_entry("% only a comment"), Entry::Empty);
        assert_eq!(split_entry(""), Entry::Empty);
    }

    #[test]
    fn dots_inside_strings_floats_and_quoted_atoms_do_not_end_a_term() {
        assert_eq!(
            split_entry(r#"{a, "x. y"}."#),
            Entry::Terms(vec![r#"{a, "x. y"}"#])
        );
        assert_eq!(split_entry(r#"{a, "x. "#), Entry::Incomplete);
        assert_eq!(split_entry("{a, 'it. is'"), Entry::Incomplete);
        assert_eq!(split_entry("{1.5, 2.0}."), Entry::Terms(vec!["{1.5, 2.0}"]));
        assert_eq!(split_entry("$.."), Entry::Terms(vec!["$."]));
    }

    #[test]
    fn text_that_does_not_scan_is_handed_on_for_a_clear_error() {
        let Entry::Terms(terms) = split_entry("{a, b]. ") else {
            panic!("complete");
        };
        assert_eq!(
            Input::from_text(terms[0]),
            Input::Bad("1:6: expected ',' or '}' but found ']'".into())
        );
        assert!(matches!(Input::from_text("Joe"), Input::Bad(_)));
    }

    #[test]
    fn inputs_are_calls_casts_or_commands() {
        assert_eq!(
            Input::from_text("{lookup, joe}"),
            Input::Call(term!({lookup, joe}))
        );
        assert_eq!(
            Input::from_text(" !{store, joe, 1}"),
            Input::Cast(term!({store, joe, 1}))
        );
        assert_eq!(Input::from_text("q()"), Input::Quit);
        assert_eq!(Input::from_text(" q ( ) "), Input::Quit);
        assert_eq!(Input::from_text("halt()"), Input::Quit);
        assert_eq!(Input::from_text("help()"), Input::Help);
        assert_eq!(Input::from_text("q"), Input::Call(term!(q)));
    }
}

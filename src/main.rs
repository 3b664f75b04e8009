//! `lib_chan`: the one binary. Serves, makes certificates and hashes, and talks to a
//! server from the command line.
//!
//! Each subcommand lives in its own module: [`serve`] (the server, with a working
//! default), [`admin`] (gen-cert, hash-password, check-config), [`remote`] (rpc,
//! cast, call and ping, the client side), [`shell`] (an interactive session) and
//! [`console`] (`admin HOST:PORT VERB`, the operator's console), [`manuals`]
//! (completions and man pages);
//! [`hangup`] reloads `serve`'s config on SIGHUP; [`systemd`] tells systemd it is ready
//! and alive.

mod admin;
mod bench;
mod console;
mod hangup;
mod import_conf;
mod login;
mod manuals;
mod remote;
mod serve;
mod shell;
mod systemd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// lib_chan over TLS: named services behind passwords, as in Programming Erlang.
#[derive(Debug, Parser)]
#[command(name = "lib_chan", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the channel server.
    ///
    /// With no --config it reads ./lib_chan.conf, then $HOME/.lib_chan/lib_chan.conf; with
    /// neither it serves the name server on 127.0.0.1:1234 with a development
    /// certificate kept in $HOME/.lib_chan (or $LIB_CHAN_HOME), and the password from
    /// LIB_CHAN_PASSWORD or one generated on first run.
    Serve {
        /// The config file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Listen on this port instead of the configured one (0 picks a free port).
        #[arg(long)]
        port: Option<u16>,
        /// Runtime worker threads [default: one per core]. On a machine it shares with
        /// other busy programs, fewer may serve more (bench/compare.sh measures it).
        #[arg(long, env = "LIB_CHAN_WORKERS", value_parser = clap::value_parser!(u16).range(1..=1024))]
        workers: Option<u16>,
    },
    /// Write a development CA and a server certificate signed by it.
    GenCert(admin::GenCertArgs),
    /// Read one password from standard input and print its argon2id hash for the config.
    HashPassword,
    /// Make an Ed25519 key pair for a named user's key logins: the private key in FILE
    /// (mode 0600), the [[user]] lines with the public key on standard output.
    Keygen(admin::KeygenArgs),
    /// Validate a config file and summarise it.
    CheckConfig {
        /// The config file.
        file: PathBuf,
    },
    /// Send TERM as a call and print the reply as the Erlang shell would.
    Rpc(remote::RemoteArgs),
    /// Send TERM one-way.
    Cast(remote::RemoteArgs),
    /// Call MOD:FUNC(ARG...) through a mod_rpc service, like rpc:call/4, and print the
    /// result.
    Call(remote::CallArgs),
    /// Tell whether a lib_chan server answers at HOST:PORT, like net_adm:ping/1: prints
    /// pong and the round trip time (exit 0), or pang and why. No password needed.
    Ping(remote::PingArgs),
    /// Load a server and report throughput and latency percentiles (--json for scripts).
    Bench(bench::BenchArgs),
    /// An interactive session with SERVICE, like the Erlang shell.
    ///
    /// Each term typed (ending with '.') is sent as a call and its reply printed;
    /// !Term. casts; pushes are printed as they arrive; q(). quits.
    Shell(shell::ShellArgs),
    /// Print a lib_chan.conf (TOML) made from a config written for the book's Erlang
    /// lib_chan ({port, N}. and {service, S, password, P, mfa, M, F, A}. lines): each
    /// password hashed with argon2id, handlers mapped where there is one.
    ImportConf {
        /// The book's config file.
        file: PathBuf,
    },
    /// The operator's console: ask a mod_admin service for the server's state
    /// (info, connections, denials, penalties, stats, top) or act on it (kick,
    /// kick-user, unblock, reload).
    Admin(console::AdminArgs),
    /// Print the completion script for SHELL (bash, zsh, fish, elvish, powershell), e.g.
    /// `lib_chan completions bash > /etc/bash_completion.d/lib_chan`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages (lib_chan.1 and one per subcommand) into DIR.
    Man {
        /// Where to write them, e.g. /usr/local/share/man/man1.
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            config,
            port,
            workers,
        } => serve::serve(config, port, workers),
        Command::GenCert(args) => admin::gen_cert(&args),
        Command::HashPassword => admin::hash_password(),
        Command::Keygen(args) => admin::keygen(&args),
        Command::CheckConfig { file } => admin::check_config(&file),
        Command::Rpc(args) => remote::run(remote::Mode::Rpc, &args),
        Command::Cast(args) => remote::run(remote::Mode::Cast, &args),
        Command::Call(args) => remote::call(&args),
        Command::Ping(args) => return remote::ping(&args),
        Command::Shell(args) => shell::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::ImportConf { file } => import_conf::run(&file),
        Command::Admin(args) => return console::run(&args),
        Command::Completions { shell } => manuals::completions::<Cli>(shell),
        Command::Man { dir } => manuals::man::<Cli>(&dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lib_chan: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The per-user data directory: $LIB_CHAN_HOME, else $HOME/.lib_chan.
fn data_dir() -> PathBuf {
    lib_chan_client::password_file::data_dir()
}

/// Logs to standard error; RUST_LOG overrides `default`. Colours only on a terminal
/// (and not with NO_COLOR set): a journal, a file or a pipe gets plain lines.
fn init_logging(default: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .try_init();
}

/// The multi-threaded tokio runtime `serve` and `bench` run on: `workers` threads, or
/// tokio's default (one per core, or `TOKIO_WORKER_THREADS`).
fn runtime(workers: Option<u16>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(usize::from(n));
    }
    builder
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))
}

//! `lib_chan rpc`, `cast`, `call` and `ping`: the client side, one request per run.
//!
//! The password is never taken from the arguments (which other users can read in the
//! process list): it comes from LIB_CHAN_PASSWORD, a password file (`--password-file`,
//! LIB_CHAN_PASSWORD_FILE, or the default one in the data directory), or a prompt; see
//! `lib_chan_client::password_file` for the order and the file format. The reply is
//! printed as the Erlang shell prints it. Any failure is one line on standard error and
//! a non-zero exit.

use std::future::Future;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use lib_chan_client::password_file::{PasswordLookup, PasswordSource};
use lib_chan_client::{Channel, ConnectOptions, Error};

pub(crate) use crate::login::{connect_error, LoginArgs};
use lib_chan_protocol::Term;

/// Which request to send.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Mode {
    Rpc,
    Cast,
}

/// How to reach and trust the server: the flags of every subcommand that connects.
#[derive(Debug, clap::Args)]
pub(crate) struct ConnectArgs {
    /// The CA certificate to trust [default: the development CA in $HOME/.lib_chan, if
    /// there; else the system roots].
    #[arg(long)]
    ca: Option<PathBuf>,
    /// The name to check the server's certificate against, if not the host dialled.
    #[arg(long)]
    servername: Option<String>,
    /// Seconds to wait for the connection and for the reply.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
}

impl ConnectArgs {
    /// The connect options these flags ask for.
    pub(crate) fn options(&self) -> anyhow::Result<ConnectOptions> {
        if !(self.timeout > 0.0 && self.timeout < 1e6) {
            bail!("--timeout must be a positive number of seconds");
        }
        let timeout = Duration::from_secs_f64(self.timeout);
        Ok(options(self.ca.as_ref(), self.servername.as_ref(), timeout))
    }
}

/// Arguments shared by `rpc` and `cast`.
#[derive(Debug, clap::Args)]
pub(crate) struct RemoteArgs {
    /// The server, HOST:PORT (e.g. localhost:1234 or [::1]:1234).
    address: String,
    /// The service name, e.g. nameServer.
    service: String,
    /// The request, in Erlang syntax, e.g. '{lookup, joe}'.
    term: String,
    #[command(flatten)]
    login: LoginArgs,
    #[command(flatten)]
    connect: ConnectArgs,
}

/// Arguments of `call`.
#[derive(Debug, clap::Args)]
pub(crate) struct CallArgs {
    /// The server, HOST:PORT (e.g. localhost:1234 or [::1]:1234).
    address: String,
    /// The mod_rpc service name, e.g. rpc.
    service: String,
    /// The module, an atom, e.g. kvs.
    module: String,
    /// The function, an atom, e.g. store.
    function: String,
    /// The arguments, each one term in Erlang syntax, e.g. weather fine.
    #[arg(allow_negative_numbers = true)]
    args: Vec<String>,
    #[command(flatten)]
    login: LoginArgs,
    #[command(flatten)]
    connect: ConnectArgs,
}

/// Arguments of `ping`.
#[derive(Debug, clap::Args)]
pub(crate) struct PingArgs {
    /// The server, HOST:PORT (e.g. localhost:1234 or [::1]:1234).
    address: String,
    #[command(flatten)]
    connect: ConnectArgs,
}

/// Splits HOST:PORT, accepting [v6]:PORT.
pub(crate) fn split_address(address: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("`{address}` is not HOST:PORT"))?;
    let port = port
        .parse()
        .map_err(|_| anyhow!("`{port}` in `{address}` is not a port number"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        bail!("`{address}` has no host");
    }
    Ok((host.to_owned(), port))
}

/// The password for `service` on `host:port` and where it came from (`None`: typed at
/// the prompt): LIB_CHAN_PASSWORD, `file` or LIB_CHAN_PASSWORD_FILE, the default
/// password file, the default server's own, else a prompt on the terminal.
pub(crate) fn password(
    host: &str,
    port: u16,
    service: &str,
    file: Option<&Path>,
) -> anyhow::Result<(String, Option<PasswordSource>)> {
    let mut lookup = PasswordLookup::from_env();
    if let Some(file) = file {
        lookup = lookup.file(file);
    }
    if let Some(found) = lookup.find(host, port, service)? {
        return Ok((found.as_str().to_owned(), Some(found.source().clone())));
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "no password for service {service} on {host}:{port}: set LIB_CHAN_PASSWORD, \
             give --password-file FILE (or set LIB_CHAN_PASSWORD_FILE), or add the line \
             `{host}:{port} {service} PASSWORD` to {} (mode 0600); passwords are never taken \
             from the arguments",
            lookup.default_file().display()
        );
    }
    let typed = rpassword::prompt_password(format!("password for {service} on {host}:{port}: "))
        .context("cannot read the password")?;
    Ok((typed, None))
}

/// The connect options the command line asks for.
pub(crate) fn options(
    ca: Option<&PathBuf>,
    servername: Option<&String>,
    timeout: Duration,
) -> ConnectOptions {
    let mut opts = ConnectOptions::new()
        .connect_timeout(timeout)
        .handshake_timeout(timeout)
        .rpc_timeout(timeout);
    let dev_ca = crate::data_dir().join("ca.pem");
    match ca {
        Some(ca) => opts = opts.ca_file(ca),
        None if dev_ca.exists() => opts = opts.ca_file(&dev_ca),
        None => {}
    }
    if let Some(name) = servername {
        opts = opts.server_name(name);
    }
    opts
}

/// A single-threaded runtime for one request.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Opens a channel to `service` at `address` as the flags say, runs `work` on it, and
/// closes it.
fn with_channel<F, Fut>(
    address: &str,
    service: &str,
    login: &LoginArgs,
    connect: &ConnectArgs,
    work: F,
) -> anyhow::Result<()>
where
    F: FnOnce(Channel) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let (host, port) = split_address(address)?;
    let (opts, login) = login.resolve(&host, port, service, connect.options()?)?;
    runtime()?.block_on(async {
        let channel = opts
            .connect_with(&host, port, service, &login, Term::nil())
            .await
            .map_err(|e| connect_error(e, &login))?;
        let result = work(channel.clone()).await;
        channel.close().await;
        result
    })
}

/// `lib_chan rpc` and `lib_chan cast`.
pub(crate) fn run(mode: Mode, args: &RemoteArgs) -> anyhow::Result<()> {
    crate::init_logging("warn");
    let request = lib_chan_protocol::parse(&args.term).map_err(|e| anyhow!("TERM: {e}"))?;
    with_channel(
        &args.address,
        &args.service,
        &args.login,
        &args.connect,
        |channel| async move {
            match mode {
                Mode::Rpc => println!("{}", channel.rpc(request).await?),
                Mode::Cast => channel.cast(request).await?,
            }
            Ok(())
        },
    )
}

/// `{apply, Mod, Func, [Args]}` from the command line's words.
fn apply_request(args: &CallArgs) -> anyhow::Result<Term> {
    let atom = |what: &str, text: &str| -> anyhow::Result<Term> {
        let t = lib_chan_protocol::parse(text).map_err(|e| anyhow!("{what}: {e}"))?;
        match t {
            Term::Atom(_) => Ok(t),
            _ => bail!("{what}: `{text}` is not an atom"),
        }
    };
    let module = atom("MOD", &args.module)?;
    let function = atom("FUNC", &args.function)?;
    let call_args = args
        .args
        .iter()
        .enumerate()
        .map(|(i, a)| {
            lib_chan_protocol::parse(a).map_err(|e| anyhow!("ARG {} (`{a}`): {e}", i + 1))
        })
        .collect::<anyhow::Result<Vec<Term>>>()?;
    Ok(Term::tuple([
        Term::atom("apply"),
        module,
        function,
        Term::list(call_args),
    ]))
}

/// `lib_chan call`: `rpc:call(Node, Mod, Func, Args)` through a mod_rpc service. The
/// result is printed as the Erlang shell prints it; a `{badrpc, _}` result is printed
/// too, and the exit status is then non-zero.
pub(crate) fn call(args: &CallArgs) -> anyhow::Result<()> {
    crate::init_logging("warn");
    let request = apply_request(args)?;
    let mfa = format!("{}:{}/{}", args.module, args.function, args.args.len());
    with_channel(
        &args.address,
        &args.service,
        &args.login,
        &args.connect,
        |channel| async move {
            let reply = channel.rpc(request).await?;
            println!("{reply}");
            match badrpc_reason(&reply) {
                Some(reason)
                    if reason
                        .as_tuple()
                        .and_then(<[Term]>::first)
                        .is_some_and(|t| t.is_atom("undef")) =>
                {
                    bail!("{mfa} is not allowed by the service, or does not exist (undef)")
                }
                Some(_) => bail!("{mfa} failed on the server (badrpc)"),
                None => Ok(()),
            }
        },
    )
}

/// `Reason` in `{badrpc, {'EXIT', Reason}}`, or the `X` of `{badrpc, X}`.
fn badrpc_reason(reply: &Term) -> Option<&Term> {
    let [tag, what] = reply.as_tuple()? else {
        return None;
    };
    if !tag.is_atom("badrpc") {
        return None;
    }
    match what.as_tuple() {
        Some([exit, reason]) if exit.is_atom("EXIT") => Some(reason),
        _ => Some(what),
    }
}

/// `lib_chan ping`, like `net_adm:ping/1`: prints `pong` and the round trip time, or
/// `pang` and why; exit status 0 on pong only. No password is involved.
pub(crate) fn ping(args: &PingArgs) -> ExitCode {
    crate::init_logging("warn");
    let result = (|| {
        let (host, port) = split_address(&args.address)?;
        let opts = args.connect.options()?;
        anyhow::Ok(runtime()?.block_on(lib_chan_client::ping(&host, port, &opts)))
    })();
    match result {
        Ok(Ok(rtt)) => {
            println!(
                "pong: {} answered in {:.3} ms",
                args.address,
                rtt.as_secs_f64() * 1e3
            );
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            println!("pang: {}: {e}", pang_kind(&e));
            ExitCode::FAILURE
        }
        // Bad arguments: not an answer from the network.
        Err(e) => {
            eprintln!("lib_chan: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Why a ping got no pong, in a few words.
fn pang_kind(e: &Error) -> &'static str {
    use std::io::ErrorKind;
    match e {
        Error::Io { error, .. } if error.kind() == ErrorKind::ConnectionRefused => {
            "connection refused"
        }
        // TLS was up, then the peer hung up without a pong: lib_chan always answers one.
        Error::Io { context, .. } if context.starts_with("handshake") => "not a lib_chan server",
        Error::Io { context, .. } if context.starts_with("TLS") => "TLS failure",
        Error::Io { .. } => "connection failed",
        Error::Tls { .. } => "TLS failure",
        Error::Timeout(_) => "timeout",
        Error::Protocol(_) => "not a lib_chan server",
        Error::Busy => "busy",
        Error::Config(_) => "configuration error",
        _ => "refused",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_split_with_v6_brackets() {
        assert_eq!(
            split_address("localhost:1234").unwrap(),
            ("localhost".into(), 1234)
        );
        assert_eq!(split_address("[::1]:99").unwrap(), ("::1".into(), 99));
        assert!(split_address("localhost").is_err());
        assert!(split_address("localhost:http").is_err());
        assert!(split_address(":1234").is_err());
    }

    fn call_args(module: &str, function: &str, args: &[&str]) -> CallArgs {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            call: CallArgs,
        }
        let mut argv = vec!["call", "h:1", "rpc", module, function];
        argv.extend(args);
        Cli::parse_from(argv).call
    }

    #[test]
    fn call_words_make_an_apply_request() {
        let t = apply_request(&call_args("kvs", "store", &["weather", "{fine, -5}"])).unwrap();
        assert_eq!(t.to_string(), "{apply,kvs,store,[weather,{fine,-5}]}");
        let t = apply_request(&call_args("erlang", "node", &[])).unwrap();
        assert_eq!(t.to_string(), "{apply,erlang,node,[]}");
        assert_eq!(
            apply_request(&call_args("kvs", "lookup", &["-5"]))
                .unwrap()
                .to_string(),
            "{apply,kvs,lookup,[-5]}"
        );
        let e = apply_request(&call_args("\"kvs\"", "store", &[])).unwrap_err();
        assert!(e.to_string().starts_with("MOD: "), "{e}");
        let e = apply_request(&call_args("kvs", "store", &["a", "{b,"])).unwrap_err();
        assert!(e.to_string().starts_with("ARG 2 (`{b,`)"), "{e}");
    }

    #[test]
    fn badrpc_replies_are_recognised() {
        let p = |s: &str| lib_chan_protocol::parse(s).unwrap();
        let undef = p("{badrpc, {'EXIT', {undef, [{os, cmd, [\"ls\"], []}]}}}");
        assert!(badrpc_reason(&undef).unwrap().as_tuple().unwrap()[0].is_atom("undef"));
        assert_eq!(
            badrpc_reason(&p("{badrpc, nodedown}")),
            Some(&p("nodedown"))
        );
        assert_eq!(badrpc_reason(&p("{ok, fine}")), None);
        assert_eq!(badrpc_reason(&p("true")), None);
    }
}

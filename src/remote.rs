//! `lib_chan rpc` and `lib_chan cast`: one request from the command line.
//!
//! The password comes from LIB_CHAN_PASSWORD or a prompt, never from the arguments
//! (which other users can read in the process list). The reply is printed as the Erlang
//! shell prints it. Any failure is one line on standard error and a non-zero exit.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use lib_chan_client::ConnectOptions;
use lib_chan_protocol::Term;

/// Which request to send.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Mode {
    Rpc,
    Cast,
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

/// LIB_CHAN_PASSWORD, else a prompt on the terminal.
pub(crate) fn password() -> anyhow::Result<String> {
    if let Ok(p) = std::env::var("LIB_CHAN_PASSWORD") {
        return Ok(p);
    }
    if !std::io::stdin().is_terminal() {
        bail!("no password: set LIB_CHAN_PASSWORD (passwords are never taken from the arguments)");
    }
    rpassword::prompt_password("password: ").context("cannot read the password")
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

pub(crate) fn run(mode: Mode, args: &RemoteArgs) -> anyhow::Result<()> {
    crate::init_logging("warn");
    let (host, port) = split_address(&args.address)?;
    let request = lib_chan_protocol::parse(&args.term).map_err(|e| anyhow!("TERM: {e}"))?;
    if !(args.timeout > 0.0 && args.timeout < 1e6) {
        bail!("--timeout must be a positive number of seconds");
    }
    let timeout = Duration::from_secs_f64(args.timeout);
    let password = password()?;
    let opts = options(args.ca.as_ref(), args.servername.as_ref(), timeout);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let channel = opts
            .connect(&host, port, &args.service, password.as_bytes(), Term::nil())
            .await?;
        match mode {
            Mode::Rpc => {
                let reply = channel.rpc(request).await?;
                println!("{reply}");
            }
            Mode::Cast => channel.cast(request).await?,
        }
        channel.close().await;
        anyhow::Ok(())
    })
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
}

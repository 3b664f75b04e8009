//! The offline subcommands: `gen-cert`, `hash-password` and `check-config`.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use lib_chan_server::devcert::DevCerts;
use lib_chan_server::{auth, Config, TlsSource};

/// Arguments of `gen-cert`.
#[derive(Debug, clap::Args)]
pub(crate) struct GenCertArgs {
    /// The directory to write ca.pem, ca.key, server.pem and server.key into.
    #[arg(long)]
    out: PathBuf,
    /// A DNS name or IP address the server certificate is for (repeatable).
    #[arg(long = "host", required = true)]
    hosts: Vec<String>,
}

pub(crate) fn gen_cert(args: &GenCertArgs) -> anyhow::Result<()> {
    let certs = DevCerts::generate(&args.hosts)?;
    let paths = certs.write(&args.out)?;
    println!("CA certificate:     {}", paths.ca.display());
    println!("CA key:             {} (mode 0600)", paths.ca_key.display());
    println!(
        "server certificate: {} (for {})",
        paths.cert.display(),
        args.hosts.join(", ")
    );
    println!("server key:         {} (mode 0600)", paths.key.display());
    Ok(())
}

pub(crate) fn hash_password() -> anyhow::Result<()> {
    let password = if std::io::stdin().is_terminal() {
        rpassword::prompt_password("password: ").context("cannot read the password")?
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    };
    if password.is_empty() {
        bail!("empty password");
    }
    println!("{}", auth::hash_password(password.as_bytes()));
    Ok(())
}

pub(crate) fn check_config(file: &Path) -> anyhow::Result<()> {
    let registry = lib_chan_services::registry();
    let config = Config::load(file, &registry)?;
    lib_chan_server::tls::server_config(&config.tls, None)?;
    println!("{}: OK", file.display());
    println!("  listen  {}:{}", config.bind, config.port);
    if let TlsSource::Files { cert, key } = &config.tls {
        println!("  tls     cert {} key {}", cert.display(), key.display());
    }
    for s in &config.services {
        println!("  service {} -> {} args {}", s.name, s.handler, s.args);
    }
    if let Some(addr) = config.metrics_listen {
        println!("  metrics http://{addr}/metrics");
    }
    let l = &config.limits;
    println!(
        "  limits  max_frame {} max_connections {} handshake_timeout {:?} max_calls_in_flight {}",
        l.max_frame, l.max_connections, l.handshake_timeout, l.max_calls_in_flight
    );
    Ok(())
}

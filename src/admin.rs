//! The offline subcommands: `gen-cert` (server and client certificates), `keygen`,
//! `hash-password` and `check-config`.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use lib_chan_server::devcert::DevCerts;
use lib_chan_server::{auth, Config, TlsSource};

/// Arguments of `gen-cert`.
#[derive(Debug, clap::Args)]
pub(crate) struct GenCertArgs {
    /// The directory to write ca.pem, ca.key, server.pem and server.key into (with
    /// --client: the directory holding ca.pem and ca.key, where NAME.pem and NAME.key
    /// are written) [default with --client: the development CA's, $HOME/.lib_chan].
    #[arg(long)]
    out: Option<PathBuf>,
    /// A DNS name or IP address the server certificate is for (repeatable).
    #[arg(long = "host", required_unless_present = "client")]
    hosts: Vec<String>,
    /// Instead: a client certificate for the named user NAME, signed by the CA in --out,
    /// and the `cert_sha256` line to paste into its [[user]] entry.
    #[arg(long, value_name = "NAME", conflicts_with = "hosts")]
    client: Option<String>,
}

pub(crate) fn gen_cert(args: &GenCertArgs) -> anyhow::Result<()> {
    if let Some(name) = &args.client {
        let dir = args.out.clone().unwrap_or_else(crate::data_dir);
        let read = |f: &str| {
            std::fs::read_to_string(dir.join(f)).with_context(|| {
                format!(
                    "cannot read {} (the CA that signs client certificates; make one with \
                     `lib_chan gen-cert --out DIR --host HOST`)",
                    dir.join(f).display()
                )
            })
        };
        let cert = lib_chan_server::devcert::DevCerts::client_cert(
            &read("ca.pem")?,
            &read("ca.key")?,
            name,
        )?;
        let (cert_path, key_path) = cert.write(&dir, name)?;
        println!("client certificate: {}", cert_path.display());
        println!("client key:         {} (mode 0600)", key_path.display());
        println!();
        println!("# In the server's lib_chan.conf (or give it [tls] client_ca = this CA):");
        println!("[[user]]");
        println!("name = {name:?}");
        println!("services = [\"nameServer\"]");
        println!(
            "cert_sha256 = \"{}\"",
            lib_chan_server::users::hex(&cert.sha256)
        );
        return Ok(());
    }
    let Some(out) = &args.out else {
        bail!("--out DIR is needed: where to write the CA and the server certificate");
    };
    let certs = DevCerts::generate(&args.hosts)?;
    let paths = certs.write(out)?;
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

/// Arguments of `keygen`.
#[derive(Debug, clap::Args)]
pub(crate) struct KeygenArgs {
    /// Where to write the private key (PKCS#8 PEM, mode 0600).
    #[arg(long)]
    out: PathBuf,
    /// The user name to put in the printed [[user]] entry.
    #[arg(long, default_value = "NAME")]
    name: String,
    /// Overwrite FILE if it exists.
    #[arg(long)]
    force: bool,
}

/// `lib_chan keygen`: an Ed25519 key pair for a named user's key logins.
pub(crate) fn keygen(args: &KeygenArgs) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let key = lib_chan_client::Ed25519Key::generate()?;
    let pem = key.to_pkcs8_pem().context("a generated key has its seed")?;
    if args.force {
        let _ = std::fs::remove_file(&args.out);
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&args.out)
        .with_context(|| {
            format!(
                "cannot create {} (it exists? --force replaces it)",
                args.out.display()
            )
        })?;
    file.write_all(pem.as_bytes())
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    println!(
        "private key: {} (mode 0600; keep it on the client)",
        args.out.display()
    );
    println!();
    println!("# In the server's lib_chan.conf, then reload it (kill -HUP, systemctl reload):");
    println!("[[user]]");
    println!("name = {:?}", args.name);
    println!("services = [\"nameServer\"]");
    println!("ed25519 = \"{}\"", key.public_key_base64());
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
        let access = if s.password_hash.is_some() {
            ""
        } else {
            " (named users only)"
        };
        println!(
            "  service {} -> {} args {}{access}",
            s.name, s.handler, s.args
        );
        if let Some(p) = &s.options.port {
            println!(
                "          command {:?} in {}",
                p.command,
                p.working_dir.display()
            );
        }
    }
    if let Some(lib_chan_server::ClientCaSource::File(ca)) = &config.client_ca {
        println!("  tls     client_ca {}", ca.display());
    }
    for u in &config.users {
        let mut creds = Vec::new();
        if u.password_hash.is_some() {
            creds.push("password".to_owned());
        }
        if let Some(k) = &u.ed25519 {
            creds.push(format!(
                "ed25519 {}",
                lib_chan_server::users::key_fingerprint(k)
            ));
        }
        if let Some(c) = &u.cert_sha256 {
            creds.push(format!("cert_sha256 {}", lib_chan_server::users::hex(c)));
        }
        let services = match &u.services {
            lib_chan_server::ServiceList::All => "*".to_owned(),
            lib_chan_server::ServiceList::Named(n) => n.join(","),
            lib_chan_server::ServiceList::None => "-".to_owned(),
        };
        let mut notes = Vec::new();
        if u.disabled {
            notes.push("disabled".to_owned());
        }
        if let Some(t) = u.expires {
            notes.push(format!(
                "expires {}",
                lib_chan_server::users::format_time(t)
            ));
        }
        if !u.from.is_empty() {
            let nets: Vec<String> = u.from.iter().map(|(a, p)| format!("{a}/{p}")).collect();
            notes.push(format!("from {}", nets.join(",")));
        }
        println!(
            "  user    {} -> {services} [{}]{}",
            u.name,
            creds.join("; "),
            if notes.is_empty() {
                String::new()
            } else {
                format!(" {}", notes.join(" "))
            }
        );
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

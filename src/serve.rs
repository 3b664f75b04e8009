//! `lib_chan serve`: find the config (or make the working default) and run the server
//! until SIGINT or SIGTERM; SIGHUP reloads the config file ([`crate::hangup`]).
//!
//! It is a thin user of the embedding API (`Server::bind`, `Server::run`,
//! `lib_chan_server::shutdown_signal`), as any program embedding a server would be.
//!
//! Without `--config` it reads `./lib_chan.conf`, then `lib_chan.conf` in the data
//! directory (`$LIB_CHAN_HOME`, else `$HOME/.lib_chan`; the book reads
//! `$HOME/.erlang_config/lib_chan.conf`), and logs which one it used, or where it
//! looked before falling back to the default below.
//!
//! The default, for a newcomer with no config: the name server on 127.0.0.1:1234, a
//! development CA and server certificate generated once into the data directory and
//! reused, and the password from LIB_CHAN_PASSWORD, else one generated on first run and
//! kept (mode 0600) in the data directory beside the certificates. Its names are kept in
//! `names.redb` there (`store = "file:..."`), so they survive restarts.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use lib_chan_client::password_file;
use lib_chan_protocol::Term;
use lib_chan_server::config::DEFAULT_PORT;
use lib_chan_server::devcert::{DevCertPaths, DevCerts};
use lib_chan_server::{auth, shutdown_signal, Config, Server, ServiceConfig, TlsSource};

/// The default service's name, as in the book. The client's password lookup knows it
/// (and the file below), to find the generated password for localhost.
pub(crate) const DEFAULT_SERVICE: &str = password_file::SERVE_DEFAULT_SERVICE;

pub(crate) fn serve(
    config: Option<PathBuf>,
    port: Option<u16>,
    workers: Option<u16>,
) -> anyhow::Result<()> {
    crate::init_logging("info");
    let registry = lib_chan_services::registry();
    let found = find_config(config);
    let is_default = found.is_err();
    let config_path = found.as_ref().ok().cloned();
    let mut config = match found {
        Ok(path) => {
            tracing::info!(config = %path.display(), "using config file");
            Config::load(&path, &registry)?
        }
        Err(looked) => {
            let looked: Vec<String> = looked.iter().map(|p| p.display().to_string()).collect();
            tracing::info!(looked_in = %looked.join(", "), "no config file found; serving the default name server");
            default_config()?
        }
    };
    if let Some(port) = port {
        config.port = port;
    }
    let runtime = crate::runtime(workers)?;
    runtime.block_on(async {
        let services: Vec<String> = config.services.iter().map(|s| s.name.clone()).collect();
        let server = Server::bind(config, &registry).await?;
        // Before the lines below: from then on a SIGHUP must reload, not kill.
        crate::hangup::listen(server.reloader(), registry.clone(), config_path, port)?;
        let addr = server.local_addr();
        if let Some(metrics) = server.metrics_addr() {
            tracing::info!(addr = %metrics, "metrics endpoint listening (HTTP, /metrics)");
            announce(format_args!("metrics listening on {metrics}"));
        }
        tracing::info!(%addr, services = ?services, "lib_chan listening (TLS)");
        // One stable line on stdout for scripts and tests.
        announce(format_args!("listening on {addr}"));
        if is_default {
            announce(format_args!(
                "try, from another terminal:\n  LIB_CHAN_PASSWORD=... lib_chan rpc localhost:{} {DEFAULT_SERVICE} '{{lookup, joe}}'\n  \
                 (the client trusts the development CA in {} by default)",
                addr.port(),
                crate::data_dir().display()
            ));
        }
        crate::systemd::ready();
        crate::systemd::spawn_watchdog();
        let shutdown = async {
            shutdown_signal().await;
            crate::systemd::stopping();
        };
        // On a worker thread, not this one: see `Server::run`.
        tokio::spawn(server.run(shutdown))
            .await
            .context("the server task failed")?;
        anyhow::Ok(())
    })
}

/// Prints one line on standard output for whoever started the server. A reader that
/// has gone away (`lib_chan serve | head -1`, a closed pipe) must not end the server,
/// as `println!` would with a panic on EPIPE: the error is ignored.
fn announce(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// The config to use: `--config`, else ./lib_chan.conf, else the data directory's;
/// `Err` with the places looked in when there is none.
fn find_config(explicit: Option<PathBuf>) -> Result<PathBuf, Vec<PathBuf>> {
    if let Some(path) = explicit {
        return Ok(path);
    }
    let candidates = [
        PathBuf::from("lib_chan.conf"),
        crate::data_dir().join("lib_chan.conf"),
    ];
    match candidates.iter().find(|p| p.exists()) {
        Some(p) => Ok(p.clone()),
        None => Err(candidates.to_vec()),
    }
}

/// The working default: the name server with a development certificate.
fn default_config() -> anyhow::Result<Config> {
    let dir = crate::data_dir();
    let paths = DevCertPaths::in_dir(&dir);
    if !paths.all_exist() {
        let hosts = ["localhost", "127.0.0.1", "::1"].map(String::from);
        DevCerts::generate(&hosts)?.write(&dir)?;
        tracing::info!(dir = %dir.display(), "generated a development CA and server certificate");
    }
    let password = default_password(&dir)?;
    let mut config = Config::new(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        DEFAULT_PORT,
        TlsSource::Files {
            cert: paths.cert.clone(),
            key: paths.key.clone(),
        },
    );
    let mut name_server = ServiceConfig::new(
        DEFAULT_SERVICE,
        &auth::hash_password(password.as_bytes()),
        "mod_name_server",
        Term::atom("notUsed"),
    );
    // Durable out of the box: the names outlive the process.
    name_server.options.store = Some(format!("file:{}", dir.join("names.redb").display()));
    config.services.push(name_server);
    Ok(config)
}

/// LIB_CHAN_PASSWORD, else the password kept in DIR/password, else a new one.
fn default_password(dir: &Path) -> anyhow::Result<String> {
    if let Ok(p) = std::env::var("LIB_CHAN_PASSWORD") {
        if !p.is_empty() {
            return Ok(p);
        }
    }
    let file = dir.join(password_file::SERVE_PASSWORD_FILE_NAME);
    if let Ok(p) = std::fs::read_to_string(&file) {
        return Ok(p.trim().to_owned());
    }
    let password = generate_password()?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&file)
        .and_then(|mut f| writeln!(f, "{password}"))
        .with_context(|| format!("cannot write {}", file.display()))?;
    eprintln!(
        "lib_chan: generated the {DEFAULT_SERVICE} password {password}\n  (kept in {}; set LIB_CHAN_PASSWORD to choose your own)",
        file.display()
    );
    Ok(password)
}

/// Sixteen random letters and digits (from /dev/urandom; 62 letters, so a slight bias
/// that costs well under a bit of the password's ~95).
fn generate_password() -> anyhow::Result<String> {
    use std::io::Read;
    let alphabet: Vec<char> = ('a'..='z').chain('A'..='Z').chain('0'..='9').collect();
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom to generate a password")?;
    Ok(bytes
        .iter()
        .map(|b| alphabet[*b as usize % alphabet.len()])
        .collect())
}

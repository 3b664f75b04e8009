//! How every client command logs in: the flags (`--password-file`, `--user`, `--key`,
//! `--cert`, `--cert-key`) and the [`Login`] they make.
//!
//! - `--user NAME --key FILE`: a key login (an Ed25519 PKCS#8 PEM file, mode 0600);
//! - `--user NAME --cert FILE --cert-key FILE`: a client-certificate login;
//! - `--user NAME` alone: the user's password, from LIB_CHAN_PASSWORD, a `user=NAME`
//!   line of the password file, or a prompt;
//! - no `--user`: a `user=` line of the password file for the host and service, if any,
//!   else the service password (LIB_CHAN_PASSWORD, the password file, a prompt).
//!
//! Secrets are never taken from the arguments (other users can read them in the process
//! list). A refused login says where its credential came from, never the credential.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use lib_chan_client::password_file::PasswordLookup;
use lib_chan_client::{ConnectOptions, Error, Login};

/// The login flags of every command that connects.
#[derive(Debug, clap::Args)]
pub(crate) struct LoginArgs {
    /// Read the password from FILE (mode 0600): one password, or lines
    /// `HOST[:PORT] SERVICE PASSWORD` (or `... user=NAME key=FILE`, see the README).
    /// Also LIB_CHAN_PASSWORD_FILE. LIB_CHAN_PASSWORD comes first; without either,
    /// ~/.lib_chan/passwords is read if it is there.
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Log in as this named user (PROTOCOL.md section 4.1) instead of with the service
    /// password: with --key, with --cert and --cert-key, or with the user's password.
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
    /// The user's Ed25519 private key (PKCS#8 PEM, mode 0600), e.g. from `lib_chan keygen`.
    #[arg(long, value_name = "FILE", requires = "user", conflicts_with = "cert")]
    key: Option<PathBuf>,
    /// The user's client certificate (PEM), e.g. from `lib_chan gen-cert --client NAME`.
    #[arg(long, value_name = "FILE", requires_all = ["user", "cert_key"])]
    cert: Option<PathBuf>,
    /// The client certificate's private key (PEM, mode 0600).
    #[arg(long, value_name = "FILE", requires = "cert")]
    cert_key: Option<PathBuf>,
}

impl LoginArgs {
    /// `--password-file`, if given.
    pub(crate) fn file(&self) -> Option<&Path> {
        self.password_file.as_deref()
    }

    /// The login for `service` on `host:port`, and the options to connect with (a
    /// certificate login adds its certificate to `opts`).
    pub(crate) fn resolve(
        &self,
        host: &str,
        port: u16,
        service: &str,
        opts: ConnectOptions,
    ) -> anyhow::Result<(ConnectOptions, Login)> {
        if let (Some(user), Some(key)) = (&self.user, &self.key) {
            return Ok((opts, Login::ed25519_file(user, key)?));
        }
        if let (Some(user), Some(cert), Some(cert_key)) = (&self.user, &self.cert, &self.cert_key) {
            let login = Login::certificate(user)
                .from_source(format!("client certificate {}", cert.display()));
            return Ok((opts.client_cert_files(cert, cert_key), login));
        }
        let mut lookup = PasswordLookup::from_env();
        if let Some(file) = self.file() {
            lookup = lookup.file(file);
        }
        if let Some(found) = lookup.find_user(host, port, service, self.user.as_deref())? {
            let (login, cert) = found.login()?;
            let opts = match cert {
                Some((cert, key)) => opts.client_cert_files(cert, key),
                None => opts,
            };
            return Ok((opts, login));
        }
        if let Some(user) = &self.user {
            if !std::io::stdin().is_terminal() {
                bail!(
                    "no password for user {user} ({service} on {host}:{port}): set \
                     LIB_CHAN_PASSWORD, give --key or --cert, or add the line \
                     `{host}:{port} {service} user={user} password=...` to {} (mode 0600)",
                    lookup.default_file().display()
                );
            }
            let typed = rpassword::prompt_password(format!("password for user {user}: "))
                .context("cannot read the password")?;
            return Ok((
                opts,
                Login::user_password(user, typed).from_source("the prompt"),
            ));
        }
        let (password, source) = crate::remote::password(host, port, service, self.file())?;
        let login = Login::service_password(password);
        Ok((
            opts,
            match source {
                Some(s) => login.from_source(s.to_string()),
                None => login,
            },
        ))
    }
}

/// A failed connect as an error to print, saying where a refused service password came
/// from: a stale file is a common cause. (A refused user login says so itself.)
pub(crate) fn connect_error(e: Error, login: &Login) -> anyhow::Error {
    match (&e, login.source()) {
        (Error::AuthFailed, Some(source)) => {
            anyhow::anyhow!("{e} (the password came from {source})")
        }
        _ => e.into(),
    }
}

//! Service passwords kept in files, like Erlang's `~/.erlang.cookie`, so that neither a
//! program nor a user has to type them or put them on a command line.
//!
//! # The file format
//!
//! ```text
//! # HOST[:PORT]   SERVICE      PASSWORD
//! gandalf:1234    nameServer   ABXy45
//! [::1]:1234      rpc          another secret
//! gandalf         *            used for every other service on gandalf
//! *               nameServer   used for nameServer anywhere else
//! ```
//!
//! - One entry per line: the host as it is dialled (a name or an address, compared
//!   without regard to case; an IPv6 address in brackets when a port follows), an
//!   optional port, the service, then the password, which is the rest of the line with
//!   the whitespace around it removed (so it may hold spaces). `*` as the host or the
//!   service matches any. No port matches any port.
//! - The first matching line wins: put specific lines before general ones.
//! - Blank lines and lines whose first non-blank character is `#` are ignored.
//! - A file holding a single word on its only line is a *cookie*: the password for
//!   every host and service. `lib_chan serve` keeps its generated password so.
//! - A named user's login (PROTOCOL.md section 4.1) takes the place of the password,
//!   starting with `user=NAME`:
//!
//!   ```text
//!   gandalf:1234  nameServer  user=alice key=~/.lib_chan/alice.key
//!   gandalf:1234  chat        user=alice cert=alice.pem cert_key=alice.key
//!   gandalf       *           user=alice password=the rest of the line
//!   ```
//!
//!   `key=FILE` is an Ed25519 key (PKCS#8 PEM, mode 0600), `cert=FILE cert_key=FILE` a
//!   client certificate and its key, `password=...` the user's own password. Relative
//!   paths are relative to the password file's directory, `~/` to the home directory.
//!   (A service password that itself starts with `user=` can no longer be written
//!   plainly: there is no such need, and the form is now taken.)
//! - The file must be readable and writable by its owner only (`chmod 600 FILE`); one
//!   that group or others may read or write is refused, as ssh refuses such a key.
//!   Hosts are matched as dialled: `localhost` and `127.0.0.1` are different hosts.
//!
//! # Where a password comes from
//!
//! [`PasswordLookup::find`] tries, in this order, and stops at the first that has one:
//!
//! 1. the environment variable `LIB_CHAN_PASSWORD`;
//! 2. the file a program names ([`PasswordLookup::file`]; `lib_chan --password-file`),
//!    else the one `LIB_CHAN_PASSWORD_FILE` names; it must exist and hold an entry for
//!    the host and service, or the lookup fails (it was asked for by name);
//! 3. the default file, `passwords` in the data directory ([`data_dir`]:
//!    `$LIB_CHAN_HOME`, else `~/.lib_chan`), when it exists;
//! 4. for the service `nameServer` on `localhost`, `127.0.0.1` or `::1` only: the
//!    password the default `lib_chan serve` generated and keeps in `password` in the
//!    data directory, when it exists. A client on the same account then needs no setup.
//!
//! When none has one, [`PasswordLookup::find`] returns `Ok(None)`: the `lib_chan`
//! command then prompts on a terminal.
//!
//! ```no_run
//! use lib_chan_client::password_file::find_password;
//! use lib_chan_client::{ConnectOptions, Term};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let password = find_password("gandalf", 1234, "nameServer")?.ok_or("no password")?;
//! let chan = ConnectOptions::new()
//!     .connect("gandalf", 1234, "nameServer", &password, Term::nil())
//!     .await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The environment variable holding a password; it comes first.
pub const PASSWORD_ENV: &str = "LIB_CHAN_PASSWORD";
/// The environment variable naming a password file.
pub const PASSWORD_FILE_ENV: &str = "LIB_CHAN_PASSWORD_FILE";
/// The environment variable naming the data directory, in place of `~/.lib_chan`.
pub const HOME_ENV: &str = "LIB_CHAN_HOME";
/// The default password file's name in the data directory.
pub const DEFAULT_FILE_NAME: &str = "passwords";
/// The file in the data directory where the default `lib_chan serve` keeps the
/// password it generated for its `nameServer`.
pub const SERVE_PASSWORD_FILE_NAME: &str = "password";
/// The service the default `lib_chan serve` offers.
pub const SERVE_DEFAULT_SERVICE: &str = "nameServer";
/// The largest password file read, in bytes.
pub const MAX_FILE_LEN: u64 = 64 * 1024;

/// The per-user data directory: `$LIB_CHAN_HOME`, else `$HOME/.lib_chan` (`./.lib_chan`
/// when `HOME` is not set). The default `lib_chan serve` keeps its development
/// certificates and generated password there.
pub fn data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(HOME_ENV) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".lib_chan")
}

/// A password file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PasswordFileError {
    /// The file could not be opened or read.
    #[error("cannot read {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// Group or others may read or write the file.
    #[error(
        "{} is readable or writable by group or others (mode {mode:03o}); run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A line is not `HOST[:PORT] SERVICE PASSWORD` (the message never shows a password).
    #[error("{}:{line}: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The file named by the program or `LIB_CHAN_PASSWORD_FILE` has no entry for the
    /// host and service.
    #[error("{} has no password for service {service} on {host}:{port}", path.display())]
    NoEntry {
        /// The file.
        path: PathBuf,
        /// The host dialled.
        host: String,
        /// The port dialled.
        port: u16,
        /// The service.
        service: String,
    },
}

/// A password, and where it was found. `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password {
    secret: String,
    source: PasswordSource,
}

impl Password {
    /// The password.
    pub fn as_str(&self) -> &str {
        &self.secret
    }

    /// Where it was found, e.g. to say so when the server refuses it.
    pub fn source(&self) -> &PasswordSource {
        &self.source
    }
}

impl AsRef<[u8]> for Password {
    fn as_ref(&self) -> &[u8] {
        self.secret.as_bytes()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Password")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Where a [`Password`] came from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PasswordSource {
    /// The `LIB_CHAN_PASSWORD` environment variable.
    Env,
    /// A line of a password file.
    File {
        /// The file.
        path: PathBuf,
        /// The 1-based line.
        line: usize,
    },
}

impl fmt::Display for PasswordSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordSource::Env => f.write_str(PASSWORD_ENV),
            PasswordSource::File { path, line } => write!(f, "{} line {line}", path.display()),
        }
    }
}

/// One `HOST[:PORT] SERVICE PASSWORD` (or `... user=NAME ...`) line.
#[derive(Clone, PartialEq, Eq)]
struct Entry {
    /// Lowercase, without brackets; `*` for any.
    host: String,
    port: Option<u16>,
    /// `*` for any.
    service: String,
    secret: Secret,
    line: usize,
}

/// What a line gives.
#[derive(Clone, PartialEq, Eq)]
enum Secret {
    /// The service password.
    Service(String),
    /// A named user's credential.
    User(String, UserSecret),
}

/// A named user's credential, as a line gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserSecret {
    /// `password=...`: the user's own password.
    Password(String),
    /// `key=FILE`: an Ed25519 private key file.
    Key(PathBuf),
    /// `cert=FILE cert_key=FILE`: a client certificate and its key.
    Certificate(PathBuf, PathBuf),
}

/// A named user's login found in a password file (or `LIB_CHAN_PASSWORD`).
#[derive(Clone, PartialEq, Eq)]
pub struct UserLogin {
    /// The user.
    pub user: String,
    /// The credential.
    pub secret: UserSecret,
    /// Where it was found.
    pub source: PasswordSource,
}

impl fmt::Debug for UserLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.secret {
            UserSecret::Password(_) => "password".to_owned(),
            UserSecret::Key(p) => format!("key {}", p.display()),
            UserSecret::Certificate(c, _) => format!("certificate {}", c.display()),
        };
        f.debug_struct("UserLogin")
            .field("user", &self.user)
            .field("secret", &kind)
            .field("source", &self.source)
            .finish()
    }
}

impl UserLogin {
    /// The [`Login`](crate::Login) and, for a certificate, the files to present with
    /// [`ConnectOptions::client_cert_files`](crate::ConnectOptions::client_cert_files).
    ///
    /// # Errors
    /// A key file that cannot be used.
    pub fn login(&self) -> Result<(crate::Login, Option<(PathBuf, PathBuf)>), crate::Error> {
        let source = self.source.to_string();
        Ok(match &self.secret {
            UserSecret::Password(pw) => (
                crate::Login::user_password(&self.user, pw).from_source(source),
                None,
            ),
            UserSecret::Key(path) => (
                crate::Login::ed25519_file(&self.user, path)?
                    .from_source(format!("key file {} ({source})", path.display())),
                None,
            ),
            UserSecret::Certificate(cert, key) => (
                crate::Login::certificate(&self.user)
                    .from_source(format!("certificate {} ({source})", cert.display())),
                Some((cert.clone(), key.clone())),
            ),
        })
    }
}

impl Entry {
    fn matches(&self, host: &str, port: u16, service: &str) -> bool {
        (self.host == "*" || self.host == normal_host(host))
            && self.port.is_none_or(|p| p == port)
            && (self.service == "*" || self.service == service)
    }
}

/// A host as compared: lowercase, without IPv6 brackets.
fn normal_host(host: &str) -> String {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .to_ascii_lowercase()
}

#[derive(Clone, PartialEq, Eq)]
enum Content {
    /// One password for everything, on this line.
    Cookie(String, usize),
    Entries(Vec<Entry>),
}

/// A password file, read and checked (see the [module docs](self) for the format).
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordFile {
    path: PathBuf,
    content: Content,
}

impl fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries = match &self.content {
            Content::Cookie(..) => 1,
            Content::Entries(e) => e.len(),
        };
        f.debug_struct("PasswordFile")
            .field("path", &self.path)
            .field("entries", &entries)
            .finish()
    }
}

impl PasswordFile {
    /// Reads the file at `path`, refusing it when group or others may read or write it.
    ///
    /// # Errors
    /// [`PasswordFileError::Read`] (missing, unreadable, over [`MAX_FILE_LEN`]),
    /// [`PasswordFileError::TooOpen`] or [`PasswordFileError::Syntax`].
    pub fn load(path: &Path) -> Result<PasswordFile, PasswordFileError> {
        let read_err = |error| PasswordFileError::Read {
            path: path.to_owned(),
            error,
        };
        let file = File::open(path).map_err(read_err)?;
        // The mode of the file opened, not of whatever the path names a moment later.
        let mode = file.metadata().map_err(read_err)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(PasswordFileError::TooOpen {
                path: path.to_owned(),
                mode,
            });
        }
        let mut text = String::new();
        file.take(MAX_FILE_LEN + 1)
            .read_to_string(&mut text)
            .map_err(read_err)?;
        if text.len() as u64 > MAX_FILE_LEN {
            return Err(read_err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("larger than {MAX_FILE_LEN} bytes; is it a password file?"),
            )));
        }
        PasswordFile::parse(&text, path)
    }

    /// Parses password file text; `path` names it in errors and sources.
    ///
    /// # Errors
    /// [`PasswordFileError::Syntax`] for the first bad line, or an empty file.
    pub fn parse(text: &str, path: &Path) -> Result<PasswordFile, PasswordFileError> {
        let syntax = |line: usize, message: &str| PasswordFileError::Syntax {
            path: path.to_owned(),
            line,
            message: message.to_owned(),
        };
        let lines: Vec<(usize, &str)> = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
            .collect();
        let content = match lines.as_slice() {
            [] => return Err(syntax(1, "no password in the file")),
            [(n, only)] if !only.contains(char::is_whitespace) => {
                Content::Cookie((*only).to_owned(), *n)
            }
            _ => Content::Entries(
                lines
                    .iter()
                    .map(|&(n, l)| parse_entry(l, n).map_err(|m| syntax(n, &m)))
                    .collect::<Result<_, _>>()?,
            ),
        };
        Ok(PasswordFile {
            path: path.to_owned(),
            content,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The password for `service` on `host:port` (the host as dialled): the first line
    /// that matches, or the cookie.
    pub fn lookup(&self, host: &str, port: u16, service: &str) -> Option<Password> {
        let (secret, line) = match &self.content {
            Content::Cookie(secret, line) => (secret, *line),
            Content::Entries(entries) => entries
                .iter()
                .filter(|e| e.matches(host, port, service))
                .find_map(|e| match &e.secret {
                    Secret::Service(pw) => Some((pw, e.line)),
                    Secret::User(..) => None,
                })?,
        };
        Some(Password {
            secret: secret.clone(),
            source: PasswordSource::File {
                path: self.path.clone(),
                line,
            },
        })
    }
}

impl PasswordFile {
    /// The first line for `service` on `host:port` that logs in as a named user (as
    /// `user`, when given; any user otherwise).
    pub fn lookup_user(
        &self,
        host: &str,
        port: u16,
        service: &str,
        user: Option<&str>,
    ) -> Option<UserLogin> {
        let Content::Entries(entries) = &self.content else {
            return None;
        };
        entries
            .iter()
            .filter(|e| e.matches(host, port, service))
            .find_map(|e| match &e.secret {
                Secret::User(name, secret) if user.is_none_or(|u| u == name) => Some(UserLogin {
                    user: name.clone(),
                    secret: self.resolved(secret),
                    source: PasswordSource::File {
                        path: self.path.clone(),
                        line: e.line,
                    },
                }),
                _ => None,
            })
    }

    /// `secret` with its paths made relative to the file's directory (`~/` to home).
    fn resolved(&self, secret: &UserSecret) -> UserSecret {
        let base = self.path.parent().unwrap_or(Path::new("."));
        let fix = |p: &PathBuf| -> PathBuf {
            if let Ok(rest) = p.strip_prefix("~") {
                let home =
                    std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
                home.join(rest)
            } else {
                base.join(p)
            }
        };
        match secret {
            UserSecret::Password(pw) => UserSecret::Password(pw.clone()),
            UserSecret::Key(k) => UserSecret::Key(fix(k)),
            UserSecret::Certificate(c, k) => UserSecret::Certificate(fix(c), fix(k)),
        }
    }
}

/// Reads `user=NAME key=FILE`, `user=NAME cert=FILE cert_key=FILE` or
/// `user=NAME password=REST`.
fn parse_user(rest: &str) -> Result<Secret, String> {
    let form = "expected `user=NAME key=FILE`, `user=NAME cert=FILE cert_key=FILE` or \
                `user=NAME password=PASSWORD` after the service";
    let rest = rest.strip_prefix("user=").ok_or(form)?;
    let (name, rest) = rest.split_once(char::is_whitespace).ok_or(form)?;
    let rest = rest.trim_start();
    if name.is_empty() {
        return Err(form.into());
    }
    let secret = if let Some(pw) = rest.strip_prefix("password=") {
        UserSecret::Password(pw.trim().to_owned())
    } else if let Some(key) = rest.strip_prefix("key=") {
        if key.trim().is_empty() || key.trim().contains(char::is_whitespace) {
            return Err(form.into());
        }
        UserSecret::Key(PathBuf::from(key.trim()))
    } else if let Some(cert) = rest.strip_prefix("cert=") {
        let (cert, key) = cert.split_once(char::is_whitespace).ok_or(form)?;
        let key = key.trim().strip_prefix("cert_key=").ok_or(form)?;
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(form.into());
        }
        UserSecret::Certificate(PathBuf::from(cert), PathBuf::from(key))
    } else {
        return Err(form.into());
    };
    Ok(Secret::User(name.to_owned(), secret))
}

/// Parses `HOST[:PORT] SERVICE PASSWORD` (or `... user=NAME ...`).
fn parse_entry(line: &str, n: usize) -> Result<Entry, String> {
    let form = "expected `HOST[:PORT] SERVICE PASSWORD`, or a file holding only a password";
    let (address, rest) = line.split_once(char::is_whitespace).ok_or(form)?;
    let (service, password) = rest
        .trim_start()
        .split_once(char::is_whitespace)
        .ok_or(form)?;
    let password = password.trim();
    let (host, port) = split_host_port(address)?;
    if host.is_empty() {
        return Err(format!("`{address}` has no host"));
    }
    let secret = if password.starts_with("user=") {
        parse_user(password)?
    } else {
        Secret::Service(password.to_owned())
    };
    Ok(Entry {
        host: normal_host(host),
        port,
        service: service.to_owned(),
        secret,
        line: n,
    })
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`; a bare IPv6 address has no port.
fn split_host_port(address: &str) -> Result<(&str, Option<u16>), String> {
    let bad_port = |p: &str| format!("`{p}` in `{address}` is not a port number");
    if let Some(inner) = address.strip_prefix('[') {
        let (host, after) = inner
            .split_once(']')
            .ok_or_else(|| format!("`{address}`: `[` without `]`"))?;
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(p) => p.parse().map(|p| (host, Some(p))).map_err(|_| bad_port(p)),
                None => Err(format!("`{address}`: expected `:PORT` after `]`")),
            },
        };
    }
    match address.split_once(':') {
        Some((host, p)) if !p.contains(':') => {
            p.parse().map(|p| (host, Some(p))).map_err(|_| bad_port(p))
        }
        // No colon, or an IPv6 address without brackets (and so without a port).
        _ => Ok((address, None)),
    }
}

/// Where to look for a password, and in which order: see the [module docs](self).
#[derive(Clone)]
pub struct PasswordLookup {
    env_password: Option<String>,
    file: Option<PathBuf>,
    data_dir: PathBuf,
}

impl fmt::Debug for PasswordLookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordLookup")
            .field("env_password", &self.env_password.is_some())
            .field("file", &self.file)
            .field("data_dir", &self.data_dir)
            .finish()
    }
}

impl PasswordLookup {
    /// The lookup the environment describes: `LIB_CHAN_PASSWORD` (unless empty),
    /// `LIB_CHAN_PASSWORD_FILE` (unless empty), and [`data_dir`].
    pub fn from_env() -> PasswordLookup {
        let non_empty = |v: &String| !v.is_empty();
        PasswordLookup {
            env_password: std::env::var(PASSWORD_ENV).ok().filter(non_empty),
            file: std::env::var_os(PASSWORD_FILE_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            data_dir: data_dir(),
        }
    }

    /// A lookup that reads nothing from the environment: only the files of `data_dir`
    /// until [`file`](Self::file) or [`env_password`](Self::env_password) add more.
    pub fn in_dir(data_dir: impl Into<PathBuf>) -> PasswordLookup {
        PasswordLookup {
            env_password: None,
            file: None,
            data_dir: data_dir.into(),
        }
    }

    /// Sets the password that comes first (what `LIB_CHAN_PASSWORD` holds).
    pub fn env_password(mut self, password: Option<String>) -> PasswordLookup {
        self.env_password = password;
        self
    }

    /// Reads this password file (`--password-file`), in place of `LIB_CHAN_PASSWORD_FILE`.
    pub fn file(mut self, path: impl Into<PathBuf>) -> PasswordLookup {
        self.file = Some(path.into());
        self
    }

    /// The default password file: `passwords` in the data directory.
    pub fn default_file(&self) -> PathBuf {
        self.data_dir.join(DEFAULT_FILE_NAME)
    }

    /// The password for `service` on `host:port`, the host as dialled; `Ok(None)` when no
    /// source has one.
    ///
    /// # Errors
    /// A password file that is there but cannot be used (unreadable, open to others, a
    /// bad line), or a named file with no entry for the host and service.
    pub fn find(
        &self,
        host: &str,
        port: u16,
        service: &str,
    ) -> Result<Option<Password>, PasswordFileError> {
        if let Some(secret) = &self.env_password {
            return Ok(Some(Password {
                secret: secret.clone(),
                source: PasswordSource::Env,
            }));
        }
        if let Some(path) = &self.file {
            let file = PasswordFile::load(path)?;
            return match file.lookup(host, port, service) {
                Some(p) => Ok(Some(p)),
                None => Err(PasswordFileError::NoEntry {
                    path: path.clone(),
                    host: host.to_owned(),
                    port,
                    service: service.to_owned(),
                }),
            };
        }
        if let Some(file) = load_if_there(&self.default_file())? {
            if let Some(p) = file.lookup(host, port, service) {
                return Ok(Some(p));
            }
        }
        let local = ["localhost", "127.0.0.1", "::1"].contains(&normal_host(host).as_str());
        if local && service == SERVE_DEFAULT_SERVICE {
            let path = self.data_dir.join(SERVE_PASSWORD_FILE_NAME);
            if let Some(file) = load_if_there(&path)? {
                return Ok(file.lookup(host, port, service));
            }
        }
        Ok(None)
    }
}

impl PasswordLookup {
    /// A named user's login for `service` on `host:port`: `LIB_CHAN_PASSWORD` as `user`'s
    /// password (when `user` is given), else the first `user=` line of the named file or
    /// the default file (for `user`, when given). `Ok(None)` when there is none.
    ///
    /// # Errors
    /// As [`find`](Self::find), for the files.
    pub fn find_user(
        &self,
        host: &str,
        port: u16,
        service: &str,
        user: Option<&str>,
    ) -> Result<Option<UserLogin>, PasswordFileError> {
        if let (Some(secret), Some(user)) = (&self.env_password, user) {
            return Ok(Some(UserLogin {
                user: user.to_owned(),
                secret: UserSecret::Password(secret.clone()),
                source: PasswordSource::Env,
            }));
        }
        if let Some(path) = &self.file {
            return Ok(PasswordFile::load(path)?.lookup_user(host, port, service, user));
        }
        Ok(load_if_there(&self.default_file())?
            .and_then(|f| f.lookup_user(host, port, service, user)))
    }
}

/// The file at `path`, or `None` when there is nothing there.
fn load_if_there(path: &Path) -> Result<Option<PasswordFile>, PasswordFileError> {
    match PasswordFile::load(path) {
        Ok(f) => Ok(Some(f)),
        Err(PasswordFileError::Read { error, .. }) if error.kind() == io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// [`PasswordLookup::from_env`]`.find(host, port, service)`: the password for `service`
/// on `host:port` from the environment, the file `LIB_CHAN_PASSWORD_FILE` names, the
/// default file, or the default server's generated one, in that order.
///
/// # Errors
/// As [`PasswordLookup::find`].
pub fn find_password(
    host: &str,
    port: u16,
    service: &str,
) -> Result<Option<Password>, PasswordFileError> {
    PasswordLookup::from_env().find(host, port, service)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "lib_chan_pwfile_{tag}_{}_{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn write(&self, name: &str, text: &str, mode: u32) -> PathBuf {
            let path = self.0.join(name);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&path)
                .unwrap();
            io::Write::write_all(&mut f, text.as_bytes()).unwrap();
            // The umask may have taken bits away; set exactly what the test asked for.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn parse(text: &str) -> Result<PasswordFile, PasswordFileError> {
        PasswordFile::parse(text, Path::new("pw"))
    }

    fn secret(f: &PasswordFile, host: &str, port: u16, service: &str) -> Option<String> {
        f.lookup(host, port, service).map(|p| p.as_str().to_owned())
    }

    #[test]
    fn entries_match_host_port_and_service_first_line_first() {
        let f = parse(
            "# comment\n\n  gandalf:1234 nameServer ABXy45\n\
             [::1]:99 rpc two words  \n\
             GANDALF * any-service\n\
             ::1 nameServer v6-any-port\n\
             * nameServer anywhere\n",
        )
        .unwrap();
        assert_eq!(secret(&f, "gandalf", 1234, "nameServer").unwrap(), "ABXy45");
        // Another port: the line without a port for gandalf.
        assert_eq!(
            secret(&f, "Gandalf", 1235, "nameServer").unwrap(),
            "any-service"
        );
        assert_eq!(secret(&f, "gandalf", 1, "chat").unwrap(), "any-service");
        assert_eq!(secret(&f, "::1", 99, "rpc").unwrap(), "two words");
        assert_eq!(secret(&f, "[::1]", 99, "rpc").unwrap(), "two words");
        assert_eq!(secret(&f, "::1", 100, "nameServer").unwrap(), "v6-any-port");
        assert_eq!(secret(&f, "bilbo", 1, "nameServer").unwrap(), "anywhere");
        assert_eq!(secret(&f, "bilbo", 1, "rpc"), None);
        assert_eq!(
            f.lookup("gandalf", 1234, "nameServer").unwrap().source(),
            &PasswordSource::File {
                path: "pw".into(),
                line: 3
            }
        );
    }

    #[test]
    fn user_lines_give_named_logins_and_never_a_service_password() {
        let f = PasswordFile::parse(
            "gandalf:1234 nameServer user=alice key=keys/alice.key\n\
             gandalf:1234 chat user=bob cert=bob.pem cert_key=~/bob.key\n\
             gandalf * user=carol password=two words\n\
             gandalf * the service password\n",
            Path::new("/etc/lc/pw"),
        )
        .unwrap();
        let alice = f.lookup_user("gandalf", 1234, "nameServer", None).unwrap();
        assert_eq!(alice.user, "alice");
        assert_eq!(
            alice.secret,
            UserSecret::Key("/etc/lc/keys/alice.key".into())
        );
        let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
        let bob = f.lookup_user("gandalf", 1234, "chat", None).unwrap();
        assert_eq!(
            bob.secret,
            UserSecret::Certificate("/etc/lc/bob.pem".into(), Path::new(&home).join("bob.key"))
        );
        // A user asked for by name skips the lines of other users.
        let carol = f
            .lookup_user("gandalf", 1234, "nameServer", Some("carol"))
            .unwrap();
        assert_eq!(carol.secret, UserSecret::Password("two words".into()));
        assert_eq!(carol.source.to_string(), "/etc/lc/pw line 3");
        assert!(f
            .lookup_user("gandalf", 1234, "nameServer", Some("dave"))
            .is_none());
        // The service password is the plain line, not a user's.
        assert_eq!(
            secret(&f, "gandalf", 1234, "nameServer").unwrap(),
            "the service password"
        );
        assert!(!format!("{carol:?}").contains("two words"));
        for bad in [
            "h s user=alice\n",
            "h s user=alice token=x\n",
            "h s user=alice cert=a.pem\n",
            "h s user=alice cert=a.pem key=b\n",
            "h s user= key=x\n",
            "h s user=alice key=\n",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(
                e.starts_with("pw:1: expected `user=NAME key=FILE`"),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn a_lone_word_is_a_cookie_for_everything() {
        let f = parse("\n# generated\nS3cret\n").unwrap();
        assert_eq!(secret(&f, "anyhost", 1, "any").unwrap(), "S3cret");
        assert_eq!(
            f.lookup("h", 1, "s").unwrap().source().to_string(),
            "pw line 3"
        );
    }

    #[test]
    fn bad_lines_are_named_and_never_show_a_password() {
        let cases = [
            ("", 1, "no password"),
            ("# only a comment\n", 1, "no password"),
            (
                "host:1 nameServer pw\nhost service\n",
                2,
                "HOST[:PORT] SERVICE PASSWORD",
            ),
            ("two words\n", 1, "HOST[:PORT] SERVICE PASSWORD"),
            (
                "host:http svc secret1\n",
                1,
                "`http` in `host:http` is not a port",
            ),
            ("host:99999 svc secret1\n", 1, "not a port"),
            ("[::1 svc secret1\n", 1, "without `]`"),
            ("[::1]99 svc secret1\n", 1, "expected `:PORT`"),
            (":1234 svc secret1\n", 1, "has no host"),
        ];
        for (text, line, words) in cases {
            let e = parse(text).unwrap_err();
            let shown = e.to_string();
            assert!(
                matches!(e, PasswordFileError::Syntax { line: l, .. } if l == line),
                "{text:?}: {shown}"
            );
            assert!(shown.starts_with(&format!("pw:{line}: ")), "{shown}");
            assert!(shown.contains(words), "{text:?}: {shown}");
            assert!(!shown.contains("secret1"), "{shown}");
        }
    }

    #[test]
    fn a_file_open_to_group_or_others_is_refused_with_the_fix() {
        let dir = TempDir::new("mode");
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602] {
            let path = dir.write(&format!("pw{mode:o}"), "secret\n", mode);
            let e = PasswordFile::load(&path).unwrap_err();
            assert!(matches!(e, PasswordFileError::TooOpen { mode: m, .. } if m == mode));
            let shown = e.to_string();
            assert!(
                shown.contains(&format!("run `chmod 600 {}`", path.display())),
                "{shown}"
            );
            assert!(shown.contains(&format!("mode {mode:o}")), "{shown}");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            assert_eq!(
                PasswordFile::load(&path)
                    .unwrap()
                    .lookup("h", 1, "s")
                    .unwrap()
                    .as_str(),
                "secret"
            );
        }
        let path = dir.write("owner-read-only", "secret\n", 0o400);
        assert!(PasswordFile::load(&path).is_ok());
        let e = PasswordFile::load(&dir.0.join("missing")).unwrap_err();
        assert!(e.to_string().starts_with("cannot read "), "{e}");
        let big = dir.write("big", &"x".repeat(MAX_FILE_LEN as usize + 1), 0o600);
        assert!(PasswordFile::load(&big)
            .unwrap_err()
            .to_string()
            .contains("larger than"));
    }

    #[test]
    fn sources_are_tried_in_the_documented_order() {
        let dir = TempDir::new("order");
        let data = dir.0.join("data");
        std::fs::create_dir(&data).unwrap();
        let lookup = || PasswordLookup::in_dir(&data);
        let find = |l: &PasswordLookup, host: &str, service: &str| {
            l.find(host, 1234, service)
                .unwrap()
                .map(|p| (p.as_str().to_owned(), p.source().clone()))
        };

        // Nothing anywhere.
        assert_eq!(find(&lookup(), "localhost", "nameServer"), None);

        // 4: the default server's generated password, for localhost nameServer only.
        let serve = {
            let p = dir.write("data/password", "generated\n", 0o600);
            PasswordSource::File { path: p, line: 1 }
        };
        for host in ["localhost", "127.0.0.1", "::1", "[::1]", "LOCALHOST"] {
            assert_eq!(
                find(&lookup(), host, "nameServer"),
                Some(("generated".into(), serve.clone())),
                "{host}"
            );
        }
        assert_eq!(find(&lookup(), "gandalf", "nameServer"), None);
        assert_eq!(find(&lookup(), "localhost", "rpc"), None);

        // 3: the default file comes before it, when it has an entry.
        let default = dir.write(
            "data/passwords",
            "localhost nameServer from-default\n",
            0o600,
        );
        assert_eq!(lookup().default_file(), default);
        assert_eq!(
            find(&lookup(), "localhost", "nameServer").unwrap().0,
            "from-default"
        );
        assert_eq!(
            find(&lookup(), "127.0.0.1", "nameServer").unwrap().0,
            "generated"
        );

        // 2: a named file comes before both, and must have the entry.
        let named = dir.write("named", "localhost:1234 nameServer from-named\n", 0o600);
        let with_file = lookup().file(&named);
        assert_eq!(
            find(&with_file, "localhost", "nameServer").unwrap().0,
            "from-named"
        );
        let e = with_file.find("localhost", 1, "nameServer").unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{} has no password for service nameServer on localhost:1",
                named.display()
            )
        );

        // 1: the environment's password comes before everything.
        let env = with_file.clone().env_password(Some("from-env".into()));
        assert_eq!(
            find(&env, "localhost", "nameServer"),
            Some(("from-env".into(), PasswordSource::Env))
        );

        // A default file open to others is an error, not skipped.
        std::fs::set_permissions(&default, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = lookup().find("localhost", 1234, "nameServer").unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }

    #[test]
    fn debug_output_hides_passwords() {
        let f = parse("h s topsecret\n").unwrap();
        let p = f.lookup("h", 1, "s").unwrap();
        let shown = format!(
            "{f:?} {p:?} {:?}",
            PasswordLookup::in_dir("/x").env_password(Some("envsecret".into()))
        );
        assert!(
            !shown.contains("topsecret") && !shown.contains("envsecret"),
            "{shown}"
        );
    }
}

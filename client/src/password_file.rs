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

/// One `HOST[:PORT] SERVICE PASSWORD` line.
#[derive(Clone, PartialEq, Eq)]
struct Entry {
    /// Lowercase, without brackets; `*` for any.
    host: String,
    port: Option<u16>,
    /// `*` for any.
    service: String,
    password: String,
    line: usize,
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
                .find(|e| e.matches(host, port, service))
                .map(|e| (&e.password, e.line))?,
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

/// Parses `HOST[:PORT] SERVICE PASSWORD`.
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
    Ok(Entry {
        host: normal_host(host),
        port,
        service: service.to_owned(),
        password: password.to_owned(),
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

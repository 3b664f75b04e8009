//! The `[[service]]` keys of a port program (`handler = "port"`, PROTOCOL.md section 9):
//! the program to run and how to run and supervise it. Only `handler = "port"` takes
//! them; the program itself is run by the `port` handler of the services crate.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use crate::config::{ConfigError, Doc};

/// The handler name of port programs.
pub const PORT_HANDLER: &str = "port";

/// Where a port program's standard error goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StderrMode {
    /// Line by line into the server's log, tagged with the service (the default).
    #[default]
    Log,
    /// Straight to the server's own standard error.
    Inherit,
}

/// How to run one port program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortOptions {
    /// `command`: the argv, no shell. A first element with a `/` that is relative is
    /// made relative to the config file's directory.
    pub command: Vec<String>,
    /// `working_dir` (default: the config file's directory).
    pub working_dir: PathBuf,
    /// `env`: variables added to the program's clean environment (which holds only
    /// `PATH`, from the server's).
    pub env: BTreeMap<String, String>,
    /// `max_restarts` (default 5): crashes in a row (each within a minute of its start)
    /// after which the program is reported as failing and new connections get
    /// `{error, busy}` until a start lasts a minute; it is still restarted, every
    /// `restart_backoff` doubled up to 60 s.
    pub max_restarts: u32,
    /// `restart_backoff` (seconds, default 0.5): the first delay before a restart,
    /// doubled after each crash in a row, at most 60 s.
    pub restart_backoff: Duration,
    /// `call_timeout` (seconds, default 30): a call the program has not answered by then
    /// gets `{error, Ref, timeout}`; a program that does not read its input for that
    /// long is killed as stuck.
    pub call_timeout: Duration,
    /// `stderr`: `"log"` (default) or `"inherit"`.
    pub stderr: StderrMode,
}

/// The port keys of one `[[service]]` as written.
pub(crate) struct RawPortKeys<'a> {
    pub(crate) command: &'a Option<Spanned<Vec<String>>>,
    pub(crate) working_dir: &'a Option<Spanned<String>>,
    pub(crate) env: &'a Option<Spanned<BTreeMap<String, String>>>,
    pub(crate) max_restarts: &'a Option<Spanned<i64>>,
    pub(crate) restart_backoff: &'a Option<Spanned<f64>>,
    pub(crate) call_timeout: &'a Option<Spanned<f64>>,
    pub(crate) stderr: &'a Option<Spanned<String>>,
}

impl RawPortKeys<'_> {
    /// The first port key given, by name and span, if any.
    fn first_given(&self) -> Option<(&'static str, std::ops::Range<usize>)> {
        let spans = [
            ("command", self.command.as_ref().map(Spanned::span)),
            ("working_dir", self.working_dir.as_ref().map(Spanned::span)),
            ("env", self.env.as_ref().map(Spanned::span)),
            (
                "max_restarts",
                self.max_restarts.as_ref().map(Spanned::span),
            ),
            (
                "restart_backoff",
                self.restart_backoff.as_ref().map(Spanned::span),
            ),
            (
                "call_timeout",
                self.call_timeout.as_ref().map(Spanned::span),
            ),
            ("stderr", self.stderr.as_ref().map(Spanned::span)),
        ];
        spans.into_iter().find_map(|(k, s)| s.map(|s| (k, s)))
    }

    /// Checks the keys: `Some` options for a port service, `None` for another handler
    /// (which may not have any of them). `key` makes `service[i].KEY`; `name_span` is
    /// where to report a missing `command`.
    pub(crate) fn validate(
        &self,
        doc: &Doc<'_>,
        key: &dyn Fn(&str) -> String,
        is_port: bool,
        name_span: std::ops::Range<usize>,
        base: &Path,
    ) -> Result<Option<PortOptions>, ConfigError> {
        if !is_port {
            return match self.first_given() {
                Some((k, span)) => Err(doc.error(
                    span,
                    &key(k),
                    &format!("only handler = \"{PORT_HANDLER}\" takes `{k}`"),
                )),
                None => Ok(None),
            };
        }
        let Some(command) = self.command else {
            return Err(doc.error(
                name_span,
                &key("command"),
                "a port service needs `command`, the program's argv, e.g. [\"python3\", \"inventory.py\"]",
            ));
        };
        let mut argv = command.get_ref().clone();
        if argv.is_empty() || argv[0].is_empty() {
            return Err(doc.error(
                command.span(),
                &key("command"),
                "must name a program: [\"PROGRAM\", \"ARG\", ...]",
            ));
        }
        if argv[0].contains('/') && Path::new(&argv[0]).is_relative() {
            argv[0] = base.join(&argv[0]).display().to_string();
        }
        let working_dir = match self.working_dir {
            Some(d) => base.join(d.get_ref()),
            None => base.to_owned(),
        };
        if let Some(d) = self.working_dir {
            if !working_dir.is_dir() {
                return Err(doc.error(
                    d.span(),
                    &key("working_dir"),
                    &format!("{} is not a directory", working_dir.display()),
                ));
            }
        }
        let env = self
            .env
            .as_ref()
            .map(|e| e.get_ref().clone())
            .unwrap_or_default();
        if let (Some(e), Some(bad)) = (
            self.env,
            env.keys().find(|k| k.is_empty() || k.contains('=')),
        ) {
            return Err(doc.error(
                e.span(),
                &key("env"),
                &format!("`{bad}` is not a variable name"),
            ));
        }
        let max_restarts = match self.max_restarts {
            Some(n) if (1..=1000).contains(n.get_ref()) => *n.get_ref() as u32,
            Some(n) => {
                return Err(doc.error(n.span(), &key("max_restarts"), "must be from 1 to 1000"))
            }
            None => 5,
        };
        let secs = |v: &Option<Spanned<f64>>, k: &str, default: f64| match v {
            Some(s) if *s.get_ref() > 0.0 && *s.get_ref() <= 3600.0 => {
                Ok(Duration::from_secs_f64(*s.get_ref()))
            }
            Some(s) => Err(doc.error(
                s.span(),
                &key(k),
                "must be a number of seconds above 0 and at most 3600",
            )),
            None => Ok(Duration::from_secs_f64(default)),
        };
        let stderr = match self.stderr {
            None => StderrMode::Log,
            Some(s) if s.get_ref() == "log" => StderrMode::Log,
            Some(s) if s.get_ref() == "inherit" => StderrMode::Inherit,
            Some(s) => {
                return Err(doc.error(s.span(), &key("stderr"), "must be \"log\" or \"inherit\""))
            }
        };
        Ok(Some(PortOptions {
            command: argv,
            working_dir,
            env,
            max_restarts,
            restart_backoff: secs(self.restart_backoff, "restart_backoff", 0.5)?,
            call_timeout: secs(self.call_timeout, "call_timeout", 30.0)?,
            stderr,
        }))
    }
}

//! `lib_chan admin HOST:PORT VERB`: the operator's console, the command line of a
//! `mod_admin` service (server/src/admin.rs has the calls and their answers).
//!
//! It logs in as every client command does (`--user NAME` with a key, a certificate or
//! the user's password; a `mod_admin` service has no service password), sends the call
//! the verb names, and prints the answer: aligned tables by default (one helper,
//! [`Table`], makes them all), or with `--json` one JSON document made mechanically from
//! the term ([`json`]). `top` samples `stats` every interval and prints one line of
//! rates per sample, like `redis-cli --stat`, until Ctrl-C or `--count` lines.
//!
//! Exit status: non-zero on any failure, and when the server did nothing (`kick` of a
//! connection that is not open, `kick-user` of a user with none, `unblock` of a source
//! without a penalty, a refused `reload`).

use std::io::Write;
use std::net::IpAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Subcommand;
use lib_chan_client::Channel;
use lib_chan_protocol::Term;
use serde_json::Value;

use crate::login::{connect_error, LoginArgs};
use crate::remote::{split_address, ConnectArgs};

/// Arguments of `admin`.
#[derive(Debug, clap::Args)]
pub(crate) struct AdminArgs {
    /// The server, HOST:PORT (e.g. localhost:1234 or [::1]:1234).
    address: String,
    /// The mod_admin service to start (before VERB).
    #[arg(long, default_value = "admin", value_name = "NAME")]
    service: String,
    /// Print the answer as one JSON document (top: one JSON object per line).
    #[arg(long, global = true)]
    json: bool,
    #[command(flatten)]
    login: LoginArgs,
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(subcommand)]
    verb: Verb,
}

/// What to ask the console.
#[derive(Debug, Subcommand)]
enum Verb {
    /// The server: version, uptime, config file, address, users, TLS certificate,
    /// limits, and each service with its handler, connections and status.
    Info,
    /// The open connections: id, peer, service, user, credential, TLS version, since
    /// when, calls, bytes in and out, calls in flight.
    Connections {
        /// Only the connections to this service.
        #[arg(long, value_name = "S")]
        service: Option<String>,
        /// Only the connections of this named user.
        #[arg(long, value_name = "U")]
        user: Option<String>,
        /// Only the connections whose peer ADDR:PORT starts with this (e.g. 10.1.).
        #[arg(long, value_name = "P")]
        peer: Option<String>,
    },
    /// Close connection ID (as listed by `connections`): it ends with {error, revoked}.
    /// Exit status non-zero when no such connection is open.
    Kick {
        /// The connection id.
        id: u64,
    },
    /// Close every connection of the named user NAME, with {error, revoked}. Exit
    /// status non-zero when the user had none.
    KickUser {
        /// The user's name.
        name: String,
    },
    /// Recent refused logins, merged by source, user, service and reason; most recent
    /// first.
    Denials,
    /// The sources penalized after failed logins: time left, and whether they are
    /// refused at accept now.
    Penalties,
    /// Lift the penalty of SOURCE (an IP address). Exit status non-zero when it had
    /// none.
    Unblock {
        /// The source address, e.g. 192.0.2.7.
        source: IpAddr,
    },
    /// Re-read the server's config file, as SIGHUP does, and print what changed; a bad
    /// file prints its error (file:line: key: ...), keeps the running config and exits
    /// non-zero.
    Reload,
    /// Every counter and gauge of the metrics endpoint, by series.
    Stats,
    /// One line per interval until Ctrl-C: open connections, logins, refusals, calls
    /// and bytes in and out per second (calls of the console's own service left out),
    /// from successive `stats`, like `redis-cli --stat`.
    Top {
        /// Seconds between lines.
        #[arg(long, default_value_t = 1.0, value_name = "SECS")]
        interval: f64,
        /// Stop after N lines.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
}

/// `lib_chan admin`.
pub(crate) fn run(args: &AdminArgs) -> ExitCode {
    crate::init_logging("warn");
    match run_inner(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("lib_chan: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Connects, runs the verb; `Ok(false)`: the answer was printed but the server did
/// nothing.
fn run_inner(args: &AdminArgs) -> anyhow::Result<bool> {
    let (host, port) = split_address(&args.address)?;
    if let Verb::Top { interval, count } = &args.verb {
        if !(*interval > 0.0 && *interval < 1e6) {
            bail!("--interval must be a positive number of seconds");
        }
        if *count == Some(0) {
            bail!("--count must be at least 1");
        }
    }
    let (opts, login) = args
        .login
        .resolve(&host, port, &args.service, args.connect.options()?)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let channel = opts
            .connect_with(&host, port, &args.service, &login, Term::nil())
            .await
            .map_err(|e| connect_error(e, &login))?;
        let result = verb(args, &channel).await;
        channel.close().await;
        result
    })
}

fn bin(s: &str) -> Term {
    Term::binary(s.as_bytes())
}

/// Sends the verb's call and prints its answer.
async fn verb(args: &AdminArgs, ch: &Channel) -> anyhow::Result<bool> {
    let request = match &args.verb {
        Verb::Top { interval, count } => {
            return top(ch, &args.service, *interval, *count, args.json).await;
        }
        Verb::Info => Term::atom("info"),
        Verb::Connections {
            service,
            user,
            peer,
        } => {
            let filter: Vec<(Term, Term)> = [("service", service), ("user", user), ("peer", peer)]
                .into_iter()
                .filter_map(|(k, v)| Some((Term::atom(k), bin(v.as_deref()?))))
                .collect();
            if filter.is_empty() {
                Term::atom("connections")
            } else {
                Term::tuple([Term::atom("connections"), Term::map(filter)])
            }
        }
        Verb::Kick { id } => Term::tuple([
            Term::atom("kick"),
            Term::Int(i64::try_from(*id).context("ID is too large")?),
        ]),
        Verb::KickUser { name } => Term::tuple([Term::atom("kick_user"), bin(name)]),
        Verb::Denials => Term::atom("denials"),
        Verb::Penalties => Term::atom("penalties"),
        Verb::Unblock { source } => Term::tuple([Term::atom("unblock"), bin(&source.to_string())]),
        Verb::Reload => Term::atom("reload"),
        Verb::Stats => Term::atom("stats"),
    };
    let answer = ch.rpc(request).await?;
    let done = match &args.verb {
        Verb::Kick { .. } | Verb::Unblock { .. } => answer.is_atom("true"),
        Verb::KickUser { .. } => answer.as_int().is_some_and(|n| n > 0),
        Verb::Reload => answer.as_tuple().is_some_and(|t| t[0].is_atom("ok")),
        _ => true,
    };
    if args.json {
        println!("{}", json(&answer));
    } else {
        print!("{}", human(&args.verb, &answer)?);
    }
    Ok(done)
}

/// The answer to `verb` as text for a person, ending with a newline.
fn human(verb: &Verb, answer: &Term) -> anyhow::Result<String> {
    let list = || {
        answer
            .as_list()
            .with_context(|| format!("unexpected answer {answer}"))
    };
    Ok(match verb {
        Verb::Info => info_text(answer),
        Verb::Connections { .. } => Table::of(
            list()?,
            &[
                ("ID", "id"),
                ("PEER", "peer"),
                ("SERVICE", "service"),
                ("USER", "user"),
                ("CREDENTIAL", "credential"),
                ("TLS", "tls"),
                ("SINCE", "since"),
                ("CALLS", "calls"),
                ("IN", "bytes_in"),
                ("OUT", "bytes_out"),
                ("INFLIGHT", "in_flight"),
            ],
        )
        .or_none("no connections"),
        Verb::Denials => Table::of(
            list()?,
            &[
                ("SOURCE", "source"),
                ("USER", "user"),
                ("SERVICE", "service"),
                ("REASON", "reason"),
                ("COUNT", "count"),
                ("FIRST", "first"),
                ("LAST", "last"),
            ],
        )
        .or_none("no denials"),
        Verb::Penalties => {
            let mut t = Table::new(&["SOURCE", "REMAINING", "REFUSING"]);
            for p in list()? {
                let ms = get(p, "remaining_ms").as_int().unwrap_or(0);
                t.row(vec![
                    show(get(p, "source")),
                    format!("{:.1}s", ms as f64 / 1e3),
                    show(get(p, "refusing")),
                ]);
            }
            t.or_none("no penalties")
        }
        Verb::Stats => {
            let mut t = Table::new(&["SERIES", "VALUE"]);
            for (k, v) in answer.as_map().unwrap_or(&[]) {
                t.row(vec![show(k), show(v)]);
            }
            t.render()
        }
        Verb::Kick { id } => match answer.is_atom("true") {
            true => "kicked 1 connection\n".into(),
            false => format!("no connection {id}\n"),
        },
        Verb::KickUser { name } => match answer.as_int().unwrap_or(0) {
            0 => format!("no connection of {name}\n"),
            1 => format!("kicked 1 connection of {name}\n"),
            n => format!("kicked {n} connections of {name}\n"),
        },
        Verb::Unblock { source } => match answer.is_atom("true") {
            true => format!("unblocked {source}\n"),
            false => format!("no penalty on {source}\n"),
        },
        Verb::Reload => reload_text(answer)?,
        Verb::Top { .. } => unreachable!("top prints as it goes"),
    })
}

/// `info` as `key: value` lines, then the services as a table.
fn info_text(info: &Term) -> String {
    let mut out = String::new();
    for key in [
        "version", "uptime_s", "config", "listen", "users", "sessions",
    ] {
        if let Some(v) = info.map_get(&Term::atom(key)) {
            out.push_str(&format!("{key}: {}\n", show(v)));
        }
    }
    for key in ["tls", "limits"] {
        for (k, v) in info
            .map_get(&Term::atom(key))
            .and_then(Term::as_map)
            .unwrap_or(&[])
        {
            out.push_str(&format!("{key}.{}: {}\n", show(k), show(v)));
        }
    }
    let services = info
        .map_get(&Term::atom("services"))
        .and_then(Term::as_list)
        .unwrap_or(&[]);
    out.push_str("services:\n");
    out.push_str(
        &Table::of(
            services,
            &[
                ("NAME", "name"),
                ("HANDLER", "handler"),
                ("CONNECTIONS", "connections"),
                ("STATUS", "status"),
            ],
        )
        .render(),
    );
    out
}

/// What a reload changed, or its error.
fn reload_text(answer: &Term) -> anyhow::Result<String> {
    match answer.as_tuple() {
        Some([tag, summary]) if tag.is_atom("ok") => {
            let mut out = String::new();
            let mut changed = false;
            for key in [
                "added",
                "removed",
                "replaced",
                "password_changed",
                "users_revoked",
                "needs_restart",
                "kept",
            ] {
                let Some(v) = summary.map_get(&Term::atom(key)) else {
                    continue;
                };
                let empty = v.as_list().is_some_and(<[Term]>::is_empty) || v.as_int() == Some(0);
                if !empty {
                    changed |= !matches!(key, "kept" | "needs_restart");
                    out.push_str(&format!("{}: {}\n", key.replace('_', " "), show(v)));
                }
            }
            if !changed {
                out.insert_str(0, "no change\n");
            }
            Ok(out)
        }
        Some([tag, message]) if tag.is_atom("error") => {
            Ok(format!("reload refused: {}\n", show(message)))
        }
        _ => bail!("unexpected answer {answer}"),
    }
}

/// An aligned table: columns as wide as their widest cell, two spaces apart; columns
/// of numbers right-aligned.
#[derive(Debug)]
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// A row per map of `items`, a column per `(HEADING, key)`.
    fn of(items: &[Term], columns: &[(&str, &str)]) -> Table {
        let mut t = Table::new(&columns.iter().map(|c| c.0).collect::<Vec<_>>());
        for item in items {
            t.row(columns.iter().map(|(_, k)| show(get(item, k))).collect());
        }
        t
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self) -> String {
        let n = self.header.len();
        let width = |i: usize| {
            self.rows
                .iter()
                .map(|r| r[i].chars().count())
                .chain([self.header[i].len()])
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..n).map(width).collect();
        let numeric: Vec<bool> = (0..n)
            .map(|i| {
                !self.rows.is_empty()
                    && self
                        .rows
                        .iter()
                        .all(|r| r[i].trim_end_matches('s').parse::<f64>().is_ok())
            })
            .collect();
        let mut out = String::new();
        for cells in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in cells.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = widths[i].saturating_sub(cell.chars().count());
                if numeric[i] {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// The table, or `none` when it has no rows.
    fn or_none(&self, none: &str) -> String {
        if self.rows.is_empty() {
            format!("{none}\n")
        } else {
            self.render()
        }
    }
}

/// The value under the atom `key` of a map (`undefined` when missing).
fn get<'a>(map: &'a Term, key: &str) -> &'a Term {
    static UNDEFINED: std::sync::OnceLock<Term> = std::sync::OnceLock::new();
    map.map_get(&Term::atom(key))
        .unwrap_or_else(|| UNDEFINED.get_or_init(|| Term::atom("undefined")))
}

/// Text of a term as strings: a binary or a printable charlist.
fn as_text(t: &Term) -> Option<String> {
    match t {
        Term::Binary(b) => std::str::from_utf8(b).ok().map(str::to_owned),
        Term::List(items) if !items.is_empty() => t
            .as_charlist()
            .filter(|s| s.chars().all(|c| !c.is_control() || "\n\r\t".contains(c))),
        _ => None,
    }
}

/// A cell of a table: text as it is, `undefined` as `-`, atoms and numbers bare, lists
/// comma-separated, maps as `k=v` pairs, anything else in Erlang syntax.
fn show(t: &Term) -> String {
    if let Some(s) = as_text(t) {
        return s;
    }
    match t {
        Term::Atom(a) if a.as_str() == "undefined" => "-".into(),
        Term::Atom(a) => a.as_str().to_owned(),
        Term::Int(i) => i.to_string(),
        Term::List(items) => items.iter().map(show).collect::<Vec<_>>().join(", "),
        Term::Map(entries) => entries
            .iter()
            .map(|(k, v)| format!("{}={}", show(k), show(v)))
            .collect::<Vec<_>>()
            .join(" "),
        _ => t.to_string(),
    }
}

/// A term as JSON: maps are objects (keys as text), lists and tuples arrays, binaries
/// and printable charlists strings (a binary that is not UTF-8: an array of its
/// bytes), atoms strings but for true and false (booleans) and undefined (null),
/// numbers numbers.
fn json(t: &Term) -> Value {
    if let Some(s) = as_text(t) {
        return Value::String(s);
    }
    match t {
        Term::Int(i) => Value::from(*i),
        Term::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Term::Atom(a) => match a.as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            "undefined" => Value::Null,
            s => Value::String(s.to_owned()),
        },
        Term::Binary(b) => Value::Array(b.iter().map(|&x| Value::from(x)).collect()),
        Term::List(items) | Term::Tuple(items) => Value::Array(items.iter().map(json).collect()),
        Term::Map(entries) => Value::Object(
            entries
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        Term::Atom(a) => a.as_str().to_owned(),
                        _ => as_text(k).unwrap_or_else(|| k.to_string()),
                    };
                    (key, json(v))
                })
                .collect(),
        ),
    }
}

/// One `stats` answer: the series `name{labels}` with their values.
struct Sample {
    at: Instant,
    series: Vec<(String, String, f64)>,
}

impl Sample {
    async fn take(ch: &Channel) -> anyhow::Result<Sample> {
        let answer = ch.rpc(Term::atom("stats")).await?;
        let entries = answer
            .as_map()
            .with_context(|| format!("unexpected stats answer {answer}"))?;
        let series = entries
            .iter()
            .filter_map(|(k, v)| {
                let key = as_text(k)?;
                let value = match v {
                    Term::Int(i) => *i as f64,
                    Term::Float(f) => *f,
                    _ => return None,
                };
                let (name, labels) = match key.split_once('{') {
                    Some((n, l)) => (n.to_owned(), l.trim_end_matches('}').to_owned()),
                    None => (key, String::new()),
                };
                Some((name, labels, value))
            })
            .collect();
        Ok(Sample {
            at: Instant::now(),
            series,
        })
    }

    /// The sum of the series `name` across labels, of those whose labels `keep`.
    fn sum(&self, name: &str, keep: impl Fn(&str) -> bool) -> f64 {
        self.series
            .iter()
            .filter(|(n, l, _)| n == name && keep(l))
            .map(|s| s.2)
            .sum()
    }

    /// Connections, logins, refusals, calls (but those to `own`), bytes in, bytes out.
    fn figures(&self, own: &str) -> [f64; 6] {
        let own = format!("service=\"{own}\"");
        [
            self.sum("lib_chan_connections", |_| true),
            self.sum("lib_chan_auth_total", |l| l.contains("result=\"ok\"")),
            self.sum("lib_chan_auth_total", |l| l.contains("result=\"failed\"")),
            self.sum("lib_chan_calls_total", |l| l != own),
            self.sum("lib_chan_bytes_received_total", |_| true),
            self.sum("lib_chan_bytes_sent_total", |_| true),
        ]
    }
}

/// Bytes per second, short: 512B, 1.5K, 2.0M, 3.1G.
fn bytes_rate(b: f64) -> String {
    match b {
        b if b < 1024.0 => format!("{b:.0}B"),
        b if b < 1024.0 * 1024.0 => format!("{:.1}K", b / 1024.0),
        b if b < 1024.0 * 1024.0 * 1024.0 => format!("{:.1}M", b / (1024.0 * 1024.0)),
        b => format!("{:.1}G", b / (1024.0 * 1024.0 * 1024.0)),
    }
}

/// The time of day, UTC, as HH:MM:SS.
fn clock() -> String {
    let s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

const TOP_HEADER: [&str; 7] = [
    "TIME(UTC)",
    "CONNS",
    "LOGINS/S",
    "REFUSALS/S",
    "CALLS/S",
    "IN/S",
    "OUT/S",
];

/// One line of `top`, in fixed columns (lines are printed as they come).
fn top_line(cells: &[String]) -> String {
    let mut line = format!("{:<9}", cells[0]);
    for c in &cells[1..] {
        line.push_str(&format!(" {c:>10}"));
    }
    line
}

/// `top`: a line per interval from successive `stats`, a header every 20 lines; until
/// Ctrl-C, or `count` lines.
async fn top(
    ch: &Channel,
    own: &str,
    interval: f64,
    count: Option<u64>,
    json_lines: bool,
) -> anyhow::Result<bool> {
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(interval));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut prev = Sample::take(ch).await?;
    let mut out = std::io::stdout();
    let mut printed = 0u64;
    loop {
        let next = tokio::select! {
            _ = &mut ctrl_c => break,
            s = async { ticker.tick().await; Sample::take(ch).await } => s?,
        };
        let secs = next.at.duration_since(prev.at).as_secs_f64().max(1e-6);
        let (was, now) = (prev.figures(own), next.figures(own));
        let rate = |i: usize| (now[i] - was[i]).max(0.0) / secs;
        let time = clock();
        let written = if json_lines {
            let line = serde_json::json!({
                "time": time,
                "connections": now[0],
                "logins_per_s": rate(1),
                "refusals_per_s": rate(2),
                "calls_per_s": rate(3),
                "bytes_in_per_s": rate(4),
                "bytes_out_per_s": rate(5),
            });
            writeln!(out, "{line}")
        } else {
            let header = if printed.is_multiple_of(20) {
                let h = TOP_HEADER.map(str::to_owned);
                format!("{}\n", top_line(&h))
            } else {
                String::new()
            };
            let cells = [
                time,
                format!("{}", now[0]),
                format!("{:.1}", rate(1)),
                format!("{:.1}", rate(2)),
                format!("{:.1}", rate(3)),
                bytes_rate(rate(4)),
                bytes_rate(rate(5)),
            ];
            writeln!(out, "{header}{}", top_line(&cells))
        };
        // A closed pipe (`top | head`) ends it quietly.
        if written.and_then(|()| out.flush()).is_err() {
            break;
        }
        printed += 1;
        prev = next;
        if count.is_some_and(|n| printed >= n) {
            break;
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Term {
        lib_chan_protocol::parse(s).unwrap()
    }

    #[test]
    fn terms_become_json_mechanically() {
        let t = p(
            r#"#{a => [1, 2.5, <<"x">>, "hi"], b => {ok, true, false, undefined},
                      <<"k{l=\"v\"}">> => [], 7 => foo}"#,
        );
        assert_eq!(
            json(&t),
            serde_json::json!({
                "a": [1, 2.5, "x", "hi"],
                "b": ["ok", true, false, null],
                "k{l=\"v\"}": [],
                "7": "foo",
            })
        );
    }

    #[test]
    fn tables_align_and_numbers_go_right() {
        let mut t = Table::new(&["NAME", "N"]);
        t.row(vec!["a".into(), "1".into()]);
        t.row(vec!["longer".into(), "100".into()]);
        assert_eq!(t.render(), "NAME      N\na         1\nlonger  100\n");
        assert_eq!(Table::new(&["X"]).or_none("none"), "none\n");
    }

    #[test]
    fn reload_summaries_say_what_changed() {
        let ok = p(
            r#"{ok, #{added => [<<"extra">>], removed => [], replaced => [],
                      password_changed => [], kept => [<<"admin">>, <<"nameServer">>],
                      needs_restart => [], users_revoked => 0}}"#,
        );
        assert_eq!(
            reload_text(&ok).unwrap(),
            "added: extra\nkept: admin, nameServer\n"
        );
        let same = p(r#"{ok, #{added => [], kept => [<<"admin">>], users_revoked => 0}}"#);
        assert_eq!(reload_text(&same).unwrap(), "no change\nkept: admin\n");
    }
}

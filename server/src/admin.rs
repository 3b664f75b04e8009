//! `mod_admin`: the operator's console, a service like any other (so only the named users
//! whose `services` list it can start it, over the same TLS port), answering calls about
//! the live server: who is connected, who was refused, kick, unblock, reload, counters.
//!
//! | call | answer |
//! |---|---|
//! | `info` | `#{version, uptime_s, config, listen, services => [#{name, handler, connections, status}], users, sessions, limits => #{..}, tls => #{subject, not_after, client_ca}}` |
//! | `connections`, `{connections, #{service, user, peer}}` | `[#{id, peer, service, user, credential, tls, since, calls, bytes_in, bytes_out, in_flight, session}]` (filters optional; `peer` matches a prefix of `ADDR:PORT`) |
//! | `{kick, Id}` | `true`, or `false` when no such connection is open |
//! | `{kick_user, Name}` | the number of connections closed |
//! | `denials` | `[#{source, user, service, reason, count, first, last}]`, most recent first |
//! | `penalties` | `[#{source, remaining_ms, refusing}]` |
//! | `{unblock, Source}` | `true` when the source had a penalty (lifted now), else `false` |
//! | `reload` | `{ok, #{added, removed, replaced, password_changed, kept, needs_restart, users_revoked}}` or `{error, Message}` |
//! | `stats` | `#{Series => Value}`: every counter and gauge of the metrics endpoint |
//!
//! Kicked connections end with `{error, revoked}`. Times are RFC 3339 binaries (UTC).
//! Anything else is `{error, Ref, {bad_request, X}}`. A `mod_admin` service may not have
//! a service password: a shared secret would hand the console to whoever holds it.

use std::net::IpAddr;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use lib_chan_protocol::Term;

use crate::config::{Config, ServiceConfig};
use crate::connections::ConnectionInfo;
use crate::handler::{Event, HandlerFuture, Service, Session};
use crate::registry::Registry;
use crate::reload::Live;
use crate::users::format_time;

/// What the console reaches the server through; one per server, across reloads.
pub(crate) struct AdminHub {
    live: OnceLock<Weak<Live>>,
    listen: OnceLock<SocketAddr>,
    registry: Registry,
    started: Instant,
}

impl AdminHub {
    pub(crate) fn new(registry: &Registry) -> Arc<AdminHub> {
        Arc::new(AdminHub {
            live: OnceLock::new(),
            listen: OnceLock::new(),
            registry: registry.clone(),
            started: Instant::now(),
        })
    }

    /// Connects the hub to the server once it exists.
    pub(crate) fn attach(&self, live: &Arc<Live>, listen: SocketAddr) {
        let _ = self.live.set(Arc::downgrade(live));
        let _ = self.listen.set(listen);
    }

    fn live(&self) -> Option<Arc<Live>> {
        self.live.get().and_then(Weak::upgrade)
    }
}

/// The config check of a `mod_admin` entry.
pub(crate) fn check(config: &ServiceConfig) -> Result<(), String> {
    if config.password_hash.is_some() {
        return Err(password_refused());
    }
    if config.options.store.is_some() || !config.options.allow.is_empty() {
        return Err("mod_admin takes no store or allow keys".into());
    }
    Ok(())
}

/// Why a `mod_admin` service may not have a password.
pub(crate) fn password_refused() -> String {
    "mod_admin may not have a service password: a shared password would give the \
     operator's console to everyone who holds it; remove `password` and list the service \
     in the `services` of the [[user]] entries of the operators"
        .into()
}

/// The console service.
pub(crate) struct AdminService {
    hub: Arc<AdminHub>,
}

impl AdminService {
    pub(crate) fn service(hub: &Arc<AdminHub>) -> Arc<dyn Service> {
        Arc::new(AdminService {
            hub: Arc::clone(hub),
        })
    }
}

impl Service for AdminService {
    fn start(self: Arc<Self>, mut session: Session) -> HandlerFuture {
        Box::pin(async move {
            let operator = session.identity().user().unwrap_or("-").to_owned();
            while let Some(event) = session.next_event().await {
                match event {
                    Event::Call(call) => {
                        let Some(live) = self.hub.live() else {
                            call.fail(Term::atom("shutdown"));
                            continue;
                        };
                        match answer(&self.hub, &live, call.request(), &operator).await {
                            Some(reply) => call.reply(reply),
                            None => call.bad_request(),
                        }
                    }
                    Event::Send(_) => {}
                    Event::Closed => break,
                }
            }
        })
    }
}

fn bin(s: &str) -> Term {
    Term::binary(s.as_bytes())
}

fn entry(k: &str, v: Term) -> (Term, Term) {
    (Term::atom(k), v)
}

fn opt_bin(s: Option<&str>) -> Term {
    s.map_or(Term::atom("undefined"), bin)
}

fn int(n: u64) -> Term {
    Term::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

fn ms(d: Duration) -> Term {
    int(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Text from a term: a binary, a charlist or an atom.
fn text(t: &Term) -> Option<String> {
    t.as_binary()
        .and_then(|b| std::str::from_utf8(b).ok().map(str::to_owned))
        .or_else(|| t.as_charlist())
        .or_else(|| t.as_atom().map(str::to_owned))
}

/// The answer to one request; `None` when it is not one.
async fn answer(hub: &AdminHub, live: &Arc<Live>, request: &Term, operator: &str) -> Option<Term> {
    let state = live.load();
    if let Some(verb) = request.as_atom() {
        return match verb {
            "info" => Some(info(hub, live).await),
            "connections" => Some(connections(&state.connections.snapshot(), &Term::map([]))),
            "denials" => Some(denials(&state)),
            "penalties" => Some(penalties(&state)),
            "reload" => Some(reload(hub, live).await),
            "stats" => Some(stats(&state)),
            _ => None,
        };
    }
    let items = request.as_tuple()?;
    let (tag, args) = items.split_first()?;
    match (tag.as_atom()?, args) {
        ("connections", [filter]) if filter.as_map().is_some() => {
            Some(connections(&state.connections.snapshot(), filter))
        }
        ("kick", [id]) => {
            let id = u64::try_from(id.as_int()?).ok()?;
            let by = format!("kick by {operator}");
            Some(Term::atom(
                if state.connections.kick(|c| c.id == id, &by) > 0 {
                    "true"
                } else {
                    "false"
                },
            ))
        }
        ("kick_user", [name]) => {
            let name = text(name)?;
            let by = format!("kick_user by {operator}");
            let n = state
                .connections
                .kick(|c| c.user.as_deref() == Some(name.as_str()), &by);
            Some(int(n as u64))
        }
        ("unblock", [source]) => {
            let ip: IpAddr = text(source)?.parse().ok()?;
            Some(Term::atom(if state.admission.unblock(ip) {
                "true"
            } else {
                "false"
            }))
        }
        _ => None,
    }
}

async fn info(hub: &AdminHub, live: &Arc<Live>) -> Term {
    let state = live.load();
    let open = state.connections.snapshot();
    let mut names: Vec<&String> = state.services.keys().collect();
    names.sort();
    let mut services = Vec::new();
    for name in names {
        let entry_ = &state.services[name];
        let status = match entry_.service.status() {
            Some(f) => tokio::time::timeout(Duration::from_secs(2), f)
                .await
                .unwrap_or_else(|_| Term::atom("timeout")),
            None => Term::atom("undefined"),
        };
        services.push(Term::map([
            entry("name", bin(name)),
            entry("handler", bin(&entry_.config.handler)),
            entry(
                "connections",
                int(open.iter().filter(|c| &c.service == name).count() as u64),
            ),
            entry("status", status),
        ]));
    }
    let l = &state.limits;
    let limits = Term::map([
        entry("max_connections", int(l.max_connections as u64)),
        entry("max_frame", int(l.max_frame as u64)),
        entry("max_calls_in_flight", int(l.max_calls_in_flight as u64)),
        entry("handshake_timeout_ms", ms(l.handshake_timeout)),
        entry("idle_timeout_ms", l.idle_timeout.map_or(int(0), ms)),
        entry("max_password_checks", int(l.max_password_checks as u64)),
        entry("outbound_bytes", int(l.outbound_bytes as u64)),
    ]);
    let tls = Term::map([
        entry("subject", bin(&state.cert_subject)),
        entry(
            "not_after",
            state
                .cert_not_after
                .map_or(Term::atom("undefined"), |t| bin(&format_time(t))),
        ),
        entry(
            "client_ca",
            Term::atom(if state.client_ca.is_some() {
                "true"
            } else {
                "false"
            }),
        ),
    ]);
    let source = live.source();
    Term::map([
        entry("version", bin(env!("CARGO_PKG_VERSION"))),
        entry("uptime_s", int(hub.started.elapsed().as_secs())),
        entry(
            "config",
            if source.starts_with('<') {
                Term::atom("undefined")
            } else {
                bin(&source)
            },
        ),
        entry(
            "listen",
            opt_bin(hub.listen.get().map(|a| a.to_string()).as_deref()),
        ),
        entry("services", Term::list(services)),
        entry("users", int(state.users.len() as u64)),
        entry("sessions", int(state.sessions.len() as u64)),
        entry("limits", limits),
        entry("tls", tls),
    ])
}

/// The connections that `filter` (`#{service, user, peer}`, each optional) selects.
fn connections(open: &[ConnectionInfo], filter: &Term) -> Term {
    let want = |k: &str| filter.map_get(&Term::atom(k)).and_then(text);
    let (service, user, peer) = (want("service"), want("user"), want("peer"));
    Term::list(
        open.iter()
            .filter(|c| service.as_ref().is_none_or(|s| &c.service == s))
            .filter(|c| user.as_ref().is_none_or(|u| c.user.as_ref() == Some(u)))
            .filter(|c| {
                peer.as_ref()
                    .is_none_or(|p| c.peer.to_string().starts_with(p.as_str()))
            })
            .map(|c| {
                Term::map([
                    entry("id", int(c.id)),
                    entry("peer", bin(&c.peer.to_string())),
                    entry("service", bin(&c.service)),
                    entry("user", opt_bin(c.user.as_deref())),
                    entry("credential", Term::atom(c.credential.as_str())),
                    entry("tls", bin(c.tls)),
                    entry("since", bin(&format_time(c.since))),
                    entry("calls", int(c.calls)),
                    entry("bytes_in", int(c.bytes_in)),
                    entry("bytes_out", int(c.bytes_out)),
                    entry("in_flight", int(c.in_flight as u64)),
                    entry(
                        "session",
                        c.session
                            .map_or(Term::atom("undefined"), |s| bin(&s.to_string())),
                    ),
                ])
            })
            .collect::<Vec<_>>(),
    )
}

fn denials(state: &crate::server::ServerState) -> Term {
    Term::list(
        state
            .denials
            .snapshot()
            .into_iter()
            .map(|d| {
                Term::map([
                    entry("source", bin(&d.source.to_string())),
                    entry("user", opt_bin(d.user.as_deref())),
                    entry("service", bin(&d.service)),
                    entry("reason", Term::atom(d.reason.as_str())),
                    entry("count", int(d.count)),
                    entry("first", bin(&format_time(d.first))),
                    entry("last", bin(&format_time(d.last))),
                ])
            })
            .collect::<Vec<_>>(),
    )
}

fn penalties(state: &crate::server::ServerState) -> Term {
    Term::list(
        state
            .admission
            .penalties()
            .into_iter()
            .map(|p| {
                Term::map([
                    entry("source", bin(&p.source)),
                    entry("remaining_ms", ms(p.remaining)),
                    entry(
                        "refusing",
                        Term::atom(if p.refusing { "true" } else { "false" }),
                    ),
                ])
            })
            .collect::<Vec<_>>(),
    )
}

/// What SIGHUP does: the config file read again, checked whole and swapped in.
async fn reload(hub: &AdminHub, live: &Arc<Live>) -> Term {
    let source = live.source();
    if source.starts_with('<') {
        return Term::tuple([
            Term::atom("error"),
            bin("this server runs a config built in code or the built-in default: there is no file to reload"),
        ]);
    }
    let live = Arc::clone(live);
    let registry = hub.registry.clone();
    // Reading the file and making services blocks (files opened, a Redis reached).
    let result = tokio::task::spawn_blocking(move || {
        let config =
            Config::load(std::path::Path::new(&source), &registry).map_err(|e| e.to_string())?;
        crate::reload::Reloader { live }
            .reload(config, &registry)
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(format!("reload failed: {e}")));
    match result {
        Ok(s) => {
            let names = |v: &[String]| Term::list(v.iter().map(|n| bin(n)).collect::<Vec<_>>());
            Term::tuple([
                Term::atom("ok"),
                Term::map([
                    entry("added", names(&s.added)),
                    entry("removed", names(&s.removed)),
                    entry("replaced", names(&s.replaced)),
                    entry("password_changed", names(&s.password_changed)),
                    entry("kept", names(&s.kept)),
                    entry("needs_restart", names(&s.needs_restart)),
                    entry("users_revoked", int(s.users_revoked as u64)),
                ]),
            ])
        }
        Err(message) => {
            tracing::warn!(error = %message, "reload from the console refused; the running config stays in force");
            Term::tuple([Term::atom("error"), bin(&message)])
        }
    }
}

/// The counters and gauges of the metrics endpoint, by series (histogram buckets left
/// out).
fn stats(state: &crate::server::ServerState) -> Term {
    let text = state.metrics.render(&state.stats.snapshot());
    Term::map(
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.contains("_bucket{"))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let value = value.parse::<f64>().ok()?;
                let v = if value.fract() == 0.0 && value.abs() < 9.0e15 {
                    Term::Int(value as i64)
                } else {
                    Term::Float(value)
                };
                Some((bin(series), v))
            })
            .collect::<Vec<_>>(),
    )
}

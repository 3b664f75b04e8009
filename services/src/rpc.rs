//! `mod_rpc`: Erlang's `rpc:call(Node, Mod, Func, Args)` without the trust.
//!
//! Distributed Erlang lets any connected node run any function; this handler runs only
//! the functions its `[[service]]` entry lists in `allow`, and only from a fixed table
//! of functions that services export here ([`EXPORTED`]):
//!
//! | function        | does                                                          |
//! |-----------------|---------------------------------------------------------------|
//! | `kvs:store/2`   | `kvs:store(K, V)`: stores in the name space of the name-server service that `args` names; `true` |
//! | `kvs:lookup/1`  | `kvs:lookup(K)`: `{ok, V}` or `undefined`, from that name space |
//! | `erlang:node/0` | this server's node name, `'lib_chan@HOST'` (see [`node_name`]) |
//!
//! A call `{apply, Mod, Func, Args}` (`Mod` and `Func` atoms, `Args` a proper list) is
//! answered with the function's result, as `rpc:call` returns it. A function that is not
//! allowed, not exported, or called with the wrong number of arguments runs nothing and
//! answers `{badrpc, {'EXIT', {undef, [{Mod, Func, Args, []}]}}}`, as Erlang answers a
//! call to a function that does not exist. A function that fails answers the same shape
//! with another reason: `noproc` (no name server by that name is running),
//! `store_unavailable` (its store failed) or `badarg` (its store cannot hold the term).
//! A send `{apply, ...}` is `rpc:cast`: the function runs (if allowed) and nothing is
//! sent back. Any other request is a `{bad_request, X}` call error.
//!
//! ```toml
//! [[service]]
//! name = "rpc"
//! password = "$argon2id$..."
//! handler = "mod_rpc"
//! args = "nameServer"                    # the name-server service kvs acts on
//! allow = ["kvs:store/2", "kvs:lookup/1", "erlang:node/0"]
//! ```
//!
//! The `kvs` functions share the name space that clients of that name-server service
//! see, through its public `store` and `lookup` only. `[[service]]` entries come in any
//! order, so the service name is resolved at call time through [`NameSpaces`], which the
//! name server's factory fills.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, Weak};

use lib_chan_protocol::message::snippet;
use lib_chan_protocol::{Atom, Term};
use lib_chan_server::{Event, HandlerFuture, Service, ServiceConfig, Session};

use crate::name_server::{NameSpace, StoreError};

/// What an exported function does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Function {
    ErlangNode,
    KvsLookup,
    KvsStore,
}

/// One function `mod_rpc` can run: `module:function/arity` and its code.
struct Export {
    module: &'static str,
    function: &'static str,
    arity: usize,
    code: Function,
}

impl fmt::Debug for Export {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.module, self.function, self.arity)
    }
}

/// Every function an `allow` list may name: the registry services export to `mod_rpc`.
/// Adding one is a row here and in [`EXPORTED`], a [`Function`] and its code in
/// [`Rpc::run`], and a line in the table of the module docs.
static EXPORTS: &[Export] = &[
    Export {
        module: "erlang",
        function: "node",
        arity: 0,
        code: Function::ErlangNode,
    },
    Export {
        module: "kvs",
        function: "lookup",
        arity: 1,
        code: Function::KvsLookup,
    },
    Export {
        module: "kvs",
        function: "store",
        arity: 2,
        code: Function::KvsStore,
    },
];

/// The exported functions as `module:function/arity`, sorted: what `allow` may name.
pub const EXPORTED: &[&str] = &["erlang:node/0", "kvs:lookup/1", "kvs:store/2"];

fn find_export(module: &str, function: &str, arity: usize) -> Option<&'static Export> {
    EXPORTS
        .iter()
        .find(|e| e.module == module && e.function == function && e.arity == arity)
}

/// `{badrpc, {'EXIT', {Reason, [{Mod, Func, Args, []}]}}}`: how Erlang's `rpc:call`
/// reports a call that exited with `Reason`, e.g. `undef` for a function that does not
/// exist (and, here, for one not allowed).
pub fn badrpc(reason: &str, module: &Term, function: &Term, args: &[Term]) -> Term {
    let frame = Term::tuple([
        module.clone(),
        function.clone(),
        Term::list(args.iter().cloned()),
        Term::nil(),
    ]);
    let exit = Term::tuple([Term::atom(reason), Term::list([frame])]);
    Term::tuple([
        Term::atom("badrpc"),
        Term::tuple([Term::atom("EXIT"), exit]),
    ])
}

/// One `allow` entry, `module:function/arity`, e.g. `kvs:store/2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mfa {
    /// The module, an unquoted Erlang atom.
    pub module: String,
    /// The function, an unquoted Erlang atom.
    pub function: String,
    /// The number of arguments, 0 to 255.
    pub arity: usize,
}

impl Mfa {
    /// Parses `module:function/arity`, where module and function are unquoted atoms
    /// (a lowercase letter, then letters, digits, `_` or `@`) and arity is 0 to 255.
    ///
    /// # Errors
    /// A message quoting `text` and showing the expected form.
    pub fn parse(text: &str) -> Result<Mfa, String> {
        let bad =
            || format!("`{text}` is not of the form module:function/arity, e.g. \"kvs:store/2\"");
        let (module, rest) = text.split_once(':').ok_or_else(bad)?;
        let (function, arity) = rest.split_once('/').ok_or_else(bad)?;
        if !is_plain_atom(module) || !is_plain_atom(function) {
            return Err(bad());
        }
        if arity.is_empty() || !arity.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let arity = arity
            .parse::<usize>()
            .ok()
            .filter(|&a| a <= 255)
            .ok_or_else(|| format!("`{text}`: an arity is at most 255"))?;
        Ok(Mfa {
            module: module.to_owned(),
            function: function.to_owned(),
            arity,
        })
    }
}

impl fmt::Display for Mfa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.module, self.function, self.arity)
    }
}

/// An atom Erlang writes without quotes: `[a-z][A-Za-z0-9_@]*`.
fn is_plain_atom(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '@')
}

/// The functions one `[[service]]` entry allows, each an exported one.
#[derive(Debug, Clone)]
pub struct AllowList {
    allowed: Vec<&'static Export>,
}

impl AllowList {
    /// Parses an `allow` list: every entry `module:function/arity`, naming a function in
    /// [`EXPORTED`]. An empty list is refused: such a service could run nothing.
    ///
    /// # Errors
    /// A message naming the bad entry and what is wrong with it.
    pub fn parse(entries: &[String]) -> Result<AllowList, String> {
        if entries.is_empty() {
            return Err(format!(
                "mod_rpc needs an `allow` list naming the functions it may run, from: {}",
                EXPORTED.join(", ")
            ));
        }
        let mut allowed = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let mfa = Mfa::parse(entry).map_err(|m| format!("allow[{i}]: {m}"))?;
            let export = find_export(&mfa.module, &mfa.function, mfa.arity).ok_or_else(|| {
                format!(
                    "allow[{i}]: `{mfa}` is not a function mod_rpc can run; it can run: {}",
                    EXPORTED.join(", ")
                )
            })?;
            allowed.push(export);
        }
        Ok(AllowList { allowed })
    }

    /// True when `module:function/arity` is allowed.
    pub fn permits(&self, module: &str, function: &str, arity: usize) -> bool {
        self.find(module, function, arity).is_some()
    }

    fn find(&self, module: &str, function: &str, arity: usize) -> Option<&'static Export> {
        self.allowed
            .iter()
            .copied()
            .find(|e| e.module == module && e.function == function && e.arity == arity)
    }

    /// True when some allowed function is in module `module`.
    fn uses_module(&self, module: &str) -> bool {
        self.allowed.iter().any(|e| e.module == module)
    }
}

/// The name spaces of the name-server services, by service name: the name server's
/// factory [`publish`](NameSpaces::publish)es each one it makes, and `mod_rpc` looks its
/// one up at call time. Cheap to clone; clones share the map.
///
/// It holds weak references, so a name space lives only as long as its service. A name
/// keeps every space published under it that is still alive, and answers the newest: a
/// config reload that makes a name server anew and is then refused (another entry is
/// bad) drops the new one, and the running one answers again.
#[derive(Clone, Default)]
pub struct NameSpaces {
    spaces: Arc<Mutex<HashMap<String, Vec<Weak<NameSpace>>>>>,
}

impl fmt::Debug for NameSpaces {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.lock().keys().cloned().collect();
        f.debug_set().entries(names).finish()
    }
}

impl NameSpaces {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Weak<NameSpace>>>> {
        // Every change is one map operation, so a panic elsewhere cannot leave it torn.
        self.spaces.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `space` the name space of `service`, in place of earlier ones while it
    /// lives (as when a server is started again with the same registry, or a reload
    /// makes the service anew).
    pub fn publish(&self, service: &str, space: &Arc<NameSpace>) {
        let mut spaces = self.lock();
        let published = spaces.entry(service.to_owned()).or_default();
        published.retain(|w| w.strong_count() > 0);
        published.push(Arc::downgrade(space));
    }

    /// The name space of `service`, if a name server by that name is running: the one
    /// published last of those still alive.
    pub fn get(&self, service: &str) -> Option<Arc<NameSpace>> {
        self.lock()
            .get(service)?
            .iter()
            .rev()
            .find_map(Weak::upgrade)
    }
}

/// The node name `erlang:node/0` answers: `'lib_chan@HOST'`, HOST being this machine's
/// host name up to its first dot, as `erl -sname lib_chan` would name the node. The host
/// name is read from `/proc/sys/kernel/hostname`, else `/etc/hostname`; `localhost` when
/// neither gives one.
pub fn node_name() -> Term {
    let host = ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().split('.').next().unwrap_or("").to_owned())
        .find(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    Atom::new(&format!("lib_chan@{host}"))
        .map(Term::Atom)
        .unwrap_or_else(|| Term::atom("lib_chan@localhost"))
}

/// The service name in `args`: an atom, a charlist or a UTF-8 binary.
fn service_name(args: &Term) -> Option<String> {
    let name = match args {
        Term::Atom(a) => a.as_str().to_owned(),
        Term::Binary(b) => std::str::from_utf8(b).ok()?.to_owned(),
        other => other.as_charlist()?,
    };
    (!name.is_empty()).then_some(name)
}

/// Checks a `mod_rpc` entry without making anything: the `allow` list, no `store`, and
/// `args` naming a service when a `kvs` function is allowed.
///
/// # Errors
/// What is wrong, for the config error at the entry's line.
pub fn check(config: &ServiceConfig) -> Result<(), String> {
    parse_config(config).map(|_| ())
}

fn parse_config(config: &ServiceConfig) -> Result<(AllowList, Option<String>), String> {
    if config.options.store.is_some() {
        return Err("mod_rpc takes no `store`; the name server that `args` names has it".into());
    }
    let allow = AllowList::parse(&config.options.allow)?;
    let kvs_service = service_name(&config.args);
    if allow.uses_module("kvs") && kvs_service.is_none() {
        return Err(format!(
            "mod_rpc allows kvs functions, so `args` must name the name-server service \
             they act on, e.g. args = \"nameServer\" (got {})",
            snippet(&config.args, 40)
        ));
    }
    Ok((allow, kvs_service))
}

/// The `mod_rpc` service for one `[[service]]` entry.
#[derive(Debug)]
pub struct Rpc {
    allow: AllowList,
    /// The name-server service `kvs` acts on (`args`).
    kvs_service: Option<String>,
    spaces: NameSpaces,
    /// What `erlang:node/0` answers.
    node: Term,
}

impl Rpc {
    /// Makes the service for `config`, resolving `kvs` through `spaces`.
    ///
    /// # Errors
    /// As [`check`].
    pub fn new(config: &ServiceConfig, spaces: NameSpaces) -> Result<Rpc, String> {
        let (allow, kvs_service) = parse_config(config)?;
        Ok(Rpc {
            allow,
            kvs_service,
            spaces,
            node: node_name(),
        })
    }

    /// Answers `{apply, Mod, Func, Args}` as `rpc:call` would, running the function only
    /// if it is allowed; `None` when `request` is not of that form.
    pub async fn apply(&self, request: &Term) -> Option<Term> {
        self.answer(request).await.map(|(answer, _)| answer)
    }

    /// [`apply`](Rpc::apply), and whether the function was refused (not allowed).
    async fn answer(&self, request: &Term) -> Option<(Term, bool)> {
        let [tag, module, function, args] = request.as_tuple()? else {
            return None;
        };
        if !tag.is_atom("apply") {
            return None;
        }
        let (m, f, a) = (module.as_atom()?, function.as_atom()?, args.as_list()?);
        let Some(export) = self.allow.find(m, f, a.len()) else {
            return Some((badrpc("undef", module, function, a), true));
        };
        Some(match self.run(export.code, a).await {
            Ok(result) => (result, false),
            Err(reason) => (badrpc(reason, module, function, a), false),
        })
    }

    /// Runs an allowed function on its `arity` arguments; `Err` is the exit reason.
    async fn run(&self, code: Function, args: &[Term]) -> Result<Term, &'static str> {
        // The name space is looked up on each call: its service may start after this one.
        let kvs = || {
            self.kvs_service
                .as_deref()
                .and_then(|name| self.spaces.get(name))
                .ok_or("noproc")
        };
        let outcome = match code {
            Function::ErlangNode => return Ok(self.node.clone()),
            Function::KvsStore => kvs()?
                .store(args[0].clone(), args[1].clone(), None)
                .await
                .map(|()| Term::atom("true")),
            Function::KvsLookup => kvs()?.lookup(&args[0]).await.map(|v| match v {
                Some(v) => Term::tuple([Term::atom("ok"), v]),
                None => Term::atom("undefined"),
            }),
        };
        outcome.map_err(|e| {
            tracing::warn!(service = ?self.kvs_service, error = %e, "mod_rpc: kvs failed");
            match e {
                StoreError::BadTerm(_) => "badarg",
                _ => "store_unavailable",
            }
        })
    }
}

impl Service for Rpc {
    fn start(self: Arc<Self>, mut session: Session) -> HandlerFuture {
        Box::pin(async move {
            while let Some(event) = session.next_event().await {
                let (request, call) = match event {
                    Event::Call(call) => (call.request().clone(), Some(call)),
                    Event::Send(x) => (x, None),
                    Event::Closed => break,
                };
                let answer = self.answer(&request).await;
                if let Some((_, true)) = answer {
                    tracing::info!(peer = %session.middle_man().peer(), request = %snippet(&request, 80), "mod_rpc refused a function it does not allow");
                }
                match (answer.map(|(answer, _)| answer), call) {
                    (Some(answer), Some(call)) => call.reply(answer),
                    (None, Some(call)) => call.bad_request(),
                    // A send is rpc:cast: the result goes nowhere.
                    (Some(_), None) => {}
                    (None, None) => {
                        tracing::info!(peer = %session.middle_man().peer(), request = %snippet(&request, 80), "mod_rpc ignored an unknown send");
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lib_chan_protocol::{parse, term};

    fn allow(entries: &[&str]) -> Result<AllowList, String> {
        AllowList::parse(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn allow_entries_parse_as_module_function_arity() {
        assert_eq!(
            Mfa::parse("kvs:store/2").unwrap(),
            Mfa {
                module: "kvs".into(),
                function: "store".into(),
                arity: 2
            }
        );
        assert_eq!(
            Mfa::parse("erlang:node/0").unwrap().to_string(),
            "erlang:node/0"
        );
        assert_eq!(Mfa::parse("my_mod@x:f2/255").unwrap().arity, 255);
        for bad in [
            "kvs:store",
            "kvs/2",
            "kvs:store/",
            "kvs:store/x",
            "kvs:store/-1",
            "kvs:store/+2",
            "Kvs:store/2",
            ":store/2",
            "kvs:/2",
            " kvs:store/2",
            "kvs:store/2 ",
            "'kvs':store/2",
            "kvs:store:x/2",
            "",
        ] {
            let e = Mfa::parse(bad).unwrap_err();
            assert!(e.contains("module:function/arity"), "{bad}: {e}");
        }
        assert!(Mfa::parse("kvs:store/256")
            .unwrap_err()
            .contains("at most 255"));
        assert!(Mfa::parse("kvs:store/99999999999999999999999").is_err());
    }

    #[test]
    fn allow_lists_name_only_exported_functions() {
        let a = allow(&["kvs:store/2", "erlang:node/0"]).unwrap();
        assert!(a.permits("kvs", "store", 2));
        assert!(a.permits("erlang", "node", 0));
        assert!(!a.permits("kvs", "store", 1));
        assert!(!a.permits("kvs", "lookup", 1));
        assert!(!a.permits("os", "cmd", 1));

        let e = allow(&["kvs:store/2", "os:cmd/1"]).unwrap_err();
        assert!(
            e.starts_with("allow[1]: `os:cmd/1` is not a function mod_rpc can run"),
            "{e}"
        );
        assert!(e.contains("kvs:store/2"), "{e}");
        let e = allow(&["kvs:store/3"]).unwrap_err();
        assert!(e.contains("allow[0]: `kvs:store/3`"), "{e}");
        let e = allow(&["kvs.store/2"]).unwrap_err();
        assert!(
            e.contains("allow[0]: `kvs.store/2` is not of the form"),
            "{e}"
        );
        assert!(allow(&[]).unwrap_err().contains("needs an `allow` list"));
        // EXPORTED lists exactly the table, sorted.
        let table: Vec<String> = EXPORTS.iter().map(|e| format!("{e:?}")).collect();
        assert_eq!(table, EXPORTED);
        assert!(EXPORTED.iter().all(|e| allow(&[e]).is_ok()));
    }

    fn config(args: &str, allow: &[&str]) -> ServiceConfig {
        let mut c = ServiceConfig::new("rpc", "unused", "mod_rpc", parse(args).unwrap());
        c.options.allow = allow.iter().map(|s| s.to_string()).collect();
        c
    }

    #[test]
    fn the_check_wants_a_service_name_for_kvs_and_no_store() {
        assert!(check(&config("nameServer", &["kvs:store/2"])).is_ok());
        assert!(check(&config("<<\"nameServer\">>", &["kvs:lookup/1"])).is_ok());
        assert!(check(&config("\"nameServer\"", &["kvs:lookup/1"])).is_ok());
        let e = check(&config("[]", &["kvs:lookup/1"])).unwrap_err();
        assert!(e.contains("args = \"nameServer\""), "{e}");
        assert!(check(&config("{a, b}", &["kvs:lookup/1"])).is_err());
        // erlang:node/0 alone needs no name space.
        assert!(check(&config("[]", &["erlang:node/0"])).is_ok());
        let mut c = config("nameServer", &["kvs:store/2"]);
        c.options.store = Some("memory".into());
        assert!(check(&c).unwrap_err().contains("takes no `store`"));
    }

    fn rpc(allow: &[&str]) -> (Rpc, Arc<NameSpace>, NameSpaces) {
        let spaces = NameSpaces::default();
        let space = Arc::new(NameSpace::default());
        spaces.publish("nameServer", &space);
        let rpc = Rpc::new(&config("nameServer", allow), spaces.clone()).unwrap();
        (rpc, space, spaces)
    }

    async fn apply(rpc: &Rpc, request: &str) -> Option<String> {
        rpc.apply(&parse(request).unwrap())
            .await
            .map(|t| t.to_string())
    }

    async fn lookup(space: &NameSpace, key: Term) -> Option<Term> {
        space.lookup(&key).await.unwrap()
    }

    #[tokio::test]
    async fn allowed_functions_act_on_the_named_name_space() {
        let (rpc, space, _spaces) = rpc(&["kvs:store/2", "kvs:lookup/1", "erlang:node/0"]);
        let store = apply(&rpc, "{apply, kvs, store, [weather, fine]}").await;
        assert_eq!(store.unwrap(), "true");
        assert_eq!(lookup(&space, term!(weather)).await, Some(term!(fine)));
        space
            .store(term!(joe), term!("writing a book"), None)
            .await
            .unwrap();
        let found = apply(&rpc, "{apply, kvs, lookup, [joe]}").await;
        assert_eq!(found.unwrap(), "{ok,\"writing a book\"}");
        let missing = apply(&rpc, "{apply, kvs, lookup, [jim]}").await;
        assert_eq!(missing.unwrap(), "undefined");
        let node = rpc
            .apply(&parse("{apply, erlang, node, []}").unwrap())
            .await;
        let node = node.unwrap();
        assert!(node.as_atom().unwrap().starts_with("lib_chan@"), "{node}");
        assert!(node.as_atom().unwrap().len() > "lib_chan@".len(), "{node}");
    }

    #[tokio::test]
    async fn anything_not_allowed_is_undef_and_runs_nothing() {
        let (rpc, space, _spaces) = rpc(&["kvs:lookup/1"]);
        assert_eq!(
            apply(&rpc, "{apply, kvs, store, [weather, fine]}")
                .await
                .unwrap(),
            "{badrpc,{'EXIT',{undef,[{kvs,store,[weather,fine],[]}]}}}"
        );
        assert_eq!(lookup(&space, term!(weather)).await, None);
        assert_eq!(
            apply(&rpc, "{apply, os, cmd, [\"rm -rf /\"]}")
                .await
                .unwrap(),
            "{badrpc,{'EXIT',{undef,[{os,cmd,[\"rm -rf /\"],[]}]}}}"
        );
        // Wrong arity is another function, as in Erlang.
        assert_eq!(
            apply(&rpc, "{apply, kvs, lookup, [a, b]}").await.unwrap(),
            "{badrpc,{'EXIT',{undef,[{kvs,lookup,[a,b],[]}]}}}"
        );
        let node = rpc
            .answer(&parse("{apply, erlang, node, []}").unwrap())
            .await;
        assert_eq!(
            node.map(|(t, refused)| (t.to_string(), refused)),
            Some((
                "{badrpc,{'EXIT',{undef,[{erlang,node,[],[]}]}}}".into(),
                true
            ))
        );
        // Not an apply request at all.
        for other in [
            "{apply, kvs, lookup}",
            "{apply, \"kvs\", lookup, [a]}",
            "{apply, kvs, lookup, a}",
            "{call, kvs, lookup, [a]}",
            "apply",
        ] {
            assert_eq!(apply(&rpc, other).await, None, "{other}");
        }
    }

    #[tokio::test]
    async fn the_name_space_is_resolved_at_call_time() {
        let spaces = NameSpaces::default();
        let rpc = Rpc::new(&config("nameServer", &["kvs:store/2"]), spaces.clone()).unwrap();
        assert_eq!(
            apply(&rpc, "{apply, kvs, store, [k, v]}").await.unwrap(),
            "{badrpc,{'EXIT',{noproc,[{kvs,store,[k,v],[]}]}}}"
        );
        let space = Arc::new(NameSpace::default());
        spaces.publish("nameServer", &space);
        assert_eq!(
            apply(&rpc, "{apply, kvs, store, [k, v]}").await.unwrap(),
            "true"
        );
        assert_eq!(lookup(&space, term!(k)).await, Some(term!(v)));
        // The map does not keep a name space alive after its service is gone.
        drop(space);
        assert!(spaces.get("nameServer").is_none());
    }

    /// A reload that makes a name server anew and is refused drops the new one: the
    /// running one answers again. One that succeeds makes the new one answer.
    #[test]
    fn the_newest_live_name_space_answers() {
        let spaces = NameSpaces::default();
        let running = Arc::new(NameSpace::default());
        spaces.publish("nameServer", &running);
        let refused = Arc::new(NameSpace::default());
        spaces.publish("nameServer", &refused);
        assert!(Arc::ptr_eq(&spaces.get("nameServer").unwrap(), &refused));
        drop(refused);
        assert!(Arc::ptr_eq(&spaces.get("nameServer").unwrap(), &running));
        let replacement = Arc::new(NameSpace::default());
        spaces.publish("nameServer", &replacement);
        assert!(Arc::ptr_eq(
            &spaces.get("nameServer").unwrap(),
            &replacement
        ));
        assert_eq!(spaces.lock()["nameServer"].len(), 2, "dead ones are pruned");
        drop(running);
        assert!(Arc::ptr_eq(
            &spaces.get("nameServer").unwrap(),
            &replacement
        ));
    }
}

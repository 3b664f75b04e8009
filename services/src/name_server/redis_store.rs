//! `store = "redis://HOST:PORT/DB"` (or `rediss://` for TLS): the name space lives in
//! Redis, so several channel servers, on several machines, serve the same names.
//!
//! # Key layout
//! - each name is a hash at `lib_chan:name:SERVICE:` followed by the key's canonical ETF
//!   bytes (which begin with byte 131, so no other service's prefix can match: `:` is
//!   never followed by byte 131 in UTF-8 text). Field `v` holds the value's ETF bytes,
//!   field `r` the revision of its last change; field `o`, only for an owner-bound name,
//!   holds its owner, `INSTANCE:CONNECTION`, and the hash then has a TTL ([`OWNER_TTL`])
//!   that its server keeps refreshing;
//! - `lib_chan:meta:SERVICE` is a hash: `revision` (the name space's, raised by every
//!   change's script) and `floor` (the highest forgotten deletion);
//! - `lib_chan:tombs:SERVICE` is a sorted set of dated deletions: member the key's ETF
//!   bytes, score its deletion revision; at most [`MAX_TOMBSTONES`], the lowest popped
//!   first (raising `floor`);
//! - `names` is `SCAN MATCH lib_chan:name:SERVICE:\x83*`, the keys decoded and sorted in
//!   Erlang term order.
//!
//! # Changes, and pub/sub
//! Every change runs as one Lua script that checks its condition, raises the revision,
//! makes it and `PUBLISH`es `REV:` followed by `{changed, Key, Answer}` (as ETF) on
//! `lib_chan:changes:DB:SERVICE`, atomically: Redis runs scripts one
//! at a time, so the messages come in the order the changes were made. Each server
//! subscribes to that channel and pushes every message to its local watchers, its own
//! changes included: it never notifies them directly as well (no double notification),
//! and a watcher sees the changes of all servers in the one order Redis made them in,
//! so its last push is the key's state. (Notifying local changes directly and skipping
//! one's own messages would let a local and a remote change to one key reach local
//! watchers in the opposite order to the one Redis applied them in.) A `{watch, K}` is
//! answered only once the subscription is active.
//!
//! # Ordering and batching
//! One dispatcher task owns the command connection and takes operations from a queue in
//! the order they were called: it sends all waiting operations as one pipeline (Redis
//! runs a pipeline in order), answers them, and takes the next batch, so a connection's
//! pipelined `{store, K, V}` then `{lookup, K}` keep their order and concurrent callers
//! share round trips. A `names` scan runs alone, between batches.
//!
//! # Owner-bound names
//! Removed by an owner-checked script when the owning connection closes. If the channel
//! server itself dies (kill -9, a crash, a lost machine), nobody runs that: its
//! owner-bound names then expire within [`OWNER_TTL`], because only a live server
//! refreshes the TTL of its own (every [`OWNER_REFRESH`]). Redis sends no message for an
//! expiry, so watchers are not told of that removal, and it raises no revision (a
//! documented limitation); lookups and `names` stop showing the name. A server stalled
//! longer than the TTL loses its owner-bound names the same way.
//!
//! # When Redis is away
//! Operations fail with [`StoreError::Unavailable`] (the call gets an error) and the next
//! one reconnects. The subscription reconnects too, with backoff; changes made while it
//! was down are not pushed to watchers.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lib_chan_protocol::Term;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisResult, Value};
use tokio::sync::{mpsc, oneshot, watch};

use super::redis_sessions::{self, RedisSessions};
use super::revision::{KeyState, Written, MAX_TOMBSTONES};
use super::store::{
    change, redact, value_of, NameStore, Owner, SessionKey, StoreError, StoreFuture, Watchers,
};

/// How long an owner-bound name outlives the last refresh by its server.
pub const OWNER_TTL: Duration = Duration::from_secs(10);
/// How often a server refreshes the TTL of its owner-bound names.
pub const OWNER_REFRESH: Duration = Duration::from_secs(3);
/// Connecting to Redis, and waiting for one reply, give up after this.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(5);
/// The most operations one pipeline carries.
const MAX_PIPELINE: usize = 1024;

/// The helpers every change script starts with. KEYS: the name, the meta hash, the
/// tombstone set; ARGV[1]: the key's ETF bytes (the tombstone member).
macro_rules! prelude {
    () => {
        r"
local function state()
  local h = redis.call('HMGET', KEYS[1], 'v', 'r')
  if h[1] then return true, h[1], tonumber(h[2]) or 0 end
  return false, nil, tonumber(redis.call('ZSCORE', KEYS[3], ARGV[1])) or 0
end
local function check(cond)
  if cond == '' then return nil end
  local want = tonumber(cond)
  local present, v, modrev = state()
  if present then
    if modrev ~= 0 and modrev == want then return nil end
    return {0, modrev, v}
  end
  if want == 0 or (modrev ~= 0 and modrev == want) then return nil end
  return {0, modrev}
end
local function bury(rev, max)
  redis.call('ZADD', KEYS[3], rev, ARGV[1])
  if redis.call('ZCARD', KEYS[3]) > tonumber(max) then
    local old = redis.call('ZPOPMIN', KEYS[3])
    local floor = tonumber(redis.call('HGET', KEYS[2], 'floor')) or 0
    if tonumber(old[2]) > floor then redis.call('HSET', KEYS[2], 'floor', old[2]) end
  end
end
"
    };
}

/// Stores a name. ARGV: key, value, owner ('' if none), TTL in ms ('0': none, for a
/// session's name), channel, message, condition ('' if none), the session's names set
/// ('' if not a session's name). Returns `{1, Rev}`, or the conflict `{0, ModRev[, Value]}`.
const STORE: &str = concat!(
    prelude!(),
    r"
local conflict = check(ARGV[7])
if conflict then return conflict end
local rev = redis.call('HINCRBY', KEYS[2], 'revision', 1)
redis.call('DEL', KEYS[1])
if ARGV[3] == '' then
  redis.call('HSET', KEYS[1], 'v', ARGV[2], 'r', rev)
else
  redis.call('HSET', KEYS[1], 'v', ARGV[2], 'r', rev, 'o', ARGV[3])
  if ARGV[4] ~= '0' then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
  if ARGV[8] ~= '' then redis.call('SADD', ARGV[8], KEYS[1]) end
end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('PUBLISH', ARGV[5], rev .. ':' .. ARGV[6])
return {1, rev}
"
);

/// Deletes a name, a change (announced) only if it was there. ARGV: key, channel,
/// message, condition, tombstone bound. Returns `{1}` or a conflict.
const DELETE: &str = concat!(
    prelude!(),
    r"
local conflict = check(ARGV[4])
if conflict then return conflict end
if redis.call('DEL', KEYS[1]) == 1 then
  local rev = redis.call('HINCRBY', KEYS[2], 'revision', 1)
  bury(rev, ARGV[5])
  redis.call('PUBLISH', ARGV[2], rev .. ':' .. ARGV[3])
end
return {1}
"
);

/// Deletes a name only if ARGV[2] still owns it. ARGV: key, owner, channel, message,
/// tombstone bound.
const RELEASE: &str = concat!(
    prelude!(),
    r"
if redis.call('HGET', KEYS[1], 'o') == ARGV[2] then
  redis.call('DEL', KEYS[1])
  local rev = redis.call('HINCRBY', KEYS[2], 'revision', 1)
  bury(rev, ARGV[5])
  redis.call('PUBLISH', ARGV[3], rev .. ':' .. ARGV[4])
  return 1
end
return 0
"
);

/// A key's state: `{1, ModRev, Revision, Floor, Value}` or `{0, ModRev, Revision, Floor}`.
/// ARGV: key.
const GET: &str = r"
local h = redis.call('HMGET', KEYS[1], 'v', 'r')
local meta = redis.call('HMGET', KEYS[2], 'revision', 'floor')
local rev, floor = tonumber(meta[1]) or 0, tonumber(meta[2]) or 0
if h[1] then return {1, tonumber(h[2]) or 0, rev, floor, h[1]} end
return {0, tonumber(redis.call('ZSCORE', KEYS[3], ARGV[1])) or 0, rev, floor}
";

/// Extends an owner-bound name's TTL if ARGV[1] still owns it. ARGV: owner, TTL in ms.
const REFRESH: &str = r"
if redis.call('HGET', KEYS[1], 'o') == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

pub(super) enum Op {
    Cmd {
        cmd: redis::Cmd,
        answer: oneshot::Sender<Result<Value, StoreError>>,
    },
    Names {
        answer: oneshot::Sender<Result<Vec<Term>, StoreError>>,
    },
}

/// This server's owner-bound names: Redis key to (owner, generation). The generation
/// tells a refresh that found a name no longer ours from a name stored again since.
type OwnedNames = Arc<Mutex<HashMap<Vec<u8>, (String, u64)>>>;

/// The Redis-backed name store.
pub struct RedisStore {
    /// The URL without its password, for messages.
    shown: String,
    /// `lib_chan:name:SERVICE:`.
    prefix: Vec<u8>,
    /// `lib_chan:meta:SERVICE`.
    meta: String,
    /// `lib_chan:tombs:SERVICE`.
    tombs: String,
    /// `lib_chan:changes:DB:SERVICE`.
    channel: String,
    /// This store's instance id: owner-bound names are `INSTANCE:CONNECTION`.
    instance: String,
    ops: mpsc::UnboundedSender<Op>,
    owned: OwnedNames,
    generation: std::sync::atomic::AtomicU64,
    subscribed: watch::Receiver<bool>,
    /// Sessions shared through this Redis.
    sessions: Arc<RedisSessions>,
    /// Dropped with the store: the background tasks see it and end.
    _stop: watch::Sender<()>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.shown)
            .field("channel", &self.channel)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

fn encode(term: &Term) -> Result<Vec<u8>, StoreError> {
    lib_chan_protocol::encode(term).map_err(|e| StoreError::BadTerm(e.to_string()))
}

fn failed<T: Send + 'static>(e: StoreError) -> StoreFuture<T> {
    Box::pin(std::future::ready(Err(e)))
}

/// A fresh random instance id (hex).
fn instance_id() -> String {
    // RandomState is seeded from the OS's randomness; pid and time make ids from
    // processes started together differ even if it were not.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.write_u128(now.as_nanos());
    format!("{:016x}", h.finish())
}

/// A MATCH pattern matching `bytes` literally.
fn glob_escape(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 4);
    for &b in bytes {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

impl RedisStore {
    /// Connects to the Redis at `url` (checking it answers), then starts the dispatcher,
    /// the change subscription and the owner-bound refresher on the current tokio runtime.
    /// Blocks the calling thread for at most [`REDIS_TIMEOUT`] (start-up only).
    ///
    /// # Errors
    /// A message naming the URL (without its password): it does not parse, Redis does not
    /// answer, or there is no tokio runtime to run on.
    pub fn open(url: &str, service: &str, watchers: Arc<Watchers>) -> Result<RedisStore, String> {
        let shown = redact(url);
        let err = |what: &str, e: &dyn fmt::Display| format!("store {shown}: {what}: {e}");
        let client = Client::open(url).map_err(|e| err("bad URL", &e))?;
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|e| err("needs a tokio runtime", &e))?;
        // A server that starts is a server that works: check Redis answers now.
        let ping = || -> RedisResult<String> {
            let mut con = client.get_connection_with_timeout(REDIS_TIMEOUT)?;
            con.set_read_timeout(Some(REDIS_TIMEOUT))?;
            con.set_write_timeout(Some(REDIS_TIMEOUT))?;
            redis::cmd("PING").query(&mut con)
        };
        ping().map_err(|e| err("cannot reach Redis", &e))?;
        let db = client.get_connection_info().redis_settings().db();
        let prefix = [b"lib_chan:name:", service.as_bytes(), b":"].concat();
        // Pub/sub channels are shared by all of a Redis's databases: the channel names
        // the database so that name spaces in different ones stay apart.
        let channel = format!("lib_chan:changes:{db}:{service}");
        let (ops, rx) = mpsc::unbounded_channel();
        let (stop, stopped) = watch::channel(());
        let (ready, subscribed) = watch::channel(false);
        let owned = OwnedNames::default();
        let mut pattern = glob_escape(&prefix);
        pattern.extend_from_slice(&[131, b'*']);
        runtime.spawn(
            Dispatcher {
                client: client.clone(),
                conn: None,
                rx,
                pattern,
                prefix_len: prefix.len(),
                shown: shown.clone(),
            }
            .run(),
        );
        runtime.spawn(subscribe(
            client,
            channel.clone(),
            watchers,
            ready,
            stopped.clone(),
            shown.clone(),
        ));
        let instance = instance_id();
        let (meta, tombs) = (
            format!("lib_chan:meta:{service}"),
            format!("lib_chan:tombs:{service}"),
        );
        let sessions = Arc::new(RedisSessions::new(
            service,
            &instance,
            &channel,
            &meta,
            &tombs,
            prefix.len(),
            ops.clone(),
        ));
        runtime.spawn(redis_sessions::maintain(
            Arc::clone(&sessions),
            stopped.clone(),
        ));
        runtime.spawn(refresh(ops.clone(), Arc::clone(&owned), stopped));
        Ok(RedisStore {
            shown,
            meta,
            tombs,
            prefix,
            channel,
            instance,
            sessions,
            ops,
            owned,
            generation: Default::default(),
            subscribed,
            _stop: stop,
        })
    }

    fn redis_key(&self, key: &[u8]) -> Vec<u8> {
        [self.prefix.as_slice(), key].concat()
    }

    fn owner_tag(&self, owner: Owner) -> String {
        format!("{}:{owner}", self.instance)
    }

    /// Queues `cmd`; the future maps its reply with `then`.
    fn call<T: Send + 'static>(
        &self,
        cmd: redis::Cmd,
        then: impl FnOnce(Value) -> Result<T, StoreError> + Send + 'static,
    ) -> StoreFuture<T> {
        let (answer, rx) = oneshot::channel();
        if self.ops.send(Op::Cmd { cmd, answer }).is_err() {
            return failed(gone());
        }
        Box::pin(async move { rx.await.unwrap_or_else(|_| Err(gone())).and_then(then) })
    }

    /// `EVAL` of a script on the name at `key` (ETF bytes): KEYS are the name, the meta
    /// hash and the tombstone set, ARGV[1] is `key`.
    fn script(&self, script: &'static str, key: &[u8]) -> redis::Cmd {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(script)
            .arg(3)
            .arg(self.redis_key(key))
            .arg(&self.meta)
            .arg(&self.tombs)
            .arg(key);
        cmd
    }
}

fn gone() -> StoreError {
    StoreError::Unavailable("the Redis dispatcher has stopped".into())
}

/// A number in a script's reply.
fn int(v: &Value) -> Result<u64, StoreError> {
    match v {
        Value::Int(i) => Ok(u64::try_from(*i).unwrap_or(0)),
        other => Err(unexpected(other)),
    }
}

fn unexpected(v: &Value) -> StoreError {
    StoreError::Unavailable(format!("unexpected Redis reply {v:?}"))
}

fn decode_value(v: &Value) -> Result<Term, StoreError> {
    match v {
        Value::BulkString(bytes) => lib_chan_protocol::decode(bytes)
            .map_err(|e| StoreError::Unavailable(format!("bad term in Redis: {e}"))),
        other => Err(unexpected(other)),
    }
}

/// A change script's reply: `{1, ...}` done, `{0, ModRev[, Value]}` a conflict. The
/// conflict's revision and floor are not needed (only `Answer` and `ModRev` are shown).
fn written(reply: Value) -> Result<Written, StoreError> {
    let Value::Array(items) = &reply else {
        return Err(unexpected(&reply));
    };
    match items.as_slice() {
        [ok, ..] if int(ok)? == 1 => Ok(Written::Done),
        [_, mod_rev] => Ok(Written::Conflict(KeyState {
            value: None,
            mod_rev: int(mod_rev)?,
            revision: 0,
            floor: 0,
        })),
        [_, mod_rev, value] => Ok(Written::Conflict(KeyState {
            value: Some(decode_value(value)?),
            mod_rev: int(mod_rev)?,
            revision: 0,
            floor: 0,
        })),
        _ => Err(unexpected(&reply)),
    }
}

fn cond_arg(if_revision: Option<u64>) -> String {
    if_revision.map(|r| r.to_string()).unwrap_or_default()
}

impl NameStore for RedisStore {
    fn store(
        &self,
        key: Term,
        value: Term,
        owner: Option<Owner>,
        if_revision: Option<u64>,
    ) -> StoreFuture<Written> {
        let (k, v, msg) = match (
            encode(&key),
            encode(&value),
            encode(&change(&key, Some(&value))),
        ) {
            (Ok(k), Ok(v), Ok(m)) => (k, v, m),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return failed(e),
        };
        let rkey = self.redis_key(&k);
        // A session's name (its owner key has the top bit set) lives as long as its
        // session, recorded with it, with no TTL of its own.
        let session_owner = owner.filter(|o| lib_chan_server::SessionId::is_owner_key(*o));
        let (tag, ttl, names_set) = match (owner, session_owner) {
            (Some(o), Some(_)) => (RedisSessions::tag(o), 0, self.sessions.names_set(o)),
            (Some(o), None) => (
                self.owner_tag(o),
                OWNER_TTL.as_millis() as u64,
                String::new(),
            ),
            (None, _) => (String::new(), 0, String::new()),
        };
        if owner.is_some() && session_owner.is_none() {
            // Refreshed from now on; a conditional store that loses is found not ours
            // by the next refresh and forgotten.
            let generation = self
                .generation
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.owned
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(rkey, (tag.clone(), generation));
        }
        let mut cmd = self.script(STORE, &k);
        cmd.arg(v)
            .arg(tag)
            .arg(ttl)
            .arg(&self.channel)
            .arg(msg)
            .arg(cond_arg(if_revision))
            .arg(names_set);
        self.call(cmd, written)
    }

    fn lookup(&self, key: Term) -> StoreFuture<Option<Term>> {
        let k = match encode(&key) {
            Ok(k) => k,
            Err(e) => return failed(e),
        };
        let mut cmd = redis::cmd("HGET");
        cmd.arg(self.redis_key(&k)).arg("v");
        self.call(cmd, |reply| match reply {
            Value::Nil => Ok(None),
            other => decode_value(&other).map(Some),
        })
    }

    fn get(&self, key: Term) -> StoreFuture<KeyState> {
        let k = match encode(&key) {
            Ok(k) => k,
            Err(e) => return failed(e),
        };
        self.call(self.script(GET, &k), |reply| {
            let Value::Array(items) = &reply else {
                return Err(unexpected(&reply));
            };
            let (value, rest) = match items.as_slice() {
                [present, rest @ .., value] if int(present)? == 1 && rest.len() == 3 => {
                    (Some(decode_value(value)?), rest)
                }
                [_, rest @ ..] if rest.len() == 3 => (None, rest),
                _ => return Err(unexpected(&reply)),
            };
            Ok(KeyState {
                value,
                mod_rev: int(&rest[0])?,
                revision: int(&rest[1])?,
                floor: int(&rest[2])?,
            })
        })
    }

    fn delete(&self, key: Term, if_revision: Option<u64>) -> StoreFuture<Written> {
        let (k, msg) = match (encode(&key), encode(&change(&key, None))) {
            (Ok(k), Ok(m)) => (k, m),
            (Err(e), _) | (_, Err(e)) => return failed(e),
        };
        let mut cmd = self.script(DELETE, &k);
        cmd.arg(&self.channel)
            .arg(msg)
            .arg(cond_arg(if_revision))
            .arg(MAX_TOMBSTONES);
        self.call(cmd, written)
    }

    fn revision(&self) -> StoreFuture<u64> {
        let mut cmd = redis::cmd("HGET");
        cmd.arg(&self.meta).arg("revision");
        self.call(cmd, |reply| match reply {
            Value::Nil => Ok(0),
            Value::BulkString(b) => std::str::from_utf8(&b)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| StoreError::Unavailable("bad revision in Redis".into())),
            other => Err(unexpected(&other)),
        })
    }

    fn names(&self) -> StoreFuture<Vec<Term>> {
        let (answer, rx) = oneshot::channel();
        if self.ops.send(Op::Names { answer }).is_err() {
            return failed(gone());
        }
        Box::pin(async move { rx.await.unwrap_or_else(|_| Err(gone())) })
    }

    fn release(&self, owner: Owner, keys: Vec<Term>) -> StoreFuture<()> {
        let tag = self.owner_tag(owner);
        let mut pending = Vec::with_capacity(keys.len());
        for key in keys {
            let (Ok(k), Ok(msg)) = (encode(&key), encode(&change(&key, None))) else {
                continue;
            };
            let rkey = self.redis_key(&k);
            {
                let mut owned = self.owned.lock().unwrap_or_else(|p| p.into_inner());
                if owned.get(&rkey).is_some_and(|(o, _)| *o == tag) {
                    owned.remove(&rkey);
                }
            }
            let mut cmd = self.script(RELEASE, &k);
            cmd.arg(&tag)
                .arg(&self.channel)
                .arg(msg)
                .arg(MAX_TOMBSTONES);
            pending.push(self.call(cmd, |_| Ok(())));
        }
        let shown = self.shown.clone();
        Box::pin(async move {
            let mut result = Ok(());
            for p in pending {
                if let Err(e) = p.await {
                    tracing::warn!(store = %shown, error = %e, "could not release an owner-bound name; it expires by its TTL");
                    result = Err(e);
                }
            }
            result
        })
    }

    fn session_started(&self, session: &SessionKey) {
        self.sessions.started(session);
    }

    fn adopt_session(&self, session: &SessionKey) -> StoreFuture<bool> {
        self.sessions.adopt(session)
    }

    fn end_session(&self, session: &SessionKey, _keys: Vec<Term>) -> StoreFuture<()> {
        // Redis knows every name of the session, whichever server stored it.
        self.sessions.end(session)
    }

    fn ready_to_watch(&self) -> StoreFuture<()> {
        let mut subscribed = self.subscribed.clone();
        let shown = self.shown.clone();
        Box::pin(async move {
            match tokio::time::timeout(REDIS_TIMEOUT, subscribed.wait_for(|s| *s)).await {
                Ok(Ok(_)) => Ok(()),
                _ => Err(StoreError::Unavailable(format!(
                    "store {shown}: not subscribed to changes"
                ))),
            }
        })
    }
}

/// Owns the command connection; runs queued operations in order, batched.
struct Dispatcher {
    client: Client,
    conn: Option<MultiplexedConnection>,
    rx: mpsc::UnboundedReceiver<Op>,
    /// `SCAN MATCH` pattern for this name space's keys.
    pattern: Vec<u8>,
    prefix_len: usize,
    shown: String,
}

impl Dispatcher {
    async fn run(mut self) {
        let mut next: Option<Op> = None;
        loop {
            let op = match next.take() {
                Some(op) => op,
                None => match self.rx.recv().await {
                    Some(op) => op,
                    None => return,
                },
            };
            match op {
                Op::Names { answer } => {
                    let names = self.names().await;
                    let _ = answer.send(names);
                }
                Op::Cmd { cmd, answer } => {
                    let mut batch = vec![(cmd, answer)];
                    while batch.len() < MAX_PIPELINE {
                        match self.rx.try_recv() {
                            Ok(Op::Cmd { cmd, answer }) => batch.push((cmd, answer)),
                            Ok(names) => {
                                // Runs after this batch, keeping the order.
                                next = Some(names);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.pipeline(batch).await;
                }
            }
        }
    }

    /// The connection, made if there is none.
    async fn connection(&mut self) -> Result<MultiplexedConnection, StoreError> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT));
        match self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(c) => {
                self.conn = Some(c.clone());
                Ok(c)
            }
            Err(e) => Err(self.unavailable(&e)),
        }
    }

    fn unavailable(&mut self, e: &redis::RedisError) -> StoreError {
        if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_unrecoverable_error()
            || e.is_timeout()
        {
            // Reconnect for the next operation.
            self.conn = None;
        }
        tracing::warn!(store = %self.shown, error = %e, "Redis operation failed");
        StoreError::Unavailable(format!("store {}: {e}", self.shown))
    }

    async fn pipeline(
        &mut self,
        batch: Vec<(redis::Cmd, oneshot::Sender<Result<Value, StoreError>>)>,
    ) {
        let mut conn = match self.connection().await {
            Ok(c) => c,
            Err(e) => {
                for (_, answer) in batch {
                    let _ = answer.send(Err(e.clone()));
                }
                return;
            }
        };
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let mut answers = Vec::with_capacity(batch.len());
        for (cmd, answer) in batch {
            pipe.add_command(cmd);
            answers.push(answer);
        }
        match pipe.query_async::<Vec<RedisResult<Value>>>(&mut conn).await {
            Ok(replies) if replies.len() == answers.len() => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = answer.send(reply.map_err(|e| self.unavailable(&e)));
                }
            }
            Ok(replies) => {
                let e = StoreError::Unavailable(format!(
                    "store {}: {} replies to {} commands",
                    self.shown,
                    replies.len(),
                    answers.len()
                ));
                self.conn = None;
                for answer in answers {
                    let _ = answer.send(Err(e.clone()));
                }
            }
            Err(e) => {
                let e = self.unavailable(&e);
                for answer in answers {
                    let _ = answer.send(Err(e.clone()));
                }
            }
        }
    }

    /// Every key of the name space, by `SCAN`, decoded and sorted.
    async fn names(&mut self) -> Result<Vec<Term>, StoreError> {
        let mut conn = self.connection().await?;
        let mut raw = BTreeSet::new();
        let mut cursor = 0u64;
        loop {
            let reply: RedisResult<(u64, Vec<Vec<u8>>)> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(self.pattern.as_slice())
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await;
            let (next, keys) = reply.map_err(|e| self.unavailable(&e))?;
            // SCAN may return a key twice: the set keeps one.
            raw.extend(keys);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let mut names = Vec::with_capacity(raw.len());
        for key in raw {
            match lib_chan_protocol::decode(&key[self.prefix_len..]) {
                Ok(t) => names.push(t),
                Err(e) => {
                    tracing::warn!(store = %self.shown, error = %e, "skipping a key that is not ETF")
                }
            }
        }
        names.sort();
        Ok(names)
    }
}

/// Keeps a subscription to the change channel and pushes every message to `watchers`;
/// `ready` says whether it is active. Reconnects with backoff until `stop` is dropped.
async fn subscribe(
    client: Client,
    channel: String,
    watchers: Arc<Watchers>,
    ready: watch::Sender<bool>,
    mut stop: watch::Receiver<()>,
    shown: String,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let connect = async {
            let mut pubsub = tokio::time::timeout(REDIS_TIMEOUT, client.get_async_pubsub())
                .await
                .map_err(|_| "timed out connecting".to_owned())?
                .map_err(|e| e.to_string())?;
            tokio::time::timeout(REDIS_TIMEOUT, pubsub.subscribe(&channel))
                .await
                .map_err(|_| "timed out subscribing".to_owned())?
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(pubsub)
        };
        let pubsub = tokio::select! {
            _ = stop.changed() => return,
            p = connect => p,
        };
        match pubsub {
            Ok(pubsub) => {
                backoff = Duration::from_millis(100);
                ready.send_replace(true);
                let mut messages = pubsub.into_on_message();
                loop {
                    let msg = tokio::select! {
                        _ = stop.changed() => return,
                        m = messages.next() => m,
                    };
                    let Some(msg) = msg else { break };
                    deliver(&watchers, msg.get_payload_bytes(), &shown);
                }
                ready.send_replace(false);
                tracing::warn!(store = %shown, "lost the change subscription; reconnecting");
            }
            Err(e) => {
                tracing::warn!(store = %shown, error = %e, "cannot subscribe to changes; retrying");
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(REDIS_TIMEOUT);
    }
}

/// One published change, `REV:` then `{changed, Key, Answer}` as ETF, to the watchers
/// of Key.
fn deliver(watchers: &Watchers, payload: &[u8], shown: &str) {
    let parsed = payload.iter().position(|&b| b == b':').and_then(|at| {
        let rev = std::str::from_utf8(&payload[..at])
            .ok()?
            .parse::<u64>()
            .ok()?;
        Some((rev, lib_chan_protocol::decode(&payload[at + 1..]).ok()?))
    });
    let Some((rev, change)) = parsed else {
        tracing::warn!(store = %shown, "ignoring a change message without a revision (a server of an older version?)");
        return;
    };
    match change.as_tuple() {
        Some([tag, key, answer]) if tag.is_atom("changed") => match value_of(answer) {
            Ok(value) => watchers.notify(key, value.as_ref(), rev),
            Err(()) => tracing::warn!(store = %shown, "ignoring a malformed change message"),
        },
        _ => tracing::warn!(store = %shown, "ignoring a malformed change message"),
    }
}

/// Every [`OWNER_REFRESH`], extends the TTL of this server's owner-bound names, and
/// forgets those that are no longer its own. Ends when `stop` is dropped.
async fn refresh(ops: mpsc::UnboundedSender<Op>, owned: OwnedNames, mut stop: watch::Receiver<()>) {
    let mut tick = tokio::time::interval(OWNER_REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let names: Vec<(Vec<u8>, (String, u64))> = owned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut pending = Vec::with_capacity(names.len());
        for (key, (tag, generation)) in names {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(REFRESH)
                .arg(1)
                .arg(key.as_slice())
                .arg(&tag)
                .arg(OWNER_TTL.as_millis() as u64);
            let (answer, rx) = oneshot::channel();
            if ops.send(Op::Cmd { cmd, answer }).is_err() {
                return;
            }
            pending.push((key, generation, rx));
        }
        for (key, generation, rx) in pending {
            // 0: no longer ours (stored over, deleted or expired): stop refreshing it,
            // unless it was stored again since the snapshot.
            if let Ok(Ok(Value::Int(0))) = rx.await {
                let mut owned = owned.lock().unwrap_or_else(|p| p.into_inner());
                if owned.get(&key).is_some_and(|(_, g)| *g == generation) {
                    owned.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_literally() {
        assert_eq!(glob_escape(b"a*b?[c]\\"), b"a\\*b\\?\\[c\\]\\\\".to_vec());
        assert_eq!(glob_escape(b"nameServer"), b"nameServer".to_vec());
    }

    #[test]
    fn instance_ids_differ() {
        assert_ne!(instance_id(), instance_id());
    }
}

//! Sessions shared through Redis (PROTOCOL.md 8): channel servers on one Redis name store
//! share their sessions, so that a client may resume on another server, and a session's
//! `#{owner => session}` names are removed, with their watchers told, when it ends,
//! whichever server it ends on, and even when the server that held it died.
//!
//! # Keys (per service, next to the names of [`redis_store`](super::redis_store))
//! - `lib_chan:session:SERVICE:KEY` (KEY: the session's owner key in hex) is a hash: `id`
//!   (the full id, in hex: a resume must present all of it), `owner` (who may resume it)
//!   and `holder` (the instance of the server holding it now);
//! - `lib_chan:snames:SERVICE:KEY` is the set of the Redis keys of its names;
//! - `lib_chan:sessions:SERVICE` is a sorted set of live sessions by deadline (Redis
//!   time, ms). The holder pushes the deadline [`OWNER_TTL`] ahead every
//!   [`OWNER_REFRESH`].
//!
//! A session's names have no TTL of their own: they go only when the session ends. The
//! holder ends it (its client's `close`, or its grace passed) with a script that does
//! nothing if another server holds it by then; every server sweeps, once a second, the
//! sessions whose deadline passed (their holder died), with a script that removes their
//! names as changes (revision, tombstone, published), so no watcher misses the removal.
//! Scripts name keys they compute (the names of a session): fine on one Redis, not on a
//! Redis Cluster.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::Value;
use tokio::sync::{mpsc, oneshot, watch};

use super::redis_store::{Op, OWNER_REFRESH, OWNER_TTL};
use super::revision::MAX_TOMBSTONES;
use super::store::{SessionKey, StoreError, StoreFuture};

/// How often each server sweeps for sessions whose holder died.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The end of a session: its names removed as changes. ARGV: session hash, names set,
/// sessions zset, key hex, meta hash, tombstone set, channel, tombstone bound, prefix
/// length, message head, message tail. Returns the number of names removed.
macro_rules! end_fn {
    () => {
        r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function finish(sess, names, zset, hex, meta, tombs, channel, max, plen, head, tail)
  local tag = 'session:' .. hex
  local removed = 0
  for _, name in ipairs(redis.call('SMEMBERS', names)) do
    if redis.call('HGET', name, 'o') == tag then
      redis.call('DEL', name)
      local rev = redis.call('HINCRBY', meta, 'revision', 1)
      local etf = string.sub(name, tonumber(plen) + 1)
      redis.call('ZADD', tombs, rev, etf)
      if redis.call('ZCARD', tombs) > tonumber(max) then
        local old = redis.call('ZPOPMIN', tombs)
        local floor = tonumber(redis.call('HGET', meta, 'floor')) or 0
        if tonumber(old[2]) > floor then redis.call('HSET', meta, 'floor', old[2]) end
      end
      redis.call('PUBLISH', channel, rev .. ':' .. head .. string.sub(etf, 2) .. tail)
      removed = removed + 1
    end
  end
  redis.call('DEL', names, sess)
  redis.call('ZREM', zset, hex)
  return removed
end
"
    };
}

/// Ends a session held by ARGV[12] (the instance); nothing if another server holds it.
const END_HELD: &str = concat!(
    end_fn!(),
    r"
local holder = redis.call('HGET', ARGV[1], 'holder')
if holder and holder ~= ARGV[12] then return -1 end
return finish(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11])
"
);

/// Ends up to 100 sessions whose deadline passed. ARGV as for `end_fn!` but for the
/// first four: ARGV[1] the session hash prefix, ARGV[2] the names set prefix, ARGV[3]
/// the zset. Returns how many sessions ended.
const SWEEP: &str = concat!(
    end_fn!(),
    r"
local due = redis.call('ZRANGEBYSCORE', ARGV[3], '-inf', now_ms(), 'LIMIT', 0, 100)
for _, hex in ipairs(due) do
  finish(ARGV[1] .. hex, ARGV[2] .. hex, ARGV[3], hex, ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11])
end
return #due
"
);

/// Records a session held by this server. ARGV: session hash, zset, key hex, id hex,
/// owner, instance, TTL ms.
const START: &str = concat!(
    end_fn!(),
    r"
redis.call('HSET', ARGV[1], 'id', ARGV[4], 'owner', ARGV[5], 'holder', ARGV[6])
redis.call('ZADD', ARGV[2], now_ms() + tonumber(ARGV[7]), ARGV[3])
return 1
"
);

/// Adopts a live session whose id and owner match. ARGV as for [`START`]. 1 or 0.
const ADOPT: &str = concat!(
    end_fn!(),
    r"
if redis.call('HGET', ARGV[1], 'id') ~= ARGV[4] then return 0 end
if redis.call('HGET', ARGV[1], 'owner') ~= ARGV[5] then return 0 end
if not redis.call('ZSCORE', ARGV[2], ARGV[3]) then return 0 end
redis.call('HSET', ARGV[1], 'holder', ARGV[6])
redis.call('ZADD', ARGV[2], now_ms() + tonumber(ARGV[7]), ARGV[3])
return 1
"
);

/// Pushes the deadline of a session this server holds. ARGV: session hash, zset, key
/// hex, instance, TTL ms. 0 when not held here any more.
const REFRESH: &str = concat!(
    end_fn!(),
    r"
if redis.call('HGET', ARGV[1], 'holder') ~= ARGV[4] then return 0 end
redis.call('ZADD', ARGV[2], now_ms() + tonumber(ARGV[5]), ARGV[3])
return 1
"
);

/// The sessions of one service's name space in Redis.
pub(super) struct RedisSessions {
    service: String,
    instance: String,
    channel: String,
    meta: String,
    tombs: String,
    prefix_len: usize,
    /// `{changed, ` and `, undefined}` around a key, as ETF (without the key).
    head: Vec<u8>,
    tail: Vec<u8>,
    /// The sessions this server holds (key hex).
    held: Mutex<HashSet<String>>,
    ops: mpsc::UnboundedSender<Op>,
}

/// The ETF of `{changed, Key, undefined}` split around `Key`.
fn change_parts() -> (Vec<u8>, Vec<u8>) {
    use lib_chan_protocol::Term;
    let marker = Term::atom("lib_chan_key_marker");
    let whole = lib_chan_protocol::encode(&Term::tuple([
        Term::atom("changed"),
        marker.clone(),
        Term::atom("undefined"),
    ]))
    .unwrap_or_default();
    let m = lib_chan_protocol::encode(&marker).unwrap_or_default();
    let m = &m[1..];
    let at = whole
        .windows(m.len())
        .position(|w| w == m)
        .unwrap_or(whole.len());
    (
        whole[..at].to_vec(),
        whole[(at + m.len()).min(whole.len())..].to_vec(),
    )
}

fn strings(items: &[&str]) -> Vec<Vec<u8>> {
    items.iter().map(|s| s.as_bytes().to_vec()).collect()
}

fn gone() -> StoreError {
    StoreError::Unavailable("the Redis dispatcher has stopped".into())
}

impl RedisSessions {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        service: &str,
        instance: &str,
        channel: &str,
        meta: &str,
        tombs: &str,
        prefix_len: usize,
        ops: mpsc::UnboundedSender<Op>,
    ) -> RedisSessions {
        let (head, tail) = change_parts();
        RedisSessions {
            service: service.to_owned(),
            instance: instance.to_owned(),
            channel: channel.to_owned(),
            meta: meta.to_owned(),
            tombs: tombs.to_owned(),
            prefix_len,
            head,
            tail,
            held: Mutex::default(),
            ops,
        }
    }

    fn hex(owner_key: u64) -> String {
        format!("{owner_key:016x}")
    }

    fn hash(&self, hex: &str) -> String {
        format!("lib_chan:session:{}:{hex}", self.service)
    }

    fn zset(&self) -> String {
        format!("lib_chan:sessions:{}", self.service)
    }

    /// The set of a session's names (for the store script of an owner-bound name).
    pub(super) fn names_set(&self, owner_key: u64) -> String {
        format!("lib_chan:snames:{}:{}", self.service, Self::hex(owner_key))
    }

    /// The owner tag of a session's names.
    pub(super) fn tag(owner_key: u64) -> String {
        format!("session:{}", Self::hex(owner_key))
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn eval(&self, body: &'static str, args: Vec<Vec<u8>>) -> StoreFuture<Value> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(body).arg(0);
        for a in args {
            cmd.arg(a);
        }
        let (answer, rx) = oneshot::channel();
        if self.ops.send(Op::Cmd { cmd, answer }).is_err() {
            return Box::pin(std::future::ready(Err(gone())));
        }
        Box::pin(async move { rx.await.unwrap_or_else(|_| Err(gone())) })
    }

    /// The arguments of [`START`] and [`ADOPT`].
    fn hold_args(&self, hex: &str, s: &SessionKey) -> Vec<Vec<u8>> {
        let ttl = OWNER_TTL.as_millis().to_string();
        strings(&[
            &self.hash(hex),
            &self.zset(),
            hex,
            &s.id_hex,
            &s.owner,
            &self.instance,
            &ttl,
        ])
    }

    /// A session started here.
    pub(super) fn started(&self, s: &SessionKey) {
        let hex = Self::hex(s.owner_key);
        self.held().insert(hex.clone());
        drop(self.eval(START, self.hold_args(&hex, s)));
    }

    /// Adopts another server's session.
    pub(super) fn adopt(self: &Arc<Self>, s: &SessionKey) -> StoreFuture<bool> {
        let hex = Self::hex(s.owner_key);
        let pending = self.eval(ADOPT, self.hold_args(&hex, s));
        let me = Arc::clone(self);
        Box::pin(async move {
            let adopted = matches!(pending.await?, Value::Int(1));
            if adopted {
                me.held().insert(hex);
            }
            Ok(adopted)
        })
    }

    fn end_args(&self, hex: &str) -> Vec<Vec<u8>> {
        vec![
            self.hash(hex).into_bytes(),
            self.names_set_hex(hex).into_bytes(),
            self.zset().into_bytes(),
            hex.as_bytes().to_vec(),
            self.meta.clone().into_bytes(),
            self.tombs.clone().into_bytes(),
            self.channel.clone().into_bytes(),
            MAX_TOMBSTONES.to_string().into_bytes(),
            self.prefix_len.to_string().into_bytes(),
            self.head.clone(),
            self.tail.clone(),
        ]
    }

    fn names_set_hex(&self, hex: &str) -> String {
        format!("lib_chan:snames:{}:{hex}", self.service)
    }

    /// The session ended here: its names go, unless another server holds it now.
    pub(super) fn end(&self, s: &SessionKey) -> StoreFuture<()> {
        let hex = Self::hex(s.owner_key);
        self.held().remove(&hex);
        let mut args = self.end_args(&hex);
        args.push(self.instance.clone().into_bytes());
        let pending = self.eval(END_HELD, args);
        Box::pin(async move { pending.await.map(drop) })
    }

    /// Pushes the deadlines of the sessions held here.
    async fn refresh(&self) {
        let held: Vec<String> = self.held().iter().cloned().collect();
        let ttl = OWNER_TTL.as_millis().to_string();
        for hex in held {
            let args = strings(&[&self.hash(&hex), &self.zset(), &hex, &self.instance, &ttl]);
            if let Ok(Value::Int(0)) = self.eval(REFRESH, args).await {
                // Adopted by another server, or ended.
                self.held().remove(&hex);
            }
        }
    }

    /// Ends the sessions whose deadline passed (their holder went away).
    async fn sweep(&self) {
        let mut args = self.end_args("");
        args[0] = format!("lib_chan:session:{}:", self.service).into_bytes();
        args[1] = format!("lib_chan:snames:{}:", self.service).into_bytes();
        match self.eval(SWEEP, args).await {
            Ok(Value::Int(n)) if n > 0 => {
                tracing::info!(service = %self.service, sessions = n, "ended sessions whose server went away");
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "session sweep failed"),
        }
    }
}

/// Refreshes held sessions every [`OWNER_REFRESH`] and sweeps every [`SWEEP_EVERY`],
/// until `stop` is dropped.
pub(super) async fn maintain(sessions: Arc<RedisSessions>, mut stop: watch::Receiver<()>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let per_refresh = (OWNER_REFRESH.as_millis() / SWEEP_EVERY.as_millis()).max(1) as u64;
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        n += 1;
        if n.is_multiple_of(per_refresh) {
            sessions.refresh().await;
        }
        sessions.sweep().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lib_chan_protocol::{term, Term};

    #[test]
    fn the_change_message_wraps_any_key() {
        let (head, tail) = change_parts();
        let key = term!({a, "b", 1});
        let k = lib_chan_protocol::encode(&key).unwrap();
        let msg = [head.as_slice(), &k[1..], tail.as_slice()].concat();
        assert_eq!(
            lib_chan_protocol::decode(&msg).unwrap(),
            Term::tuple([term!(changed), key, term!(undefined)])
        );
    }
}

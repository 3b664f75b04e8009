//! The soak clients' default mode: a `ReconnectingChannel` and the typed `Names` client,
//! through the same cutting proxy. The channel logs in again and resends idempotent calls
//! by itself, so a cut should cost a little latency and no error; every store is
//! acknowledged or failed, and the read-back checks that none acknowledged is lost.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use lib_chan_client::{ChannelEvent, Login, Names, ReconnectPolicy, Term};

use super::{key, kind, value, Client, PASSWORD, SERVICE};

impl Client {
    /// Runs until `until` on one reconnecting channel.
    pub(super) async fn run_reconnecting(mut self, until: Instant) -> Self {
        let policy = ReconnectPolicy::new()
            .base_delay(Duration::from_millis(50))
            .max_delay(Duration::from_secs(1));
        let options = self.options.clone().reconnect(policy);
        let login = Login::service_password(PASSWORD);
        let chan = loop {
            let cuts_before = self.cuts.load(Ordering::SeqCst);
            match options
                .connect_reconnecting("127.0.0.1", self.port, SERVICE, &login, Term::nil())
                .await
            {
                Ok(c) => break c,
                Err(e) => {
                    // The proxy may cut the first connection during its handshake too.
                    let map = if self.cuts.load(Ordering::SeqCst) != cuts_before {
                        &mut self.stats.expected_errors
                    } else {
                        &mut self.stats.connect_errors
                    };
                    *map.entry(kind(&e)).or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        self.stats.connects += 1;
        let mut events = chan.events();
        let names = Names::new(chan.clone());
        while Instant::now() < until {
            while let Ok(event) = events.try_recv() {
                if matches!(event, ChannelEvent::Connected(_)) {
                    self.stats.connects += 1;
                }
            }
            let k = self.rng.below(self.keys.len() as u64);
            let cuts_before = self.cuts.load(Ordering::SeqCst);
            let started = Instant::now();
            let outcome = if self.rng.below(100) < 55 {
                self.next_seq += 1;
                let seq = self.next_seq;
                self.keys[k as usize].sent(seq);
                names.store(key(self.id, k), value(seq)).await.map(|()| {
                    self.keys[k as usize].acked(seq);
                    self.stats.stores += 1;
                })
            } else {
                names.lookup(key(self.id, k)).await.map(|found| {
                    let reply = match found {
                        Some(v) => Term::tuple([Term::atom("ok"), v]),
                        None => Term::atom("undefined"),
                    };
                    self.judge(k, &reply);
                    self.stats.lookups += 1;
                })
            };
            match outcome {
                Ok(()) => self
                    .stats
                    .latencies_us
                    .push(started.elapsed().as_micros().min(u32::MAX as u128) as u32),
                Err(e) => {
                    let map = if self.cuts.load(Ordering::SeqCst) != cuts_before {
                        &mut self.stats.expected_errors
                    } else {
                        &mut self.stats.unexpected_errors
                    };
                    *map.entry(kind(&e)).or_default() += 1;
                }
            }
        }
        chan.close().await;
        self
    }
}

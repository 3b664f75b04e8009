//! Health for orchestrators, on the metrics listener: `GET /healthz` answers `200 ok`
//! while the process serves at all; `GET /readyz` answers `200 ready` when the server can
//! take connections (listening, its certificate not expired, every service that reports
//! a status healthy: a name server's store answering), else `503` with one line per
//! problem. Kubernetes probes and load balancers use them as they use etcd's and NATS's.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::reload::Live;

/// How long one service's status may take before it counts as unhealthy.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// What stops the server from being ready now; empty when it is ready.
pub(crate) async fn problems(live: &Arc<Live>) -> Vec<String> {
    let state = live.load();
    let mut problems = Vec::new();
    if let Some(not_after) = state.cert_not_after {
        if not_after <= SystemTime::now() {
            problems.push(format!(
                "the TLS certificate expired at {}",
                crate::users::format_time(not_after)
            ));
        }
    }
    let mut names: Vec<&String> = state.services.keys().collect();
    names.sort();
    for name in names {
        let entry = &state.services[name];
        let Some(status) = entry.service.status() else {
            continue;
        };
        match tokio::time::timeout(STATUS_TIMEOUT, status).await {
            Ok(t) => {
                let healthy = t.map_get(&lib_chan_protocol::Term::atom("healthy"));
                if healthy.is_some_and(|h| !h.is_atom("true")) {
                    problems.push(format!("service {name}: unhealthy ({t})"));
                }
            }
            Err(_) => problems.push(format!(
                "service {name}: no status within {} s",
                STATUS_TIMEOUT.as_secs()
            )),
        }
    }
    problems
}

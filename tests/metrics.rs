//! The Prometheus endpoint (`[metrics] listen`, OpenMetrics text), scraped over plain
//! HTTP after a session: connections by service, auth results, close reasons, calls and
//! their latency histogram, bytes in and out all move as the session says they should;
//! `/healthz` and `/readyz` follow the process and its store.

mod common;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::time::Duration;

use common::{metric, scrape, within, TestServer};
use lib_chan_client::{term, Error, Term};

/// Scrapes until `series` has `value` (a close is counted only once the connection's
/// lingering close is over), and returns that scrape.
async fn scrape_until(addr: std::net::SocketAddr, series: &str, value: f64) -> String {
    within(&format!("{series} = {value}"), async {
        loop {
            let text = scrape(addr).await;
            if metric(&text, series) == Some(value) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test]
async fn a_session_moves_the_numbers_it_should() {
    let server = TestServer::start_with(|c| {
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let handle = server.handle.as_ref().unwrap();
    let addr = handle.metrics_addr().expect("the endpoint is bound");
    assert_ne!(addr.port(), 0);

    let before = scrape(addr).await;
    for service in ["echo", "nameServer", "test"] {
        let series = format!("lib_chan_connections{{service=\"{service}\"}}");
        assert_eq!(metric(&before, &series), Some(0.0), "{before}");
        let series = format!("lib_chan_calls_total{{service=\"{service}\"}}");
        assert_eq!(metric(&before, &series), Some(0.0), "{before}");
    }
    assert_eq!(metric(&before, "lib_chan_bytes_received_total"), Some(0.0));

    let echo = server.connect("echo").await;
    const CALLS: usize = 7;
    for i in 0..CALLS {
        let reply = within("rpc", echo.rpc(Term::from(i as i64))).await.unwrap();
        assert_eq!(reply, Term::from(i as i64));
    }
    within("cast", echo.cast(term!(not_a_call))).await.unwrap();
    let during = scrape(addr).await;
    assert_eq!(
        metric(&during, "lib_chan_connections{service=\"echo\"}"),
        Some(1.0),
        "{during}"
    );
    assert_eq!(
        metric(&during, "lib_chan_connections_unauthenticated"),
        Some(0.0)
    );
    let wrong = server.options().connect(
        "127.0.0.1",
        server.addr.port(),
        "echo",
        "wrong",
        Term::nil(),
    );
    assert!(matches!(
        within("connect", wrong).await,
        Err(Error::AuthFailed)
    ));
    within("close", echo.close()).await;

    let after = scrape_until(addr, "lib_chan_closes_total{reason=\"client_closed\"}", 1.0).await;
    let get =
        |series: &str| metric(&after, series).unwrap_or_else(|| panic!("no {series} in\n{after}"));
    let calls = CALLS as f64;
    assert_eq!(get("lib_chan_calls_total{service=\"echo\"}"), calls);
    assert_eq!(get("lib_chan_calls_total{service=\"nameServer\"}"), 0.0);
    assert_eq!(
        get("lib_chan_call_duration_seconds_count{service=\"echo\"}"),
        calls
    );
    assert_eq!(
        get("lib_chan_call_duration_seconds_bucket{le=\"+Inf\",service=\"echo\"}"),
        calls
    );
    // Cumulative buckets never decrease; an echo is answered well within a second.
    let mut last = 0.0;
    for le in ["0.00005", "0.001", "0.01", "0.1", "1.0"] {
        let n = get(&format!(
            "lib_chan_call_duration_seconds_bucket{{le=\"{le}\",service=\"echo\"}}"
        ));
        assert!(n >= last, "le {le}: {n} < {last}");
        last = n;
    }
    assert_eq!(last, calls, "{after}");
    let sum = get("lib_chan_call_duration_seconds_sum{service=\"echo\"}");
    assert!(sum > 0.0 && sum < calls, "{sum}");
    assert_eq!(get("lib_chan_auth_total{result=\"ok\"}"), 1.0);
    assert_eq!(get("lib_chan_auth_total{result=\"failed\"}"), 1.0);
    assert_eq!(get("lib_chan_auth_total{result=\"busy\"}"), 0.0);
    let closes_failed =
        scrape_until(addr, "lib_chan_closes_total{reason=\"auth_failed\"}", 1.0).await;
    // OpenMetrics: the family is named without `_total`, its samples with it.
    assert!(closes_failed.contains("# TYPE lib_chan_closes counter"));
    assert!(closes_failed.ends_with("\n# EOF\n"));
    assert_eq!(get("lib_chan_connections{service=\"echo\"}"), 0.0);
    // Seven calls, a cast and a close went in; seven replies came out. Each frame is
    // at least its 4-byte length and a few bytes of term.
    let received = get("lib_chan_bytes_received_total");
    let sent = get("lib_chan_bytes_sent_total");
    assert!(received >= 9.0 * 8.0, "{received}");
    assert!(sent >= calls * 8.0, "{sent}");
    assert!(get("lib_chan_connections_accepted_total") >= 2.0);
    // The handle renders the same counters without going through HTTP.
    assert!(handle.metrics_text().contains(&format!(
        "lib_chan_calls_total{{service=\"echo\"}} {CALLS}\n"
    )));
}

#[tokio::test]
async fn there_is_no_endpoint_unless_configured() {
    let server = TestServer::start().await;
    let handle = server.handle.as_ref().unwrap();
    assert_eq!(handle.metrics_addr(), None);
    // Counting goes on all the same.
    let echo = server.connect("echo").await;
    within("rpc", echo.rpc(term!(x))).await.unwrap();
    assert!(handle
        .metrics_text()
        .contains("lib_chan_calls_total{service=\"echo\"} 1\n"));
}

/// `GET PATH` on the metrics listener: (status line, body).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    within("GET", async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (head.lines().next().unwrap().to_owned(), body.to_owned())
    })
    .await
}

#[tokio::test]
async fn healthz_and_readyz_follow_the_store() {
    let redis = redis_server::RedisServer::start();
    let url = redis.url(7);
    let server = TestServer::start_with(move |c| {
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        c.services[0].options.store = Some(url);
    })
    .await;
    let addr = server.handle.as_ref().unwrap().metrics_addr().unwrap();
    assert_eq!(
        http_get(addr, "/healthz").await,
        ("HTTP/1.1 200 OK".into(), "ok\n".into())
    );
    assert_eq!(
        http_get(addr, "/readyz").await,
        ("HTTP/1.1 200 OK".into(), "ready\n".into())
    );
    // Redis goes away: the process is still alive, but not ready, and says why.
    drop(redis);
    let (status, body) = http_get(addr, "/readyz").await;
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable", "{body}");
    assert!(body.contains("service nameServer"), "{body}");
    assert_eq!(http_get(addr, "/healthz").await.0, "HTTP/1.1 200 OK");
}

//! The metrics listener (`[metrics] listen`): [`hyper`]'s HTTP/1.1 server on tokio, one
//! request per connection (no keep-alive), the request head bounded to [`MAX_REQUEST`]
//! bytes (hyper answers a longer one 431) and the whole exchange to [`REQUEST_TIMEOUT`],
//! at most [`MAX_SCRAPERS`] at once. `GET` and `HEAD` are answered for `/metrics` (the
//! OpenMetrics text of [`Metrics::render`]), `/healthz` and `/readyz` (the `health`
//! module), any other path 404, any other method 405 with `Allow: GET, HEAD`. It has no
//! authentication: bind it to a loopback or otherwise private address.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::Metrics;
use crate::stats::Stats;

/// Bytes of request head read at most; a longer one is answered 431.
pub const MAX_REQUEST: usize = 8192;
/// How long one scrape (request and response) may take before it is dropped.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapes served at once; further connections are closed unanswered until one ends.
pub const MAX_SCRAPERS: usize = 8;

/// What `/readyz` asks: the problems that keep the server from being ready (none: ready).
pub(crate) type ReadyCheck = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<String>> + Send>>
        + Send
        + Sync,
>;

/// Serves `GET /metrics`, `/healthz` and `/readyz` on `listener` until `shutdown` is
/// cancelled.
pub(crate) async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    stats: Arc<Stats>,
    ready: ReadyCheck,
    shutdown: CancellationToken,
) {
    let scrapers = Arc::new(Semaphore::new(MAX_SCRAPERS));
    let mut http = hyper::server::conn::http1::Builder::new();
    // One request per connection; a head longer than MAX_REQUEST is answered 431. (The
    // title case keeps the headers as the hand-written responder wrote them.)
    http.keep_alive(false)
        .max_buf_size(MAX_REQUEST)
        .title_case_headers(true);
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and the like: wait a little rather than spin.
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&scrapers).try_acquire_owned() else {
            tracing::debug!(%peer, "metrics endpoint: too many scrapes at once; closing");
            continue;
        };
        let (metrics, stats, ready) =
            (Arc::clone(&metrics), Arc::clone(&stats), Arc::clone(&ready));
        let service = hyper::service::service_fn(move |request: Request<_>| {
            let (metrics, stats, ready) =
                (Arc::clone(&metrics), Arc::clone(&stats), Arc::clone(&ready));
            async move {
                let render = || metrics.render(&stats.snapshot());
                Ok::<_, Infallible>(
                    respond(request.method(), request.uri().path(), render, || ready()).await,
                )
            }
        });
        let connection = http.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(REQUEST_TIMEOUT, connection).await {
                Err(_) => tracing::debug!(%peer, "metrics endpoint: request timed out"),
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics endpoint: bad request"),
                Ok(Ok(())) => {}
            }
        });
    }
}

/// The content type of the OpenMetrics text format.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of every other answer.
const PLAIN: &str = "text/plain; charset=utf-8";

/// The answer to `method` on `path`. A `HEAD` gets the `GET` answer's head (hyper
/// leaves out the body).
async fn respond<R, F>(
    method: &Method,
    path: &str,
    render: impl FnOnce() -> String,
    ready: R,
) -> Response<Full<Bytes>>
where
    R: FnOnce() -> F,
    F: std::future::Future<Output = Vec<String>>,
{
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return reply(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found: try /metrics\n".into(),
        );
    }
    if method != Method::GET && method != Method::HEAD {
        let mut response = reply(StatusCode::METHOD_NOT_ALLOWED, PLAIN, String::new());
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match path {
        "/metrics" => reply(StatusCode::OK, OPENMETRICS, render()),
        "/healthz" => reply(StatusCode::OK, PLAIN, "ok\n".into()),
        _ => {
            let problems = ready().await;
            if problems.is_empty() {
                reply(StatusCode::OK, PLAIN, "ready\n".into())
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    PLAIN,
                    problems.join("\n") + "\n",
                )
            }
        }
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::AuthResult;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// [`get`] within ten seconds.
    async fn fetch(addr: std::net::SocketAddr, request: &[u8]) -> String {
        tokio::time::timeout(Duration::from_secs(10), get(addr, request))
            .await
            .expect("the endpoint answers within 10 s")
    }

    async fn get(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        // The server may answer (and stop reading) before the whole request is written.
        let _ = s.write_all(request).await;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn the_endpoint_answers_metrics_404_405_and_bounds_the_request() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::default());
        metrics.auth(AuthResult::Ok);
        let stop = CancellationToken::new();
        let problems = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let seen = Arc::clone(&problems);
        let ready: ReadyCheck = Arc::new(move || {
            let now = seen.lock().unwrap().clone();
            Box::pin(async move { now })
        });
        let task = tokio::spawn(serve(
            listener,
            metrics,
            Arc::new(Stats::default()),
            ready,
            stop.clone(),
        ));
        let t = Duration::from_secs(10);
        let health = fetch(addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
        assert!(
            health.starts_with("HTTP/1.1 200 OK\r\n") && health.ends_with("\r\n\r\nok\n"),
            "{health}"
        );
        let ready = fetch(addr, b"GET /readyz HTTP/1.1\r\n\r\n").await;
        assert!(ready.ends_with("\r\n\r\nready\n"), "{ready}");
        problems.lock().unwrap().push("service x: unhealthy".into());
        let not = fetch(addr, b"GET /readyz HTTP/1.1\r\n\r\n").await;
        assert!(not.starts_with("HTTP/1.1 503 "), "{not}");
        assert!(not.ends_with("service x: unhealthy\n"), "{not}");
        let ok = fetch(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains(
                "\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n"
            ),
            "{ok}"
        );
        assert!(ok.contains("\r\nConnection: close\r\n"), "{ok}");
        assert!(
            ok.contains("\nlib_chan_auth_total{result=\"ok\"} 1\n"),
            "{ok}"
        );
        assert!(ok.ends_with("\n# EOF\n"), "{ok}");
        let body_len = ok.split_once("\r\n\r\n").unwrap().1.len();
        assert!(
            ok.contains(&format!("Content-Length: {body_len}\r\n")),
            "{ok}"
        );
        // HEAD: the same head, no body.
        let head = fetch(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "{head}");
        assert!(head.contains("application/openmetrics-text"), "{head}");
        let missing = fetch(addr, b"GET / HTTP/1.1\r\n\r\n").await;
        assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
        let post = fetch(addr, b"POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
        assert!(post.contains("\r\nAllow: GET, HEAD\r\n"), "{post}");
        let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_REQUEST * 2));
        let big = fetch(addr, &huge).await;
        assert!(big.starts_with("HTTP/1.1 431 "), "{big}");
        // A client that sends nothing is dropped after REQUEST_TIMEOUT, and does not
        // hold up the others meanwhile.
        let _idle = TcpStream::connect(addr).await.unwrap();
        let again = fetch(addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
        assert!(again.starts_with("HTTP/1.1 200 OK\r\n"), "{again}");
        stop.cancel();
        tokio::time::timeout(t, task).await.unwrap().unwrap();
    }
}

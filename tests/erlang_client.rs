//! A real Erlang node as the client: `tests/erlang/seed_session.escript` speaks to our
//! server with nothing but `ssl`, `{packet, 4}` and `term_to_binary` (issue: the core).

mod common;

use std::process::Command;

use common::TestServer;

#[tokio::test]
async fn erlang_ssl_client_runs_the_seed_session_and_pipelined_calls() {
    let server = TestServer::start().await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/erlang/seed_session.escript"
    );
    let port = server.addr.port().to_string();
    let ca = server.ca_path();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("escript")
            .args([script, "localhost", &port])
            .arg(&ca)
            .output()
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| {
        panic!("cannot run escript ({e}): install Erlang, e.g. `apt-get install erlang-base erlang-ssl erlang-public-key erlang-crypto erlang-asn1`")
    });
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "escript failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("seed session ok"), "{stdout}");
    assert!(stdout.contains("100 pipelined calls ok"), "{stdout}");
}

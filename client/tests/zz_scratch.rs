mod common;
use common::*;
use lib_chan_client::*;
use std::time::Instant;
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput() {
    let certs = Certs::localhost();
    let (addr, _p) = echo_peer(&certs, echo).await;
    let chan = certs.options().connect("127.0.0.1", addr.port(), "s", "p", Term::nil()).await.unwrap();
    let start = Instant::now();
    let tasks: Vec<_> = (0..50).map(|_| { let c = chan.clone(); tokio::spawn(async move { for i in 0..1000 { c.rpc(Term::Int(i)).await.unwrap(); } }) }).collect();
    for t in tasks { t.await.unwrap(); }
    eprintln!("50k pipelined rpcs: {:?}", start.elapsed());
    let start = Instant::now();
    for i in 0..5000 { chan.rpc(Term::Int(i)).await.unwrap(); }
    eprintln!("5k sequential rpcs: {:?}", start.elapsed());
}

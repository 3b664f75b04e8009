//! `mod_rpc` in a real server: `rpc:call` through the allow list, sharing the name
//! space of the name-server service its `args` names, and `undef` for everything else.

mod common;

use common::{password_hash, within, TestServer};
use lib_chan_client::{Channel, Error, Term};
use lib_chan_protocol::parse;
use lib_chan_server::{Config, ServiceConfig};

fn rpc_service(name: &str, args: &str, allow: &[&str]) -> ServiceConfig {
    let mut s = ServiceConfig::new(name, &password_hash(), "mod_rpc", parse(args).unwrap());
    s.options.allow = allow.iter().map(|a| a.to_string()).collect();
    s
}

async fn start() -> TestServer {
    TestServer::start_with(|c: &mut Config| {
        // Before nameServer: the name is resolved at call time, whatever the order.
        c.services.insert(
            0,
            rpc_service(
                "rpc",
                "nameServer",
                &["kvs:store/2", "kvs:lookup/1", "erlang:node/0"],
            ),
        );
        c.services
            .push(rpc_service("rpc_lookup", "nameServer", &["kvs:lookup/1"]));
    })
    .await
}

/// The reply to `request` (Erlang syntax), printed as the Erlang shell prints it.
async fn call(ch: &Channel, request: &str) -> String {
    within(request, ch.rpc(parse(request).unwrap()))
        .await
        .unwrap_or_else(|e| panic!("{request}: {e}"))
        .to_string()
}

#[tokio::test]
async fn kvs_through_mod_rpc_shares_the_name_servers_names() {
    let server = start().await;
    let rpc = server.connect("rpc").await;
    let names = server.connect("nameServer").await;

    // Stored through mod_rpc, seen by the name server's clients.
    assert_eq!(
        call(&rpc, "{apply, kvs, store, [weather, fine]}").await,
        "true"
    );
    assert_eq!(call(&names, "{lookup, weather}").await, "{ok,fine}");

    // And the other way round.
    assert_eq!(
        call(&names, r#"{store, joe, "writing a book"}"#).await,
        "true"
    );
    assert_eq!(
        call(&rpc, "{apply, kvs, lookup, [joe]}").await,
        r#"{ok,"writing a book"}"#
    );
    assert_eq!(call(&rpc, "{apply, kvs, lookup, [jim]}").await, "undefined");

    // A name server watcher sees a store made through mod_rpc.
    assert_eq!(call(&names, "{watch, weather}").await, "true");
    assert_eq!(
        call(&rpc, "{apply, kvs, store, [weather, rain]}").await,
        "true"
    );
    let pushed = within("watch push", names.recv()).await.expect("a push");
    assert_eq!(pushed.to_string(), "{changed,weather,{ok,rain}}");

    // erlang:node/0 names this server.
    let node = within("node", rpc.rpc(parse("{apply, erlang, node, []}").unwrap()))
        .await
        .unwrap();
    assert!(
        node.as_atom().is_some_and(|a| a.starts_with("lib_chan@")),
        "{node}"
    );

    // A send is rpc:cast: it runs, and nothing comes back.
    within(
        "cast",
        rpc.cast(parse("{apply, kvs, store, [cast, done]}").unwrap()),
    )
    .await
    .unwrap();
    assert_eq!(
        call(&rpc, "{apply, kvs, lookup, [cast]}").await,
        "{ok,done}"
    );

    // Not an apply request: a call error, as any service answers what it cannot read.
    match within("bad request", rpc.rpc(parse("{lookup, joe}").unwrap())).await {
        Err(Error::Remote(reason)) => {
            assert_eq!(reason.to_string(), "{bad_request,{lookup,joe}}")
        }
        other => panic!("{other:?}"),
    }
    rpc.close().await;
    names.close().await;
}

#[tokio::test]
async fn anything_not_allowed_is_undef_and_runs_nothing() {
    let server = start().await;
    let rpc = server.connect("rpc").await;
    let lookup_only = server.connect("rpc_lookup").await;
    let names = server.connect("nameServer").await;

    assert_eq!(
        call(&rpc, r#"{apply, os, cmd, ["rm -rf /"]}"#).await,
        r#"{badrpc,{'EXIT',{undef,[{os,cmd,["rm -rf /"],[]}]}}}"#
    );
    // Exported, but not in this entry's allow list: refused, and nothing is stored.
    assert_eq!(
        call(&lookup_only, "{apply, kvs, store, [weather, fine]}").await,
        "{badrpc,{'EXIT',{undef,[{kvs,store,[weather,fine],[]}]}}}"
    );
    assert_eq!(call(&names, "{lookup, weather}").await, "undefined");
    // The wrong arity is another function.
    assert_eq!(
        call(&rpc, "{apply, kvs, store, [weather]}").await,
        "{badrpc,{'EXIT',{undef,[{kvs,store,[weather],[]}]}}}"
    );
    assert_eq!(
        call(&lookup_only, "{apply, erlang, node, []}").await,
        "{badrpc,{'EXIT',{undef,[{erlang,node,[],[]}]}}}"
    );
    // What is allowed still works on that entry.
    assert_eq!(call(&names, "{store, weather, fine}").await, "true");
    assert_eq!(
        call(&lookup_only, "{apply, kvs, lookup, [weather]}").await,
        "{ok,fine}"
    );
    // A refusal does not end the channel.
    assert!(!rpc.is_closed());
    assert_eq!(
        call(&rpc, "{apply, kvs, lookup, [weather]}").await,
        "{ok,fine}"
    );
}

#[tokio::test]
async fn kvs_without_its_name_server_is_noproc() {
    let server = TestServer::start_with(|c: &mut Config| {
        c.services.push(rpc_service(
            "rpc",
            "noSuchService",
            &["kvs:store/2", "kvs:lookup/1"],
        ));
    })
    .await;
    let rpc = server.connect("rpc").await;
    assert_eq!(
        call(&rpc, "{apply, kvs, lookup, [k]}").await,
        "{badrpc,{'EXIT',{noproc,[{kvs,lookup,[k],[]}]}}}"
    );
}

#[test]
fn the_config_refuses_bad_allow_entries_at_their_line() {
    let (dir, certs) = common::make_certs();
    let registry = lib_chan_services::registry();
    let path = dir.path().join("lib_chan.conf");
    let text = |allow: &str, args: &str| {
        format!(
            "port = 0\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n\n[[service]]\nname = \"rpc\"\npassword = \"{}\"\nhandler = \"mod_rpc\"\nargs = \"{args}\"\nallow = {allow}\n",
            certs.cert.display(),
            certs.key.display(),
            password_hash()
        )
    };
    let good = Config::parse(
        &text(
            r#"["kvs:store/2", "kvs:lookup/1", "erlang:node/0"]"#,
            "nameServer",
        ),
        &path,
        &registry,
    )
    .unwrap();
    assert_eq!(
        good.services[0].options.allow,
        ["kvs:store/2", "kvs:lookup/1", "erlang:node/0"]
    );
    assert_eq!(good.services[0].args, Term::atom("nameServer"));

    let cases = [
        (
            r#"["kvs:store/2", "os:cmd/1"]"#,
            "nameServer",
            "allow[1]: `os:cmd/1` is not a function mod_rpc can run; it can run: erlang:node/0, kvs:lookup/1, kvs:store/2",
        ),
        (
            r#"["kvs:store"]"#,
            "nameServer",
            "allow[0]: `kvs:store` is not of the form module:function/arity",
        ),
        ("[]", "nameServer", "mod_rpc needs an `allow` list"),
        (r#"["kvs:lookup/1"]"#, "[]", "`args` must name the name-server service"),
    ];
    for (allow, args, words) in cases {
        let e = Config::parse(&text(allow, args), &path, &registry).unwrap_err();
        let shown = e.to_string();
        assert_eq!(e.line, Some(9), "{shown}");
        assert_eq!(e.key.as_deref(), Some("service[0].handler"), "{shown}");
        assert!(shown.contains(words), "{shown}");
    }
    // Another handler takes no allow list.
    let e = Config::parse(
        &text(r#"["kvs:lookup/1"]"#, "x").replace("mod_rpc", "mod_echo"),
        &path,
        &registry,
    )
    .unwrap_err();
    assert!(e.to_string().contains("takes no `allow` list"), "{e}");
}

//! Certificate checking: CA files, the server name override, and pinning.

mod common;

use common::{peer, within, Certs};
use lib_chan_client::rustls::{self, CertificateError};
use lib_chan_client::{ConnectOptions, Error, Term};

/// Starts a welcoming peer with `server_certs` and connects with `options`.
async fn try_connect(server_certs: &Certs, options: ConnectOptions) -> Result<(), Error> {
    let (addr, _peer) = peer(server_certs, |mut c| async move {
        c.accept(1 << 20).await;
        c.drain().await
    })
    .await;
    let chan = within(options.connect("127.0.0.1", addr.port(), "svc", "pw", Term::nil())).await?;
    within(chan.close()).await;
    Ok(())
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_with_a_hint() {
    let server = Certs::localhost();
    let other = Certs::localhost();
    let e = try_connect(&server, other.options()).await.unwrap_err();
    match &e {
        Error::Tls { error, .. } => assert_eq!(
            error,
            &rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        ),
        other => panic!("{other:?}"),
    }
    let m = e.to_string();
    assert!(m.starts_with("TLS handshake with 127.0.0.1:"), "{m}");
    assert!(
        m.ends_with(
            "failed: invalid peer certificate: UnknownIssuer (is --ca the CA that signed \
             the server's certificate?)"
        ),
        "{m}"
    );
}

#[tokio::test]
async fn another_ca_of_the_same_name_gets_the_same_hint() {
    // Two development CAs look alike by name; the signature then fails to verify.
    let server = Certs::with_ca_name("lib_chan development CA", &["127.0.0.1"]);
    let other = Certs::with_ca_name("lib_chan development CA", &["127.0.0.1"]);
    let e = try_connect(&server, other.options()).await.unwrap_err();
    assert!(matches!(e, Error::Tls { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("(is --ca the CA that signed the server's certificate?)"),
        "{e}"
    );
}

#[tokio::test]
async fn the_ca_can_come_from_a_file() {
    let certs = Certs::localhost();
    let dir = std::env::temp_dir().join(format!("lib_chan_client_ca_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ca.pem");
    std::fs::write(&path, &certs.ca_pem).unwrap();
    try_connect(&certs, ConnectOptions::new().ca_file(&path))
        .await
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn an_unreadable_ca_file_is_a_config_error() {
    let certs = Certs::localhost();
    let e = try_connect(
        &certs,
        ConnectOptions::new().ca_file("/nonexistent/lib_chan/ca.pem"),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e:?}");
}

#[tokio::test]
async fn server_name_override_checks_that_name_instead_of_the_address() {
    let certs = Certs::new(&["gandalf"]);
    // Dialling 127.0.0.1 and checking "gandalf" works.
    try_connect(&certs, certs.options().server_name("gandalf"))
        .await
        .unwrap();
    // Without the override, 127.0.0.1 is checked and is not in the certificate.
    let e = try_connect(&certs, certs.options()).await.unwrap_err();
    match &e {
        Error::Tls {
            error: rustls::Error::InvalidCertificate(c),
            message,
        } => {
            assert!(
                matches!(
                    c,
                    CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. }
                ),
                "{c:?}"
            );
            assert!(message.contains("--servername"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // Nor is another name.
    let e = try_connect(&certs, certs.options().server_name("saruman"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Tls { .. }), "{e:?}");
}

#[tokio::test]
async fn a_pinned_certificate_is_accepted_and_any_other_refused() {
    let certs = Certs::localhost();
    let pinned = ConnectOptions::new().pinned_cert_pem(&certs.leaf_pem);
    try_connect(&certs, pinned.clone()).await.unwrap();
    // A chain file pins its first certificate, the leaf.
    try_connect(
        &certs,
        ConnectOptions::new().pinned_cert_pem(&certs.chain_pem),
    )
    .await
    .unwrap();

    // Same names, same kind of CA, different certificate: refused.
    let other = Certs::localhost();
    let e = try_connect(&other, pinned).await.unwrap_err();
    assert!(matches!(e, Error::Tls { .. }), "{e:?}");
    assert!(e.to_string().contains("not the pinned certificate"), "{e}");

    // Pinning the CA instead of the server's own certificate is refused too.
    let e = try_connect(&certs, ConnectOptions::new().pinned_cert_pem(&certs.ca_pem))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not the pinned certificate"), "{e}");
}

#[tokio::test]
async fn a_pinned_certificate_can_come_from_a_file() {
    let certs = Certs::localhost();
    let dir = std::env::temp_dir().join(format!("lib_chan_client_pin_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("server.pem");
    std::fs::write(&path, &certs.chain_pem).unwrap();
    try_connect(&certs, ConnectOptions::new().pinned_cert_file(&path))
        .await
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_pinned_certificate_must_still_hold_the_name() {
    let certs = Certs::new(&["gandalf"]);
    let pinned = ConnectOptions::new().pinned_cert_pem(&certs.leaf_pem);
    let e = try_connect(&certs, pinned.clone()).await.unwrap_err();
    assert!(matches!(e, Error::Tls { .. }), "{e:?}");
    try_connect(&certs, pinned.server_name("gandalf"))
        .await
        .unwrap();
}

//! Login credentials of PROTOCOL.md section 4: the service password (version 1) and a
//! named user's password, Ed25519 signature or TLS client certificate (version 2,
//! section 4.1), with the message a key login signs (section 4.2).
//!
//! Shared by the server, which reads credentials, and the clients, which write them, so
//! that both build the signed message from the same code.

use std::fmt;

use crate::term::Term;

/// The longest user name, in UTF-8 bytes (section 4.1).
pub const MAX_USER_NAME: usize = 64;
/// The length of a challenge nonce (section 4.2).
pub const NONCE_LEN: usize = 32;
/// The length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// What every signed challenge message starts with, its NUL byte included.
pub const CHALLENGE_CONTEXT: &[u8] = b"lib_chan-ed25519-v2\0";

/// A password as received on the wire. Its `Debug` never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(pub Vec<u8>);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// The `Credential` of `start_service`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// The service's own password, shared by every client (the book's lib_chan).
    ServicePassword(Password),
    /// `{user, Name, Proof}`: a named user (version 2).
    User {
        /// The user's name as sent (an atom or a UTF-8 binary on the wire).
        name: String,
        /// What proves it.
        proof: Proof,
    },
}

/// How a named user proves who it is.
#[derive(Clone, PartialEq, Eq)]
pub enum Proof {
    /// `{password, P}`: the user's own password.
    Password(Password),
    /// `{ed25519, Signature}`: a signature of the challenge message. Any length is read
    /// here; the server refuses one that is not [`SIGNATURE_LEN`] bytes.
    Ed25519(Vec<u8>),
    /// `certificate`: the TLS client certificate of this connection.
    Certificate,
}

impl fmt::Debug for Proof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proof::Password(_) => "Password(<redacted>)",
            Proof::Ed25519(_) => "Ed25519(<signature>)",
            Proof::Certificate => "Certificate",
        })
    }
}

impl Proof {
    /// The credential kind, as logs and metrics name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Proof::Password(_) => "password",
            Proof::Ed25519(_) => "ed25519",
            Proof::Certificate => "certificate",
        }
    }
}

impl Credential {
    /// The credential kind, as logs and metrics name it: `service_password`,
    /// `password`, `ed25519` or `certificate`.
    pub fn kind(&self) -> &'static str {
        match self {
            Credential::ServicePassword(_) => "service_password",
            Credential::User { proof, .. } => proof.kind(),
        }
    }

    /// The user named, if any.
    pub fn user(&self) -> Option<&str> {
        match self {
            Credential::ServicePassword(_) => None,
            Credential::User { name, .. } => Some(name),
        }
    }

    /// The term sent in `start_service`.
    pub fn to_term(&self) -> Term {
        match self {
            Credential::ServicePassword(p) => Term::binary(&p.0),
            Credential::User { name, proof } => {
                let proof = match proof {
                    Proof::Password(p) => Term::tuple([Term::atom("password"), Term::binary(&p.0)]),
                    Proof::Ed25519(sig) => Term::tuple([Term::atom("ed25519"), Term::binary(sig)]),
                    Proof::Certificate => Term::atom("certificate"),
                };
                Term::tuple([Term::atom("user"), Term::binary(name.as_bytes()), proof])
            }
        }
    }

    /// Reads a `Credential` term; `None` when it is none of the forms of section 4.
    pub fn from_term(t: &Term) -> Option<Credential> {
        match t {
            Term::Binary(b) => Some(Credential::ServicePassword(Password(b.to_vec()))),
            Term::List(_) => Some(Credential::ServicePassword(Password(
                t.as_charlist()?.into_bytes(),
            ))),
            Term::Tuple(items) => match &items[..] {
                [tag, name, proof] if tag.is_atom("user") => Some(Credential::User {
                    name: text(name)?,
                    proof: read_proof(proof)?,
                }),
                _ => None,
            },
            _ => None,
        }
    }
}

/// An atom or a UTF-8 binary, as text.
fn text(t: &Term) -> Option<String> {
    match t {
        Term::Atom(a) => Some(a.as_str().to_owned()),
        Term::Binary(b) => std::str::from_utf8(b).ok().map(str::to_owned),
        _ => None,
    }
}

fn read_proof(t: &Term) -> Option<Proof> {
    if t.is_atom("certificate") {
        return Some(Proof::Certificate);
    }
    match t.as_tuple()? {
        [tag, p] if tag.is_atom("password") => match p {
            Term::Binary(b) => Some(Proof::Password(Password(b.to_vec()))),
            Term::List(_) => Some(Proof::Password(Password(p.as_charlist()?.into_bytes()))),
            _ => None,
        },
        [tag, Term::Binary(sig)] if tag.is_atom("ed25519") => Some(Proof::Ed25519(sig.to_vec())),
        _ => None,
    }
}

/// The message a key login signs (section 4.2):
/// `<<"lib_chan-ed25519-v2", 0, Nonce:32/binary, CertHash:32/binary,
/// (byte_size(Name)):16, Name/binary, (byte_size(Service)):16, Service/binary>>`.
///
/// `cert_hash` is the SHA-256 of the DER of the server's end-entity certificate as seen in
/// this connection's TLS handshake. Names longer than 65535 bytes are cut to that length
/// (no valid user or service name is that long, so such a login fails anyway).
pub fn challenge_message(
    nonce: &[u8; NONCE_LEN],
    cert_hash: &[u8; 32],
    user: &str,
    service: &str,
) -> Vec<u8> {
    let mut msg = Vec::with_capacity(CHALLENGE_CONTEXT.len() + 64 + 4 + user.len() + service.len());
    msg.extend_from_slice(CHALLENGE_CONTEXT);
    msg.extend_from_slice(nonce);
    msg.extend_from_slice(cert_hash);
    for part in [user.as_bytes(), service.as_bytes()] {
        let part = &part[..part.len().min(usize::from(u16::MAX))];
        msg.extend_from_slice(&(part.len() as u16).to_be_bytes());
        msg.extend_from_slice(part);
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;

    #[test]
    fn every_credential_form_reads_and_round_trips() {
        let cases = [
            (
                r#"<<"ABXy45">>"#,
                Credential::ServicePassword(Password(b"ABXy45".to_vec())),
            ),
            (
                r#""ABXy45""#,
                Credential::ServicePassword(Password(b"ABXy45".to_vec())),
            ),
            (
                r#"{user, alice, {password, "pw"}}"#,
                Credential::User {
                    name: "alice".into(),
                    proof: Proof::Password(Password(b"pw".to_vec())),
                },
            ),
            (
                r#"{user, <<"bob">>, {ed25519, <<1,2,3>>}}"#,
                Credential::User {
                    name: "bob".into(),
                    proof: Proof::Ed25519(vec![1, 2, 3]),
                },
            ),
            (
                r#"{user, carol, certificate}"#,
                Credential::User {
                    name: "carol".into(),
                    proof: Proof::Certificate,
                },
            ),
        ];
        for (text, want) in cases {
            let got = Credential::from_term(&parse(text).unwrap()).unwrap();
            assert_eq!(got, want, "{text}");
            assert_eq!(Credential::from_term(&got.to_term()).unwrap(), want);
        }
        for bad in [
            "42",
            "{user, alice}",
            "{user, 42, certificate}",
            "{user, alice, {ed25519, \"not a binary\"}}",
            "{user, alice, {password, 42}}",
            "{user, alice, nothing}",
            "{user, <<255>>, certificate}",
        ] {
            assert_eq!(Credential::from_term(&parse(bad).unwrap()), None, "{bad}");
        }
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let c = Credential::User {
            name: "alice".into(),
            proof: Proof::Password(Password(b"hunter2".to_vec())),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        let s = Credential::ServicePassword(Password(b"hunter2".to_vec()));
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn the_challenge_message_has_the_layout_of_section_4_2() {
        let msg = challenge_message(&[7; 32], &[9; 32], "alice", "nameServer");
        let mut want = b"lib_chan-ed25519-v2\0".to_vec();
        want.extend_from_slice(&[7; 32]);
        want.extend_from_slice(&[9; 32]);
        want.extend_from_slice(&[0, 5]);
        want.extend_from_slice(b"alice");
        want.extend_from_slice(&[0, 10]);
        want.extend_from_slice(b"nameServer");
        assert_eq!(msg, want);
    }
}

//! Service passwords: argon2id hashing, the hash policy, and bounded verification.
//!
//! The config stores only argon2id PHC strings. Verification costs tens of milliseconds
//! of CPU and memory in the megabytes, so it never runs on the async worker threads: a
//! [`PasswordChecker`] runs it on `max_password_checks` dedicated threads, with a bounded
//! queue behind; past the queue the client is told `busy`. An
//! unknown service runs a dummy verification with the same parameters, so a client
//! cannot tell it from a wrong password by the reply or by the time it takes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

/// The argon2 parameters new hashes get: the OWASP floor (m = 19 MiB, t = 2, p = 1).
pub fn default_params() -> Params {
    Params::default()
}

/// Hashes `password` as an argon2id PHC string with a random 16-byte salt.
///
/// # Panics
/// Never in practice: the default parameters are valid.
pub fn hash_password(password: &[u8]) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, default_params())
        .hash_password(password, &salt)
        .expect("default argon2 parameters are valid")
        .to_string()
}

/// A stored hash outside the policy. Verification runs with the hash's own parameters,
/// so one crafted hash could otherwise make each login cost hundreds of megabytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashPolicyError {
    /// Not a PHC string at all (probably a plaintext password).
    #[error("not an argon2 PHC string")]
    NotAHash,
    /// A PHC string that does not parse.
    #[error("malformed argon2 hash: {0}")]
    Malformed(String),
    /// Another algorithm than argon2id.
    #[error("algorithm {0} refused: only argon2id hashes are accepted")]
    Algorithm(String),
    /// Parameters outside the allowed range.
    #[error("argon2 parameters {0} refused: allowed are m from 19456 to 65536 KiB, t from 2 to 4, p from 1 to 4, salt of 16 bytes or more")]
    Params(String),
}

/// Checks a stored hash against the policy: argon2id, m 19 to 64 MiB, t 2 to 4, p 1 to 4,
/// salt of 16 bytes or more.
///
/// # Errors
/// [`HashPolicyError`] saying which rule it breaks.
pub fn check_hash_policy(phc: &str) -> Result<(), HashPolicyError> {
    if !phc.starts_with("$argon2") {
        return Err(HashPolicyError::NotAHash);
    }
    let hash = PasswordHash::new(phc).map_err(|e| HashPolicyError::Malformed(e.to_string()))?;
    if hash.algorithm != argon2::ARGON2ID_IDENT {
        return Err(HashPolicyError::Algorithm(hash.algorithm.to_string()));
    }
    let params = Params::try_from(&hash).map_err(|e| HashPolicyError::Malformed(e.to_string()))?;
    let salt_len = hash.salt.map_or(0, |s| {
        let mut buf = [0u8; 64];
        s.decode_b64(&mut buf).map_or(0, |b| b.len())
    });
    let ok = (19_456..=65_536).contains(&params.m_cost())
        && (2..=4).contains(&params.t_cost())
        && (1..=4).contains(&params.p_cost())
        && salt_len >= 16
        && hash.hash.is_some();
    if !ok {
        return Err(HashPolicyError::Params(format!(
            "m={},t={},p={} with a {salt_len}-byte salt",
            params.m_cost(),
            params.t_cost(),
            params.p_cost()
        )));
    }
    Ok(())
}

/// Verifies `password` against a PHC string (synchronously: call off the async threads).
pub fn verify_password(phc: &str, password: &[u8]) -> bool {
    match PasswordHash::new(phc) {
        Ok(hash) => Argon2::default().verify_password(password, &hash).is_ok(),
        Err(_) => false,
    }
}

thread_local! {
    /// The argon2 working memory of this thread, kept between verifications: allocating
    /// 19 MiB or more per check would churn the allocator and grow its arenas.
    static BLOCKS: std::cell::RefCell<Vec<argon2::Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// As [`verify_password`], reusing this thread's working memory. Only for hashes that
/// passed [`check_hash_policy`] (which bounds the memory to 64 MiB); others fall back.
fn verify_password_reusing_memory(phc: &str, password: &[u8]) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    let (Ok(params), Some(expected), Some(salt)) = (Params::try_from(&hash), hash.hash, hash.salt)
    else {
        return false;
    };
    if hash.algorithm != argon2::ARGON2ID_IDENT || params.m_cost() > 65_536 {
        return verify_password(phc, password);
    }
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let version = hash
        .version
        .and_then(|v| Version::try_from(v).ok())
        .unwrap_or(Version::V0x13);
    let block_count = params.block_count();
    let argon = Argon2::new(Algorithm::Argon2id, version, params);
    let mut out = vec![0u8; expected.len()];
    let computed = BLOCKS.with(|blocks| {
        let mut blocks = blocks.borrow_mut();
        if blocks.len() < block_count {
            blocks.resize(block_count, argon2::Block::default());
        }
        argon
            .hash_password_into_with_memory(password, salt, &mut out, &mut blocks[..block_count])
            .is_ok()
    });
    // Constant-time comparison: the time must not tell how many bytes matched.
    computed
        && out
            .iter()
            .zip(expected.as_bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The answer of a bounded password check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckOutcome {
    /// The password matches the service's hash.
    Valid,
    /// Unknown service or wrong password (indistinguishable on purpose).
    Invalid,
    /// Every verification slot and queue place is taken.
    Busy,
}

/// Runs argon2 verifications on a few dedicated threads with a bound on how many wait.
///
/// Dedicated threads rather than tokio's blocking pool: each verification allocates
/// the hash's memory cost (19 MiB by default), and the allocator keeps such blocks in a
/// per-thread arena; on a pool of hundreds of threads that is hundreds of megabytes.
#[derive(Debug, Clone)]
pub struct PasswordChecker {
    inner: Arc<CheckerInner>,
}

type Job = Box<dyn FnOnce() + Send>;

#[derive(Debug)]
struct CheckerInner {
    /// Work for the verification threads; they end when this is dropped.
    jobs: Mutex<std::sync::mpsc::Sender<Job>>,
    /// One permit per verification allowed to run at once.
    running: Semaphore,
    /// Checks running or waiting; past `running + queue` new ones are refused.
    admitted: AtomicUsize,
    /// How many may be admitted at most.
    max_admitted: usize,
    /// A hash with the default parameters, verified for unknown services.
    dummy_hash: String,
}

impl PasswordChecker {
    /// A checker running at most `concurrent` verifications with `queue` more waiting.
    pub fn new(concurrent: usize, queue: usize) -> PasswordChecker {
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..concurrent.max(1) {
            let rx = Arc::clone(&rx);
            let spawned = std::thread::Builder::new()
                .name(format!("lib_chan-argon2-{i}"))
                .spawn(move || loop {
                    let job = match rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password-check thread");
            }
        }
        PasswordChecker {
            inner: Arc::new(CheckerInner {
                jobs: Mutex::new(jobs),
                running: Semaphore::new(concurrent.max(1)),
                admitted: AtomicUsize::new(0),
                max_admitted: concurrent.max(1) + queue,
                dummy_hash: hash_password(b"lib_chan dummy password for unknown services"),
            }),
        }
    }

    /// Checks `password` against `phc`, or against the dummy hash when the service is
    /// unknown (`phc` is `None`), which then always ends `Invalid`.
    pub async fn check(&self, phc: Option<&str>, password: Vec<u8>) -> CheckOutcome {
        let inner = &self.inner;
        if inner.admitted.fetch_add(1, Ordering::AcqRel) >= inner.max_admitted {
            inner.admitted.fetch_sub(1, Ordering::AcqRel);
            return CheckOutcome::Busy;
        }
        let _admitted = AdmittedGuard(&inner.admitted);
        let Ok(_permit) = inner.running.acquire().await else {
            return CheckOutcome::Busy;
        };
        let known = phc.is_some();
        let hash = phc.unwrap_or(&inner.dummy_hash).to_owned();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(verify_password_reusing_memory(&hash, &password));
        });
        let sent = inner
            .jobs
            .lock()
            .map(|jobs| jobs.send(job).is_ok())
            .unwrap_or(false);
        let matched = sent && rx.await.unwrap_or(false);
        if matched && known {
            CheckOutcome::Valid
        } else {
            CheckOutcome::Invalid
        }
    }
}

/// Gives an admission back when a check ends, however it ends (even if cancelled).
struct AdmittedGuard<'a>(&'a AtomicUsize);

impl Drop for AdmittedGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_meet_the_policy() {
        let h = hash_password(b"ABXy45");
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert_eq!(check_hash_policy(&h), Ok(()));
        assert!(verify_password(&h, b"ABXy45"));
        assert!(!verify_password(&h, b"ABXy46"));
        // The memory-reusing path agrees, also across calls on one thread.
        for _ in 0..2 {
            assert!(verify_password_reusing_memory(&h, b"ABXy45"));
            assert!(!verify_password_reusing_memory(&h, b"ABXy46"));
            assert!(!verify_password_reusing_memory(&h, b""));
        }
        assert!(!verify_password_reusing_memory("garbage", b"ABXy45"));
    }

    #[test]
    fn policy_refuses_plaintext_other_algorithms_and_costly_params() {
        assert_eq!(check_hash_policy("ABXy45"), Err(HashPolicyError::NotAHash));
        assert!(!matches!(
            check_hash_policy("$argon2id$garbage"),
            Ok(()) | Err(HashPolicyError::NotAHash)
        ));
        let salt = "c2FsdHNhbHRzYWx0c2FsdA"; // 16 bytes
        let out = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"; // 32 bytes
        let with = |alg: &str, params: &str| format!("${alg}$v=19${params}${salt}${out}");
        assert!(matches!(
            check_hash_policy(&with("argon2i", "m=19456,t=2,p=1")),
            Err(HashPolicyError::Algorithm(_))
        ));
        assert_eq!(
            check_hash_policy(&with("argon2id", "m=19456,t=2,p=1")),
            Ok(())
        );
        for bad in [
            "m=262144,t=2,p=1",
            "m=8,t=2,p=1",
            "m=19456,t=1,p=1",
            "m=19456,t=10,p=1",
            "m=19456,t=2,p=8",
        ] {
            assert!(
                matches!(
                    check_hash_policy(&with("argon2id", bad)),
                    Err(HashPolicyError::Params(_))
                ),
                "{bad}"
            );
        }
        let short_salt = format!("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA${out}");
        assert!(matches!(
            check_hash_policy(&short_salt),
            Err(HashPolicyError::Params(_))
        ));
    }

    #[tokio::test]
    async fn unknown_service_is_invalid_and_the_queue_is_bounded() {
        let checker = PasswordChecker::new(1, 0);
        let h = hash_password(b"pw");
        assert_eq!(
            checker.check(Some(&h), b"pw".to_vec()).await,
            CheckOutcome::Valid
        );
        assert_eq!(
            checker.check(Some(&h), b"no".to_vec()).await,
            CheckOutcome::Invalid
        );
        assert_eq!(
            checker.check(None, b"pw".to_vec()).await,
            CheckOutcome::Invalid
        );
        // One running, none may wait: a second concurrent check is refused.
        let (a, b) = tokio::join!(
            checker.check(Some(&h), b"pw".to_vec()),
            checker.check(Some(&h), b"pw".to_vec())
        );
        let mut outcomes = [a, b];
        outcomes.sort_by_key(|o| *o as u8);
        assert_eq!(outcomes, [CheckOutcome::Valid, CheckOutcome::Busy]);
    }
}

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

impl HashPolicyError {
    /// The message a config error shows: for a plaintext password, how to make its hash.
    pub fn config_message(&self) -> String {
        match self {
            HashPolicyError::NotAHash => "plaintext password refused: store only its hash; run \
                 `lib_chan hash-password`, type the password, and paste the $argon2id$... line it prints"
                .to_owned(),
            other => other.to_string(),
        }
    }
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

/// Credentials verified recently, so that a client reconnecting with a password the
/// server has already checked does not pay for argon2 again.
///
/// Entries are HMAC-SHA256 tags of (service, stored hash, password) under a key drawn at
/// start-up: the cache never holds a password, a changed hash (a config reload) misses
/// naturally, and only successes are cached, so every wrong password still pays the
/// full price.
struct CredentialCache {
    key: ring::hmac::Key,
    entries: Mutex<std::collections::HashMap<[u8; 32], std::time::Instant>>,
}

impl std::fmt::Debug for CredentialCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialCache").finish_non_exhaustive()
    }
}

impl CredentialCache {
    /// Entries kept at most; past it the oldest is dropped.
    const CAPACITY: usize = 4096;
    /// How long a verified credential is trusted without argon2.
    const TTL: std::time::Duration = std::time::Duration::from_secs(3600);

    fn new() -> CredentialCache {
        let rng = ring::rand::SystemRandom::new();
        let key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng)
            .expect("the system random generator works");
        CredentialCache {
            key,
            entries: Mutex::new(std::collections::HashMap::new()),
        }
    }

    fn tag(&self, service: &str, phc: &str, password: &[u8]) -> [u8; 32] {
        let mut ctx = ring::hmac::Context::with_key(&self.key);
        for part in [service.as_bytes(), phc.as_bytes(), password] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    fn contains(&self, tag: &[u8; 32]) -> bool {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(tag).is_some_and(|at| at.elapsed() < Self::TTL)
    }

    fn insert(&self, tag: [u8; 32]) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= Self::CAPACITY {
            entries.retain(|_, at| at.elapsed() < Self::TTL);
            if entries.len() >= Self::CAPACITY {
                if let Some(oldest) = entries.iter().min_by_key(|(_, at)| **at).map(|(k, _)| *k) {
                    entries.remove(&oldest);
                }
            }
        }
        entries.insert(tag, std::time::Instant::now());
    }
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
    /// Credentials verified recently.
    verified: CredentialCache,
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
                verified: CredentialCache::new(),
            }),
        }
    }

    /// Checks `password` against `phc`, or against the dummy hash when the service is
    /// unknown (`phc` is `None`), which then always ends `Invalid`. `service` keys the
    /// cache of verified credentials.
    pub async fn check(&self, service: &str, phc: Option<&str>, password: Vec<u8>) -> CheckOutcome {
        let inner = &self.inner;
        let tag = phc.map(|phc| inner.verified.tag(service, phc, &password));
        if tag.as_ref().is_some_and(|t| inner.verified.contains(t)) {
            return CheckOutcome::Valid;
        }
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
            if let Some(tag) = tag {
                inner.verified.insert(tag);
            }
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
            checker.check("s", Some(&h), b"no".to_vec()).await,
            CheckOutcome::Invalid
        );
        assert_eq!(
            checker.check("s", None, b"pw".to_vec()).await,
            CheckOutcome::Invalid
        );
        // One running, none may wait: a second concurrent check is refused.
        let (a, b) = tokio::join!(
            checker.check("s", Some(&h), b"pw".to_vec()),
            checker.check("s", Some(&h), b"pw".to_vec())
        );
        let mut outcomes = [a, b];
        outcomes.sort_by_key(|o| *o as u8);
        assert_eq!(outcomes, [CheckOutcome::Valid, CheckOutcome::Busy]);
    }

    #[tokio::test]
    async fn verified_credentials_skip_argon2_but_wrong_ones_never_do() {
        let checker = PasswordChecker::new(1, 0);
        let h = hash_password(b"pw");
        assert_eq!(
            checker.check("s", Some(&h), b"pw".to_vec()).await,
            CheckOutcome::Valid
        );
        // Cached: answered even with no verification slot free (the queue is 0 and the
        // one slot is taken by a wrong-password check running at the same time).
        let (wrong, right) = tokio::join!(
            checker.check("s", Some(&h), b"no".to_vec()),
            checker.check("s", Some(&h), b"pw".to_vec())
        );
        assert_eq!(right, CheckOutcome::Valid);
        assert_eq!(wrong, CheckOutcome::Invalid);
        // Another service with the same hash and password is another credential; a
        // changed hash misses; a wrong password is never cached.
        let cache = &checker.inner.verified;
        assert!(!cache.contains(&cache.tag("t", &h, b"pw")));
        assert!(!cache.contains(&cache.tag("s", &hash_password(b"pw"), b"pw")));
        assert!(!cache.contains(&cache.tag("s", &h, b"no")));
        assert!(cache.contains(&cache.tag("s", &h, b"pw")));
    }
}

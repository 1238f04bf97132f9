//! Password hashing with argon2id on a bounded pool of workers, with no timing oracle.
//!
//! Each argon2id computation needs 19 MiB. Run on tokio's blocking pool, every hash
//! allocated and freed its own block on whichever thread ran it, and glibc kept each freed
//! block in that thread's arena: a flood of failed logins took the process to gigabytes.
//! Here a fixed set of worker threads (one per core) each owns one block for its lifetime
//! and reuses it, so memory is bounded by `workers × 19 MiB`. A bounded queue sits in
//! front; when it is full the caller gets [`Error::Busy`] at once instead of piling up.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};

use argon2::password_hash::{Output, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;

use crate::secret::random_bytes;
use crate::{Error, Result};

/// Shortest password we accept.
pub const MIN_LENGTH: usize = 10;
/// Longest password we accept (argon2 would take more, but nobody types this much).
pub const MAX_LENGTH: usize = 256;

/// OWASP's argon2id recommendation: 19 MiB, 2 passes, 1 lane.
const M_COST_KIB: u32 = 19 * 1024;
const T_COST: u32 = 2;
const P_COST: u32 = 1;
/// Stored hashes with a bigger memory cost than this are refused rather than letting a
/// worker hold more (256 MiB); ours use 19 MiB.
const MAX_M_COST_KIB: u32 = 256 * 1024;
/// Hashes that may wait for a worker, per worker, unless configured: a burst of this size
/// is absorbed (about a second of work per worker), anything beyond it is refused as busy.
pub const QUEUE_PER_WORKER: usize = 32;

/// Checks length rules; returns a message a person can act on.
pub fn check_policy(password: &str) -> Result<()> {
    let len = password.chars().count();
    if len < MIN_LENGTH {
        return Err(Error::Invalid(format!("password must have at least {MIN_LENGTH} characters")));
    }
    if len > MAX_LENGTH {
        return Err(Error::Invalid(format!("password must have at most {MAX_LENGTH} characters")));
    }
    Ok(())
}

/// The common and breached passwords refused by [`check_policy_for`]: a file in the repo,
/// `data/common-passwords.txt` (the top 10,000 of zxcvbn 4.5.0's leaked-password list plus
/// common Italian choices; `data/make-common-passwords.py` regenerates it), lower case.
const COMMON_PASSWORDS: &str = include_str!("../data/common-passwords.txt");

/// Fewest different characters a password may use (`aaaaaaaaaa`, `1212121212`).
const MIN_DISTINCT: usize = 4;

fn common_passwords() -> &'static HashSet<&'static str> {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| {
        COMMON_PASSWORDS.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect()
    })
}

/// Whether `password`, compared case-insensitively, is on the common list, either as it
/// is or once the digits and symbols around a word are taken off (`Summer2024!`).
pub fn is_common(password: &str) -> bool {
    let lower = password.to_lowercase();
    let list = common_passwords();
    if list.contains(lower.as_str()) {
        return true;
    }
    let core = lower.trim_matches(|c: char| !c.is_alphabetic());
    core.chars().count() >= 4 && core != lower && list.contains(core)
}

/// The full policy for a password a person chooses: the length rules of [`check_policy`],
/// at least a few different characters, not the email or the part of it before the `@`,
/// and not on the common list ([`is_common`]). Each refusal names its rule.
pub fn check_policy_for(password: &str, email: &str) -> Result<()> {
    check_policy(password)?;
    let distinct: HashSet<char> = password.chars().collect();
    if distinct.len() < MIN_DISTINCT {
        return Err(Error::Invalid(format!("password must use at least {MIN_DISTINCT} different characters")));
    }
    let lower = password.to_lowercase();
    let email = email.trim().to_lowercase();
    let local = email.split('@').next().unwrap_or("");
    if lower == email || (local.chars().count() >= 3 && lower.contains(local)) {
        return Err(Error::Invalid("password must not contain your email address or the part before the @".into()));
    }
    if is_common(password) {
        return Err(Error::Invalid(
            "password is too common: it is on a list of leaked or often-used passwords; choose another".into(),
        ));
    }
    Ok(())
}

/// Hashes `password` into a PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`) on the
/// hashing pool; [`Error::Busy`] when its queue is full.
pub async fn hash(password: String) -> Result<String> {
    pool().run(move |memory| hash_with(memory, password.as_bytes())).await?
}

/// Verifies `password` against `stored` on the hashing pool. With no stored hash (unknown
/// user, or a user without a password) the same work is done against a dummy and the
/// answer is `false`, so response time does not tell whether a user exists. An unreadable
/// stored hash is `false`; a full queue is [`Error::Busy`].
pub async fn verify(password: String, stored: Option<String>) -> Result<bool> {
    pool().run(move |memory| verify_or_dummy(memory, password.as_bytes(), stored.as_deref())).await
}

fn verify_or_dummy(memory: &mut Memory, password: &[u8], stored: Option<&str>) -> bool {
    match stored {
        Some(stored) => verify_with(memory, password, stored),
        None => {
            // Same parameters as a real hash, so the same time; the result is discarded.
            let _ = compute(memory, &default_params(), Algorithm::Argon2id, Version::V0x13, password, &[0; 16]);
            false
        }
    }
}

/// How big the hashing pool is: each worker holds one 19 MiB block for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSize {
    /// Hashing threads; at most this many hashes run at once.
    pub workers: usize,
    /// Hashes that may wait for a worker; one more is refused with [`Error::Busy`].
    pub queue: usize,
}

impl PoolSize {
    /// The size for `workers` threads (one per core when `None`) and a queue of `queue`
    /// (`QUEUE_PER_WORKER` per worker when `None`).
    pub fn new(workers: Option<usize>, queue: Option<usize>) -> Self {
        let workers = workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, usize::from)).max(1);
        Self { workers, queue: queue.unwrap_or(workers * QUEUE_PER_WORKER) }
    }
}

impl Default for PoolSize {
    fn default() -> Self {
        Self::new(None, None)
    }
}

static POOL: OnceLock<(PoolSize, Pool)> = OnceLock::new();

/// Sizes the process's hashing pool and starts it. The pool starts once: when it already
/// runs (an earlier call, or a hash before any call) this changes nothing and returns the
/// size in force, so a caller can tell its wish was not applied.
pub fn configure(size: PoolSize) -> PoolSize {
    POOL.get_or_init(|| (size, Pool::start(size.workers, size.queue))).0
}

/// Memory a worker owns and reuses for every computation.
type Memory = Vec<Block>;
type Job = Box<dyn FnOnce(&mut Memory) + Send>;

/// A fixed set of hashing threads behind a bounded queue.
struct Pool {
    queue: SyncSender<Job>,
}

impl Pool {
    fn start(workers: usize, capacity: usize) -> Self {
        let (queue, jobs) = sync_channel::<Job>(capacity);
        let jobs = Arc::new(Mutex::new(jobs));
        for n in 0..workers {
            let jobs = jobs.clone();
            let spawned = std::thread::Builder::new().name(format!("ponte-argon2-{n}")).spawn(move || work(&jobs));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start a password hashing worker");
            }
        }
        Self { queue }
    }
}

/// A worker: takes jobs one at a time until the pool is gone, always with its own memory.
/// A job that panics fails alone: its caller's answer channel is dropped (an error for
/// that request) and the thread lives on, so the pool never shrinks.
fn work(jobs: &Mutex<Receiver<Job>>) {
    let mut memory = Memory::new();
    loop {
        // The lock is held only while waiting for the next job, never while hashing.
        let job = match jobs.lock() {
            Ok(receiver) => receiver.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => {
                // The memory is scratch space whatever the job left in it, so it is safe to reuse.
                if std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut memory))).is_err() {
                    tracing::error!("a password hashing job panicked; its request failed, the worker goes on");
                }
            }
            Err(_) => return,
        }
    }
}

fn pool() -> &'static Pool {
    let (_, pool) = POOL.get_or_init(|| {
        let size = PoolSize::default();
        (size, Pool::start(size.workers, size.queue))
    });
    pool
}

impl Pool {
    /// Runs `f` on a hashing worker and waits for its answer without blocking the runtime.
    async fn run<T: Send + 'static>(&self, f: impl FnOnce(&mut Memory) -> T + Send + 'static) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |memory| {
            let _ = reply.send(f(memory));
        });
        match self.queue.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                tracing::debug!("password hashing queue full");
                return Err(Error::Busy);
            }
            Err(TrySendError::Disconnected(_)) => return Err(Error::Crypto("password hashing pool stopped".into())),
        }
        // No answer: the job panicked (the worker caught it and goes on).
        answer.await.map_err(|_| Error::Crypto("password hashing failed".into()))
    }
}

fn default_params() -> Params {
    Params::new(M_COST_KIB, T_COST, P_COST, None).unwrap_or_default()
}

/// The raw argon2 output for `password`, computed in `memory` (grown once if too small).
fn compute(
    memory: &mut Memory,
    params: &Params,
    algorithm: Algorithm,
    version: Version,
    password: &[u8],
    salt: &[u8],
) -> Result<Vec<u8>> {
    if params.m_cost() > MAX_M_COST_KIB {
        return Err(Error::Crypto(format!("argon2 memory cost {} KiB is above the limit", params.m_cost())));
    }
    let needed = params.block_count();
    if memory.len() < needed {
        memory.resize(needed, Block::new());
    }
    let mut out = vec![0u8; params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN)];
    Argon2::new(algorithm, version, params.clone())
        .hash_password_into_with_memory(password, salt, &mut out, &mut memory[..needed])
        .map_err(|e| Error::Crypto(e.to_string()))?;
    Ok(out)
}

fn hash_with(memory: &mut Memory, password: &[u8]) -> Result<String> {
    let salt = random_bytes::<16>();
    let params = default_params();
    let out = compute(memory, &params, Algorithm::Argon2id, Version::V0x13, password, &salt)?;
    let crypto = |e: argon2::password_hash::Error| Error::Crypto(e.to_string());
    let salt = SaltString::encode_b64(&salt).map_err(crypto)?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: (&params).try_into().map_err(crypto)?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(crypto)?),
    };
    Ok(phc.to_string())
}

/// Re-hashes with the stored hash's own algorithm, version, parameters and salt, and
/// compares in constant time.
fn verify_with(memory: &mut Memory, password: &[u8], stored: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(stored) else { return false };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else { return false };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else { return false };
    let version = match parsed.version.map(Version::try_from) {
        None => Version::V0x13,
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let Ok(params) = Params::try_from(&parsed) else { return false };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else { return false };
    match compute(memory, &params, algorithm, version, password, salt) {
        Ok(out) => out.as_slice().ct_eq(expected.as_bytes()).into(),
        Err(e) => {
            tracing::warn!(error = %e, "stored password hash could not be checked");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher, PasswordVerifier};

    #[tokio::test]
    async fn hash_then_verify() {
        let h = hash("correct horse battery".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify("correct horse battery".into(), Some(h.clone())).await.unwrap());
        assert!(!verify("wrong horse battery".into(), Some(h)).await.unwrap());
    }

    #[tokio::test]
    async fn unknown_user_never_verifies_even_with_dummy_password() {
        assert!(!verify("ponte-dummy-password".into(), None).await.unwrap());
        assert!(!verify(String::new(), None).await.unwrap());
    }

    #[tokio::test]
    async fn hashes_made_by_the_argon2_crate_still_verify_and_ours_verify_there() {
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, default_params());
        let salt = SaltString::encode_b64(&[7u8; 16]).unwrap();
        let theirs = argon2.hash_password(b"correct horse battery", &salt).unwrap().to_string();
        assert!(verify("correct horse battery".into(), Some(theirs.clone())).await.unwrap());
        assert!(!verify("correct horse batterY".into(), Some(theirs)).await.unwrap());

        let ours = hash("correct horse battery".into()).await.unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(argon2.verify_password(b"correct horse battery", &parsed).is_ok());
    }

    #[tokio::test]
    async fn other_parameters_are_read_from_the_stored_hash() {
        // A weaker hash from an older policy: its own m, t and salt are used.
        let params = Params::new(4096, 3, 1, None).unwrap();
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let salt = SaltString::encode_b64(&[9u8; 16]).unwrap();
        let old = argon2.hash_password(b"an older password", &salt).unwrap().to_string();
        assert!(verify("an older password".into(), Some(old)).await.unwrap());
    }

    #[tokio::test]
    async fn unreadable_stored_hashes_never_verify() {
        for stored in [
            "",
            "plain text",
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$",
            "$argon2id$v=19$m=999999999,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
        ] {
            assert!(!verify("whatever".into(), Some(stored.into())).await.unwrap(), "{stored:?}");
        }
    }

    #[test]
    fn a_full_queue_is_busy_not_a_pile() {
        // A pool whose only worker is stuck: one job runs, `capacity` wait, the rest are refused.
        let pool = Pool::start(1, 2);
        let (release, stuck) = std::sync::mpsc::channel::<()>();
        let (started, running) = std::sync::mpsc::channel::<()>();
        let block: Job = Box::new(move |_| {
            let _ = started.send(());
            let _ = stuck.recv();
        });
        pool.queue.try_send(block).unwrap();
        running.recv().unwrap();
        let accepted = (0..5).filter(|_| pool.queue.try_send(Box::new(|_| {})).is_ok()).count();
        assert_eq!(accepted, 2);
        release.send(()).unwrap();
    }

    #[tokio::test]
    async fn a_caller_behind_a_full_queue_is_told_busy_at_once() {
        let pool: &'static Pool = Box::leak(Box::new(Pool::start(1, 1)));
        let (release, stuck) = std::sync::mpsc::channel::<()>();
        let (started, running) = oneshot::channel::<()>();
        let blocked = pool.run(move |_| {
            let _ = started.send(());
            let _ = stuck.recv();
        });
        let blocked = tokio::spawn(blocked);
        running.await.unwrap();
        // A second caller takes the only place in the queue (its task runs at the yield).
        let waiting = tokio::spawn(pool.run(|_| true));
        tokio::task::yield_now().await;
        let refused = tokio::time::timeout(std::time::Duration::from_secs(5), pool.run(|_| true)).await;
        assert!(matches!(refused, Ok(Err(Error::Busy))), "{refused:?}");
        release.send(()).unwrap();
        blocked.await.unwrap().unwrap();
        assert!(waiting.await.unwrap().unwrap(), "the queued job still runs once a worker is free");
    }

    #[tokio::test]
    async fn many_concurrent_verifies_all_complete_with_the_right_answers() {
        // Cheap parameters, so the test measures the pool, not argon2.
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::new(64, 1, 1, None).unwrap());
        let salt = SaltString::encode_b64(&[3u8; 16]).unwrap();
        let stored = argon2.hash_password(b"correct horse battery", &salt).unwrap().to_string();
        let pool: &'static Pool = Box::leak(Box::new(Pool::start(2, 64)));
        let mut checks = tokio::task::JoinSet::new();
        for n in 0..64 {
            let (stored, attempt) = (stored.clone(), if n % 2 == 0 { "correct horse battery" } else { "wrong" });
            let answer = pool.run(move |memory| verify_or_dummy(memory, attempt.as_bytes(), Some(&stored)));
            checks.spawn(async move { (n, answer.await) });
        }
        let mut done = 0;
        while let Some(joined) = checks.join_next().await {
            let (n, answer) = joined.unwrap();
            assert_eq!(answer.unwrap(), n % 2 == 0, "verify {n}");
            done += 1;
        }
        assert_eq!(done, 64);
    }

    #[test]
    fn a_reused_block_gives_the_same_bytes_as_the_argon2_crate() {
        // One worker's memory, used first for a bigger then for a smaller cost, must not
        // change any output: each is what argon2's own API computes from scratch.
        let mut memory = Memory::new();
        for (m, t) in [(M_COST_KIB, T_COST), (256, 3), (M_COST_KIB, T_COST), (64, 1)] {
            let params = Params::new(m, t, 1, None).unwrap();
            let ours = compute(&mut memory, &params, Algorithm::Argon2id, Version::V0x13, b"pw", &[5; 16]).unwrap();
            let mut theirs = vec![0u8; Params::DEFAULT_OUTPUT_LEN];
            Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                .hash_password_into(b"pw", &[5; 16], &mut theirs)
                .unwrap();
            assert_eq!(ours, theirs, "m={m} t={t}");
        }
    }

    #[test]
    fn the_pool_size_defaults_to_the_cores_and_a_queue_per_worker() {
        let size = PoolSize::new(Some(3), None);
        assert_eq!(size, PoolSize { workers: 3, queue: 3 * QUEUE_PER_WORKER });
        assert_eq!(PoolSize::new(Some(0), Some(5)), PoolSize { workers: 1, queue: 5 });
        assert!(PoolSize::default().workers >= 1);
    }

    #[test]
    fn a_panicking_job_fails_alone_and_its_worker_goes_on() {
        let pool = Pool::start(1, 4);
        let (reply, answer) = std::sync::mpsc::channel::<()>();
        let bad: Job = Box::new(move |_| {
            let _keep = reply;
            panic!("injected");
        });
        pool.queue.try_send(bad).unwrap();
        assert!(answer.recv().is_err(), "the panicking job's caller gets no answer, not a hang");
        // The pool's only worker must still be there to take the next jobs.
        for n in 0..3 {
            let (reply, answer) = std::sync::mpsc::channel();
            pool.queue.try_send(Box::new(move |_| reply.send(n).unwrap())).unwrap();
            let got = answer.recv_timeout(std::time::Duration::from_secs(5));
            assert_eq!(got, Ok(n), "job {n} after a panic was not run");
        }
    }

    #[test]
    fn the_full_policy_names_each_rule() {
        let refusal = |p: &str| match check_policy_for(p, "Mario.Rossi@esempio.it") {
            Err(Error::Invalid(m)) => m,
            other => panic!("{p:?} was not refused: {other:?}"),
        };
        assert!(refusal("short").contains("at least 10 characters"));
        assert!(refusal("aaaaaaaaaaaa").contains("different characters"));
        assert!(refusal("mario.rossi@esempio.it").contains("email"));
        assert!(refusal("xxMARIO.ROSSIxx").contains("email"), "the local part, in any case");
        assert!(refusal("1234567890").contains("too common"));
        assert!(refusal("QwertyuiOP").contains("too common"), "compared case-insensitively");
        assert!(refusal("Password2024!").contains("too common"), "a common word with digits around it");
        assert!(refusal("forzajuve1234").contains("too common"), "the Italian additions are read too");
        assert!(check_policy_for("correct horse battery staple", "mario.rossi@esempio.it").is_ok());
        assert!(check_policy_for("Vesuvio-sul-lago-17", "mario.rossi@esempio.it").is_ok());
    }

    #[test]
    fn the_shipped_list_is_loaded_and_lower_case() {
        let list = common_passwords();
        assert!(list.len() > 10_000, "{}", list.len());
        assert!(list.contains("password") && list.contains("qwertyuiop"));
        assert!(list.iter().all(|w| w.to_lowercase() == *w));
        assert!(!is_common("a quite unusual sentence"));
    }

    #[test]
    fn policy_rejects_short_and_huge() {
        assert!(check_policy("short").is_err());
        assert!(check_policy(&"x".repeat(257)).is_err());
        assert!(check_policy("long enough pw").is_ok());
    }
}

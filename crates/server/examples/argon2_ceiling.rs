//! The ceiling of password sign-ins: argon2id verifications at Ponte's parameters
//! (19 MiB, 2 passes, 1 lane) with the argon2 crate alone, on a fixed number of threads,
//! nothing else. Each thread reuses one memory block (`hash_password_into_with_memory`):
//! the plain `verify_password` allocates 19 MiB per call, which glibc maps and unmaps
//! each time, so its page faults would make a lower "ceiling" than the work itself.
//! `bench/logins.sh` prints it beside Ponte's sign-ins per second.
//!
//! Usage: `argon2_ceiling [THREADS] [SECONDS]` (default 2 threads, 5 seconds). Prints
//! `argon2_ceiling threads=N verifies=V seconds=S per_second=R cpu_ms_per_verify=C`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

fn main() {
    let mut args = std::env::args().skip(1);
    let threads: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let argon2 =
        Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::new(19 * 1024, 2, 1, None).expect("valid parameters"));
    let salt = SaltString::encode_b64(&[7u8; 16]).expect("a 16-byte salt");
    let stored = argon2.hash_password(b"correct horse battery", &salt).expect("hashing works").to_string();

    let (stop, done) = (AtomicBool::new(false), AtomicU64::new(0));
    let cpu_before = process_cpu_secs();
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let parsed = PasswordHash::new(&stored).expect("our own PHC string");
                let expected = parsed.hash.expect("a hash in the PHC string");
                let mut salt = [0u8; 64];
                let salt = parsed.salt.expect("a salt").decode_b64(&mut salt).expect("base64 salt");
                let mut memory = vec![Block::new(); argon2.params().block_count()];
                let mut out = vec![0u8; expected.len()];
                while !stop.load(Ordering::Relaxed) {
                    argon2
                        .hash_password_into_with_memory(b"correct horse battery", salt, &mut out, &mut memory)
                        .expect("argon2 works");
                    assert_eq!(out.as_slice(), expected.as_bytes());
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        std::thread::sleep(Duration::from_secs(seconds));
        stop.store(true, Ordering::Relaxed);
    });
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = process_cpu_secs() - cpu_before;
    let verifies = done.load(Ordering::Relaxed);
    println!(
        "argon2_ceiling threads={threads} verifies={verifies} seconds={elapsed:.2} per_second={:.1} cpu_ms_per_verify={:.2}",
        verifies as f64 / elapsed,
        cpu * 1000.0 / verifies.max(1) as f64,
    );
}

/// User + system CPU time of this process so far, from `/proc/self/stat` (Linux).
fn process_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

//! The queue's rules, on the manual clock and with fixed jitter.

#![allow(clippy::unwrap_used)]

use time::{Duration, macros::datetime};

use super::*;
use crate::clock::{Clock, ManualClock};

fn job(state: JobState, run_at: OffsetDateTime, lease_until: Option<OffsetDateTime>) -> Job {
    Job {
        id: JobId::new(),
        kind: "test".into(),
        payload: serde_json::json!({}),
        idempotency_key: "k".into(),
        state,
        attempts: 1,
        max_attempts: 3,
        run_at,
        lease_until,
        lease_token: lease_until.map(|_| "token".into()),
        last_error: None,
        created_at: run_at,
        updated_at: run_at,
        enqueued_at_ms: 0,
    }
}

#[test]
fn backoff_doubles_per_attempt_within_jitter_bounds_and_is_capped() {
    let b = Backoff { base: Duration::seconds(4), max: Duration::seconds(60) };
    // No jitter: half of each exponential step; full jitter: (almost) the whole step.
    assert_eq!(b.delay(1, 0.0), Duration::seconds(2));
    assert_eq!(b.delay(2, 0.0), Duration::seconds(4));
    assert_eq!(b.delay(3, 0.0), Duration::seconds(8));
    assert_eq!(b.delay(1, 0.999), Duration::seconds(3));
    assert_eq!(b.delay(3, 0.999), Duration::seconds(15));
    assert_eq!(b.delay(3, 0.5), Duration::seconds(12));
    // The cap holds from the step that would exceed it, and for absurd attempt numbers.
    assert_eq!(b.delay(5, 0.0), Duration::seconds(30));
    assert_eq!(b.delay(5, 0.999), Duration::seconds(59));
    assert_eq!(b.delay(u32::MAX, 0.999), Duration::seconds(59));
    // Jitter out of range or not a number cannot push a delay outside its bounds.
    assert_eq!(b.delay(2, 7.0), Duration::seconds(8));
    assert_eq!(b.delay(2, f64::NAN), Duration::seconds(4));
    // A retry is never immediate, even with a tiny base.
    let tiny = Backoff { base: Duration::ZERO, max: Duration::ZERO };
    assert_eq!(tiny.delay(1, 0.0), Duration::seconds(1));
}

#[test]
fn a_retryable_failure_waits_a_permanent_one_or_the_last_attempt_is_dead() {
    let clock = ManualClock::new(datetime!(2026-12-01 10:00 UTC));
    let b = Backoff { base: Duration::seconds(10), max: Duration::hours(1) };
    let retry = JobFailure::Retry("smtp down".into());
    let now = clock.now();
    assert_eq!(after_failure(1, 3, &retry, &b, now, 0.0), AfterFailure::RetryAt(now + Duration::seconds(5)));
    assert_eq!(after_failure(2, 3, &retry, &b, now, 0.0), AfterFailure::RetryAt(now + Duration::seconds(10)));
    assert_eq!(after_failure(3, 3, &retry, &b, now, 0.0), AfterFailure::Dead, "the last attempt failed");
    assert_eq!(after_failure(4, 3, &retry, &b, now, 0.0), AfterFailure::Dead, "a crash-reclaimed extra attempt");
    let permanent = JobFailure::Permanent("550 no such user".into());
    assert_eq!(after_failure(1, 3, &permanent, &b, now, 0.0), AfterFailure::Dead);
    assert_eq!(permanent.message(), "550 no such user");
}

#[test]
fn a_job_is_claimable_when_due_or_when_its_lease_ran_out() {
    let clock = ManualClock::new(datetime!(2026-12-01 10:00 UTC));
    let start = clock.now();
    let later = job(JobState::Pending, start + Duration::seconds(30), None);
    assert!(!later.is_claimable(clock.now()), "not before run_at");
    let leased = job(JobState::Running, start, Some(start + Duration::seconds(60)));
    assert!(!leased.is_claimable(clock.now()), "a live lease protects a running job");

    clock.advance(Duration::seconds(30));
    assert!(later.is_claimable(clock.now()), "due at run_at exactly");
    clock.advance(Duration::seconds(30));
    assert!(!leased.is_claimable(clock.now()), "the lease's last second is still the holder's");
    clock.advance(Duration::seconds(1));
    assert!(leased.is_claimable(clock.now()), "a lease that ran out (killed worker) is claimable again");

    let grace = Duration::seconds(60);
    assert!(!leased.lease_ran_out_on_last_attempt(clock.now() + grace, grace), "it has attempts left");

    // On its last attempt, a lease that ran out means the job died with its worker: dead.
    let last = Job { attempts: 3, ..leased.clone() };
    assert!(!last.is_claimable(clock.now()), "a crash on the last attempt is not retried");
    assert!(!last.lease_ran_out_on_last_attempt(clock.now(), grace), "not within a lease of its end");
    assert!(last.lease_ran_out_on_last_attempt(clock.now() + grace, grace));
    assert!(!last.lease_ran_out_on_last_attempt(start, grace), "not while its lease lasts");
    assert!(!Job { state: JobState::Pending, ..last }.lease_ran_out_on_last_attempt(clock.now() + grace, grace));

    assert!(!job(JobState::Done, start, None).is_claimable(clock.now()));
    assert!(!job(JobState::Dead, start, None).is_claimable(clock.now()));
    assert!(lease_expired(None, start));
}

#[test]
fn states_round_trip_and_ids_parse() {
    for s in JobState::ALL {
        assert_eq!(JobState::parse(s.as_str()).unwrap(), s);
    }
    assert!(JobState::parse("failed").is_err());
    let id = JobId::new();
    assert_eq!(id.to_string().parse::<JobId>().unwrap(), id);
    assert!("nope".parse::<JobId>().is_err());
}

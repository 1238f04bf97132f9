//! Seat arithmetic on a manual clock: grant, pay, extend, expire, lapse, suspend, renew,
//! restore, remind.

use time::macros::datetime;
use time::{Duration, OffsetDateTime};

use super::*;

const T0: OffsetDateTime = datetime!(2026-12-07 10:00 UTC);

fn grant(quantity: u32) -> SeatGrant {
    SeatGrant {
        id: SeatGrantId::new(),
        account_id: AccountId::new(),
        quantity,
        order_reference: "ORD-1".into(),
        extend_other_grants: false,
        paid_at: None,
        valid_until: None,
        reminded_days: None,
        created_at: T0,
    }
}

fn paid(quantity: u32, at: OffsetDateTime) -> SeatGrant {
    let g = grant(quantity);
    match pay(&g, &[], at) {
        Payment::Paid { paid_at, valid_until, .. } => {
            SeatGrant { paid_at: Some(paid_at), valid_until: Some(valid_until), ..g }
        }
        Payment::AlreadyPaid => unreachable!("a new grant is unpaid"),
    }
}

fn member(minutes: i64) -> Seated {
    Seated { id: UserId::new(), created_at: T0 + Duration::minutes(minutes) }
}

#[test]
fn a_grant_counts_only_once_paid_and_for_one_year_from_the_payment() {
    let g = grant(3);
    assert_eq!((g.state(T0), g.seats_at(T0)), (SeatGrantState::PendingPayment, 0));
    let payday = T0 + Duration::days(10);
    let g = paid(3, payday);
    assert_eq!(g.valid_until, Some(datetime!(2027-12-17 10:00 UTC)), "one year from the payment, not the order");
    assert_eq!((g.state(payday), g.seats_at(payday)), (SeatGrantState::Active, 3));
    let last_second = datetime!(2027-12-17 09:59:59 UTC);
    assert_eq!(g.state(last_second), SeatGrantState::Active);
    assert_eq!(
        (g.state(datetime!(2027-12-17 10:00 UTC)), g.seats_at(datetime!(2028-01-01 0:00 UTC))),
        (SeatGrantState::Expired, 0)
    );
    assert_eq!(one_year_after(datetime!(2028-02-29 12:00 UTC)), datetime!(2029-02-28 12:00 UTC));
}

#[test]
fn paying_twice_changes_nothing_and_extending_moves_only_other_active_grants() {
    let old = paid(2, T0 - Duration::days(300));
    let lapsed = paid(1, T0 - Duration::days(400));
    let later = paid(1, T0 + Duration::days(1));
    let pending = grant(5);
    let new = SeatGrant { extend_other_grants: true, ..grant(4) };
    let all = [old.clone(), lapsed.clone(), later.clone(), pending.clone(), new.clone()];
    let Payment::Paid { valid_until, extended, .. } = pay(&new, &all, T0) else { panic!("paid") };
    assert_eq!(valid_until, one_year_after(T0));
    assert_eq!(extended, vec![old.id], "the expired, the pending and the later-ending grant stay as they are");
    let plain = SeatGrant { extend_other_grants: false, ..new.clone() };
    assert!(matches!(pay(&plain, &all, T0), Payment::Paid { extended, .. } if extended.is_empty()));
    let done = SeatGrant { paid_at: Some(T0), valid_until: Some(valid_until), ..new };
    assert_eq!(pay(&done, &all, T0 + Duration::days(1)), Payment::AlreadyPaid);
}

#[test]
fn only_active_members_take_seats_and_adding_or_reenabling_one_needs_a_free_seat() {
    use crate::account::{Role, UserStatus};
    assert!(needs_seat(None, (Role::Member, UserStatus::Active)));
    assert!(!needs_seat(None, (Role::Admin, UserStatus::Active)), "admins never take a seat");
    assert!(!needs_seat(None, (Role::Member, UserStatus::Disabled)));
    assert!(needs_seat(Some((Role::Member, UserStatus::Disabled)), (Role::Member, UserStatus::Active)));
    assert!(needs_seat(Some((Role::Member, UserStatus::Suspended)), (Role::Member, UserStatus::Active)));
    assert!(needs_seat(Some((Role::Admin, UserStatus::Active)), (Role::Member, UserStatus::Active)));
    assert!(!needs_seat(Some((Role::Member, UserStatus::Active)), (Role::Member, UserStatus::Active)));
    assert!(check_free_seat(SeatUsage { valid: 2, used: 1 }).is_ok());
    let full = check_free_seat(SeatUsage { valid: 2, used: 2 }).unwrap_err();
    assert!(matches!(full, Error::Conflict { code: "no_free_seat", .. }), "{full:?}");
    assert!(check_free_seat(SeatUsage { valid: 1, used: 3 }).is_err(), "over-full after a lapse");
    assert_eq!(SeatUsage { valid: 1, used: 3 }.free(), 0);
}

#[test]
fn a_grant_whose_seats_are_in_use_cannot_be_removed() {
    let (a, b) = (paid(2, T0), paid(1, T0));
    let pending = grant(10);
    let grants = [a.clone(), b.clone(), pending.clone()];
    assert_eq!(valid_seats(&grants, T0), 3);
    assert!(check_removal(&grants, b.id, 2, T0).is_ok(), "2 seats left for 2 members");
    let refused = check_removal(&grants, a.id, 2, T0).unwrap_err();
    assert!(matches!(refused, Error::Conflict { code: "seats_in_use", .. }), "{refused:?}");
    assert!(check_removal(&grants, pending.id, 3, T0).is_ok(), "a pending grant seats nobody");
    let after_expiry = T0 + Duration::days(366);
    assert!(check_removal(&grants, a.id, 0, after_expiry).is_ok());
}

#[test]
fn when_grants_lapse_the_most_recently_added_members_are_suspended_and_a_renewal_restores_the_oldest() {
    let (first, second, third) = (member(1), member(2), member(3));
    let active = [second, first, third];
    let g = paid(3, T0);
    assert_eq!(surplus(&active, valid_seats(std::slice::from_ref(&g), T0)), Vec::<UserId>::new());

    // The year passes: no seat counts, everyone is surplus, newest first.
    let lapse_day = T0 + Duration::days(366);
    assert_eq!(valid_seats(std::slice::from_ref(&g), lapse_day), 0);
    assert_eq!(surplus(&active, 0), vec![third.id, second.id, first.id]);
    // With one seat left from another grant, only the two newest go.
    assert_eq!(surplus(&active, 1), vec![third.id, second.id]);

    // A renewal with two seats brings back the two longest-standing.
    let suspended = [third, first, second];
    assert_eq!(restorable(&suspended, 2), vec![first.id, second.id]);
    assert_eq!(restorable(&suspended, 0), Vec::<UserId>::new());
    assert_eq!(restorable(&suspended, 10).len(), 3);
}

#[test]
fn reminders_come_at_30_and_7_days_and_each_only_once() {
    let g = paid(1, T0);
    let until = g.valid_until.unwrap();
    assert_eq!(reminder_due(&g, until - Duration::days(31)), None);
    assert_eq!(reminder_due(&g, until - Duration::days(30)), Some(30));
    let sent30 = SeatGrant { reminded_days: Some(30), ..g.clone() };
    assert_eq!(reminder_due(&sent30, until - Duration::days(20)), None, "the 30-day reminder went already");
    assert_eq!(reminder_due(&sent30, until - Duration::days(7)), Some(7));
    let sent7 = SeatGrant { reminded_days: Some(7), ..g.clone() };
    assert_eq!(reminder_due(&sent7, until - Duration::days(1)), None);
    assert_eq!(reminder_due(&g, until - Duration::days(3)), Some(7), "late: only the nearer reminder");
    assert_eq!(reminder_due(&g, until), None, "expired grants are not reminded");
    assert_eq!(reminder_due(&grant(1), T0), None, "nor pending ones");
}

#[test]
fn a_new_grant_names_the_field_at_fault() {
    assert_eq!(
        NewSeatGrant::parse(3, "  ORD-7 ", true).unwrap(),
        NewSeatGrant { quantity: 3, order_reference: "ORD-7".into(), extend_other_grants: true }
    );
    for (quantity, reference, field) in [
        (0, "ORD", "quantity"),
        (-1, "ORD", "quantity"),
        (i64::from(MAX_QUANTITY) + 1, "ORD", "quantity"),
        (1, "  ", "order_reference"),
        (1, "a\u{0}b", "order_reference"),
    ] {
        let err = NewSeatGrant::parse(quantity, reference, false).unwrap_err();
        assert!(matches!(err, Error::Invalid { field: f, .. } if f == field), "{quantity} {reference:?}: {err:?}");
    }
    assert!(NewSeatGrant::parse(1, &"x".repeat(101), false).is_err());
}

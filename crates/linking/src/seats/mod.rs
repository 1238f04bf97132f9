//! Seats: the additional-user licences an account buys, and the rules that tie its
//! members to them.
//!
//! A [`SeatGrant`] is bought with an order reference and waits for its payment
//! (`pending_payment`); once the POS backend reports the payment it counts for one year
//! from that moment (`active`), then it no longer counts (`expired`). Only members take a
//! seat (owners and admins never do), and only while active.
//!
//! The invariants, each a pure function here and each checked inside the write
//! transaction that could break it (after [`crate::account::sql::lock_account`]):
//! - active members ≤ seats valid now: adding or re-enabling a member needs a free seat
//!   ([`check_free_seat`], [`needs_seat`]); a grant whose seats are in use cannot be
//!   removed ([`check_removal`]);
//! - when grants lapse, the surplus members are suspended, most recently added first, with
//!   the reason [`SEATS_LAPSED`] ([`surplus`]); never deleted;
//! - a later paid grant restores the members suspended for that reason, oldest first, up
//!   to the free seats ([`restorable`]); paying may move the expiry of the account's other
//!   active grants to the new one ([`pay`]).
//!
//! The store is [`SeatStore`] ([`sql`]); the scheduled sweep that suspends and reminds is
//! [`sweep`].

pub mod sql;
mod sweep;

pub use sweep::{SweepReport, sweep};

use async_trait::async_trait;
use time::{Duration, OffsetDateTime};

use crate::account::{Role, UserStatus};
use crate::audit::Actor;
use crate::ids::{AccountId, SeatGrantId, UserId};
use crate::{Error, Result};

/// Why a member was suspended by the system: the account's seats lapsed.
pub const SEATS_LAPSED: &str = "seats_lapsed";

/// Days before a grant's expiry when its owner is reminded, largest first.
pub const REMINDER_DAYS: [u32; 2] = [30, 7];

/// Where a grant stands at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeatGrantState {
    /// Bought, the payment not yet registered: counts for nothing.
    PendingPayment,
    /// Paid and within its year: its seats count.
    Active,
    /// Paid, and its year is over.
    Expired,
}

impl SeatGrantState {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PendingPayment => "pending_payment",
            Self::Active => "active",
            Self::Expired => "expired",
        }
    }
}

/// Additional-user licences bought for an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeatGrant {
    /// Id.
    pub id: SeatGrantId,
    /// The account they are for.
    pub account_id: AccountId,
    /// How many members they seat.
    pub quantity: u32,
    /// The POS order they were bought with (unique within the account).
    pub order_reference: String,
    /// Whether paying moves the expiry of the account's other active grants to this one's.
    pub extend_other_grants: bool,
    /// When the payment was registered.
    pub paid_at: Option<OffsetDateTime>,
    /// Until when they count (one year from the payment, or later if extended).
    pub valid_until: Option<OffsetDateTime>,
    /// The smallest reminder already sent for the current `valid_until` (30, then 7).
    pub reminded_days: Option<u32>,
    /// When it was bought.
    pub created_at: OffsetDateTime,
}

impl SeatGrant {
    /// Where it stands at `now`.
    pub fn state(&self, now: OffsetDateTime) -> SeatGrantState {
        match (self.paid_at, self.valid_until) {
            (Some(_), Some(until)) if now < until => SeatGrantState::Active,
            (Some(_), _) => SeatGrantState::Expired,
            (None, _) => SeatGrantState::PendingPayment,
        }
    }

    /// The seats it gives at `now`.
    pub fn seats_at(&self, now: OffsetDateTime) -> u32 {
        if self.state(now) == SeatGrantState::Active { self.quantity } else { 0 }
    }
}

/// A grant to buy: what `POST …/seats` carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSeatGrant {
    /// 1 to [`MAX_QUANTITY`].
    pub quantity: u32,
    /// 1 to 100 printable characters.
    pub order_reference: String,
    /// See [`SeatGrant::extend_other_grants`].
    pub extend_other_grants: bool,
}

/// The most seats one grant may hold.
pub const MAX_QUANTITY: u32 = 10_000;

impl NewSeatGrant {
    /// Checks the fields; the error names the one at fault.
    pub fn parse(quantity: i64, order_reference: &str, extend_other_grants: bool) -> Result<Self> {
        let quantity = u32::try_from(quantity)
            .ok()
            .filter(|q| (1..=MAX_QUANTITY).contains(q))
            .ok_or_else(|| Error::invalid("quantity", format!("must be between 1 and {MAX_QUANTITY}")))?;
        let order_reference = order_reference.trim();
        if order_reference.is_empty() || order_reference.chars().count() > 100 {
            return Err(Error::invalid("order_reference", "must have 1 to 100 characters"));
        }
        if order_reference.chars().any(char::is_control) {
            return Err(Error::invalid("order_reference", "must not contain control characters"));
        }
        Ok(Self { quantity, order_reference: order_reference.to_owned(), extend_other_grants })
    }
}

/// An account's seats at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SeatUsage {
    /// Seats of the grants that count now.
    pub valid: u32,
    /// Active members (each takes one seat).
    pub used: u32,
}

impl SeatUsage {
    /// Seats nobody takes.
    pub fn free(self) -> u32 {
        self.valid.saturating_sub(self.used)
    }
}

/// The seats all `grants` give at `now`.
pub fn valid_seats(grants: &[SeatGrant], now: OffsetDateTime) -> u32 {
    grants.iter().map(|g| g.seats_at(now)).fold(0u32, u32::saturating_add)
}

/// Whether a user with this role and status takes a seat.
pub fn takes_seat(role: Role, status: UserStatus) -> bool {
    role == Role::Member && status == UserStatus::Active
}

/// Whether going from `before` (`None` for a new user) to `after` takes a seat that was
/// not taken: adding an active member, re-enabling one, or making an active admin a member.
pub fn needs_seat(before: Option<(Role, UserStatus)>, after: (Role, UserStatus)) -> bool {
    takes_seat(after.0, after.1) && !before.is_some_and(|(role, status)| takes_seat(role, status))
}

/// A seat must be free for one more active member.
pub fn check_free_seat(usage: SeatUsage) -> Result<()> {
    if usage.free() == 0 {
        return Err(Error::Conflict {
            code: "no_free_seat",
            message: format!(
                "every seat is taken ({} valid, {} in use): buy seats, or disable a member first",
                usage.valid, usage.used
            ),
        });
    }
    Ok(())
}

/// A grant may be removed only while the seats left still cover the active members
/// ("delete the users from the panel first"). Pending and expired grants give no seat, so
/// they may always go.
pub fn check_removal(grants: &[SeatGrant], removing: SeatGrantId, used: u32, now: OffsetDateTime) -> Result<()> {
    let left: u32 = grants.iter().filter(|g| g.id != removing).map(|g| g.seats_at(now)).sum();
    if left < used {
        return Err(Error::Conflict {
            code: "seats_in_use",
            message: format!(
                "{used} active members need these seats (only {left} would be left): disable or delete members first"
            ),
        });
    }
    Ok(())
}

/// The same moment one year later (29 February becomes 28 February).
pub fn one_year_after(t: OffsetDateTime) -> OffsetDateTime {
    let date = t.date();
    let next = date
        .replace_year(date.year() + 1)
        .or_else(|_| date.replace_day(28).and_then(|d| d.replace_year(date.year() + 1)))
        .unwrap_or(date + Duration::days(365));
    t.replace_date(next)
}

/// What registering a payment changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payment {
    /// The grant was already paid: nothing changes (a repeated report is harmless).
    AlreadyPaid,
    /// The grant now counts until `valid_until`; `extended` are the other grants whose
    /// expiry moves to it.
    Paid {
        /// `now`.
        paid_at: OffsetDateTime,
        /// One year from `now`.
        valid_until: OffsetDateTime,
        /// Other grants of the account to extend to `valid_until`.
        extended: Vec<SeatGrantId>,
    },
}

/// Registers the payment of `grant` at `now`, given the account's `others` grants.
pub fn pay(grant: &SeatGrant, others: &[SeatGrant], now: OffsetDateTime) -> Payment {
    if grant.paid_at.is_some() {
        return Payment::AlreadyPaid;
    }
    let valid_until = one_year_after(now);
    let extended = if grant.extend_other_grants {
        others
            .iter()
            .filter(|g| g.id != grant.id && g.state(now) == SeatGrantState::Active)
            .filter(|g| g.valid_until.is_some_and(|until| until < valid_until))
            .map(|g| g.id)
            .collect()
    } else {
        Vec::new()
    };
    Payment::Paid { paid_at: now, valid_until, extended }
}

/// A member as the seat rules see them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seated {
    /// The user.
    pub id: UserId,
    /// When they were added: the order of suspension and restoration.
    pub created_at: OffsetDateTime,
}

/// The active members to suspend when only `valid` seats count: the most recently added
/// first, as many as exceed the seats.
pub fn surplus(active: &[Seated], valid: u32) -> Vec<UserId> {
    let excess = active.len().saturating_sub(valid as usize);
    let mut newest_first = active.to_vec();
    newest_first.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
    newest_first.into_iter().take(excess).map(|s| s.id).collect()
}

/// The members suspended for lapse to restore with `free` seats: the longest-standing
/// first.
pub fn restorable(suspended_for_lapse: &[Seated], free: u32) -> Vec<UserId> {
    let mut oldest_first = suspended_for_lapse.to_vec();
    oldest_first.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    oldest_first.into_iter().take(free as usize).map(|s| s.id).collect()
}

/// The reminder due for `grant` at `now`, if any: the smallest of [`REMINDER_DAYS`] whose
/// window the grant has entered and that was not sent yet. Only active grants are
/// reminded; a grant that enters the 7-day window without its 30-day reminder gets only
/// the 7-day one.
pub fn reminder_due(grant: &SeatGrant, now: OffsetDateTime) -> Option<u32> {
    if grant.state(now) != SeatGrantState::Active {
        return None;
    }
    let left = grant.valid_until? - now;
    REMINDER_DAYS
        .iter()
        .copied()
        .filter(|days| left <= Duration::days(i64::from(*days)))
        .min()
        .filter(|days| grant.reminded_days.is_none_or(|sent| sent > *days))
}

/// What a payment did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaidGrant {
    /// The grant, as it is now.
    pub grant: SeatGrant,
    /// Members suspended for lapse that the new seats restored.
    pub restored: Vec<UserId>,
    /// The account's seats once the payment and the restorations are written.
    pub seats: SeatUsage,
}

/// Members the sweep suspended in one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lapse {
    /// The account.
    pub account: AccountId,
    /// Who was suspended.
    pub suspended: Vec<UserId>,
}

/// Where seat grants are kept. Every write takes the account lock first and checks its
/// rule inside the same transaction, audited.
#[async_trait]
pub trait SeatStore: Send + Sync + std::fmt::Debug {
    /// The account's grants, oldest first.
    async fn list(&self, account: AccountId) -> Result<Vec<SeatGrant>>;
    /// The account's seats at `now`.
    async fn usage(&self, account: AccountId, now: OffsetDateTime) -> Result<SeatUsage>;
    /// Buys a grant (`pending_payment`). [`Error::NotFound`]`("account")`; a conflict
    /// `order_reference_taken` when the account already has a grant with that reference.
    async fn create(
        &self,
        account: AccountId,
        new: NewSeatGrant,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<SeatGrant>;
    /// Registers the payment ([`pay`]) and restores members suspended for lapse
    /// ([`restorable`]), in one transaction. Idempotent.
    async fn pay(
        &self,
        account: AccountId,
        grant: SeatGrantId,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<PaidGrant>;
    /// Removes a grant, enforcing [`check_removal`].
    async fn remove(&self, account: AccountId, grant: SeatGrantId, actor: &Actor, now: OffsetDateTime) -> Result<()>;
    /// Suspends the surplus members of every account whose active members exceed its
    /// valid seats ([`surplus`]), recording [`SEATS_LAPSED`] and mailing the owner, each
    /// account in a transaction of its own. Running it twice suspends nobody twice.
    async fn lapse(&self, now: OffsetDateTime) -> Result<Vec<Lapse>>;
    /// Mails the owner of every grant with a reminder due ([`reminder_due`]), each at most
    /// once per expiry. Returns how many were sent.
    async fn remind(&self, now: OffsetDateTime) -> Result<u32>;
}

#[cfg(test)]
mod tests;

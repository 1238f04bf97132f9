//! The scheduled seat sweep: suspends the members that lapsed grants no longer seat, ends
//! their sessions and tokens, and sends the expiry reminders. Every worker runs it on a
//! timer; running it on several replicas at once is safe, since each suspension and each
//! reminder is a compare-and-set inside the account's lock.

use ponte_identity::refresh::RefreshRepo;
use ponte_identity::session::Sessions;
use ponte_identity::signout::end_everywhere;
use time::OffsetDateTime;

use super::{Lapse, SeatStore};
use crate::Result;

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Members suspended, per account.
    pub lapsed: Vec<Lapse>,
    /// Reminder mails queued.
    pub reminders: u32,
}

/// Runs the sweep at `now`. The suspension is committed before sessions end: a crash in
/// between leaves sessions that every check already refuses (a suspended user may not sign
/// in), and the next sweep finds nothing more to do.
pub async fn sweep(
    seats: &dyn SeatStore,
    sessions: &Sessions,
    refresh: &dyn RefreshRepo,
    now: OffsetDateTime,
) -> Result<SweepReport> {
    let lapsed = seats.lapse(now).await?;
    for user in lapsed.iter().flat_map(|l| &l.suspended) {
        end_everywhere(sessions, refresh, *user, now).await?;
    }
    let reminders = seats.remind(now).await?;
    Ok(SweepReport { lapsed, reminders })
}

//! Work the worker does on a timer rather than from the queue: the seat sweep
//! (`ponte_linking::seats::sweep`), which suspends members that lapsed grants no longer
//! seat, ends their sessions and tokens, and sends the 30- and 7-day expiry reminders.
//! Every replica's worker sweeps; the sweep is safe to run anywhere at once, and the mail
//! it causes leaves through the outbox in the transaction of the change.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use async_trait::async_trait;
use ponte_identity::clock::Clock;
use ponte_identity::refresh::RefreshRepo;
use ponte_identity::session::Sessions;
use ponte_linking::seats::{SeatStore, sweep};
use tokio::sync::watch;

use crate::state::AppState;

/// A task run every [`Periodic::every`].
#[async_trait]
pub trait Periodic: Send + Sync + std::fmt::Debug {
    /// How long between two runs.
    fn every(&self) -> StdDuration;
    /// One run; failures are logged and the next run tries again.
    async fn run_once(&self);
}

/// Runs `task` at once and then every `task.every()`, until `shutdown` turns true.
pub async fn run_periodic(task: Arc<dyn Periodic>, mut shutdown: watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(task.every());
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => task.run_once().await,
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

/// The seat sweep on the application's stores and clock.
#[derive(Debug, Clone)]
pub struct SeatSweep {
    seats: Arc<dyn SeatStore>,
    sessions: Sessions,
    refresh: Arc<dyn RefreshRepo>,
    clock: Arc<dyn Clock>,
    every: StdDuration,
}

impl SeatSweep {
    /// The sweep over `state`, every `seats.sweep_interval_secs`.
    pub fn of(state: &AppState) -> Self {
        Self {
            seats: state.seats.clone(),
            sessions: state.sessions.clone(),
            refresh: state.refresh.clone(),
            clock: state.clock.clone(),
            every: StdDuration::from_secs(state.config.seats.sweep_interval_secs.max(1)),
        }
    }
}

#[async_trait]
impl Periodic for SeatSweep {
    fn every(&self) -> StdDuration {
        self.every
    }

    async fn run_once(&self) {
        match sweep(self.seats.as_ref(), &self.sessions, self.refresh.as_ref(), self.clock.now()).await {
            Ok(report) => {
                for lapse in &report.lapsed {
                    tracing::info!(account = %lapse.account, suspended = lapse.suspended.len(), "seats lapsed: members suspended");
                }
                if report.reminders > 0 {
                    tracing::info!(reminders = report.reminders, "seat expiry reminders queued");
                }
            }
            Err(e) => tracing::warn!(error = %e, "seat sweep failed; the next one tries again"),
        }
    }
}

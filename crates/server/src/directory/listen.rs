//! Keeps a [`Directory`] in step with PostgreSQL: `LISTEN`s on [`CHANNEL`], where the
//! triggers of migration `…_directory_notify` send the id of every account whose rows
//! changed (or [`EVERYTHING`] after a `TRUNCATE`), and forgets those accounts.
//!
//! The directory is used only while this connection is known to work. A connection that
//! closes switches it off (and empties it) until a new one listens, since notifications
//! sent meanwhile are lost. One that dies silently (a proxy's idle timeout, a host gone
//! without a reset, a pooler that does not deliver notifications) is caught by a
//! heartbeat: after [`QUIET`] without a notification the listener notifies itself, and if
//! the query or the heartbeat's return takes longer than [`PROBE`] the connection counts
//! as lost. So stale entries are never served for longer than about `QUIET + 2 × PROBE`
//! (4 s) after a connection dies, well within `cache_ttl_secs`.

use std::time::Duration;

use ponte_linking::ids::AccountId;
use sqlx::postgres::PgListener;

use super::Directory;
use crate::config::Secret;

/// The notification channel of account changes; the payload is the account id.
pub const CHANNEL: &str = "ponte_directory";
/// The payload that means "forget every account" (a `TRUNCATE`).
pub const EVERYTHING: &str = "*";
/// The payload of the listener's own heartbeat.
const HEARTBEAT: &str = "heartbeat";
/// Silence after which the connection is probed.
const QUIET: Duration = Duration::from_secs(2);
/// How long the probe may take before the connection counts as lost.
const PROBE: Duration = Duration::from_secs(1);
/// How long to wait before connecting again after a failure.
const RETRY: Duration = Duration::from_secs(1);

/// Listens for as long as the process runs (a task of its own).
pub async fn listen(directory: Directory, url: Secret) {
    loop {
        if let Err(e) = listen_once(&directory, url.expose()).await {
            tracing::warn!(error = %e, "directory: change notifications lost; reading from the database until they resume");
        }
        directory.stop_listening();
        tokio::time::sleep(RETRY).await;
    }
}

async fn listen_once(directory: &Directory, url: &str) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    // A lost connection must surface as `None` at once, not after a quiet reconnection
    // that would hide the notifications missed in between.
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    // Only now: every change from here on will be announced.
    directory.start_listening();
    loop {
        let received = match tokio::time::timeout(QUIET, listener.try_recv()).await {
            Ok(received) => received,
            Err(_quiet) => {
                // Notify ourselves: the round trip must succeed and the heartbeat (or any
                // other notification) must come back over this very connection.
                let probe =
                    sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(HEARTBEAT).execute(&mut listener);
                match tokio::time::timeout(PROBE, probe).await {
                    Ok(result) => {
                        result?;
                    }
                    Err(_) => return Err(lost("the notification connection stopped answering")),
                }
                match tokio::time::timeout(PROBE, listener.try_recv()).await {
                    Ok(received) => received,
                    Err(_) => return Err(lost("the heartbeat did not come back")),
                }
            }
        };
        match received? {
            Some(notification) => on_notification(directory, notification.payload()),
            None => return Err(lost("the notification connection closed")),
        }
    }
}

fn lost(why: &str) -> sqlx::Error {
    sqlx::Error::Protocol(why.into())
}

/// What one notification's payload means to the directory.
pub(super) fn on_notification(directory: &Directory, payload: &str) {
    if payload == HEARTBEAT {
        return;
    }
    match payload.parse::<AccountId>() {
        Ok(account) => directory.forget(account),
        // `EVERYTHING`, or anything this version does not know: forgetting is always safe.
        Err(_) => directory.forget_everything(),
    }
}

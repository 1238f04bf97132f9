//! Keeps a [`Directory`] in step with PostgreSQL: `LISTEN`s on [`CHANNEL`], where the
//! triggers of migration `…_directory_notify` send the id of every account whose rows
//! changed, and forgets those accounts. The directory is used only while the listener is
//! connected: when the connection drops it is switched off (and emptied) until a new
//! connection listens again, since notifications sent meanwhile are lost.

use std::time::Duration;

use crate::config::Secret;
use ponte_linking::ids::AccountId;
use sqlx::postgres::PgListener;

use super::Directory;

/// The notification channel of account changes; the payload is the account id.
pub const CHANNEL: &str = "ponte_directory";

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
    listener.listen(CHANNEL).await?;
    // Only now: every change from here on will be announced.
    directory.start_listening();
    loop {
        // `try_recv` answers `None` when the connection was lost (`recv` would reconnect
        // quietly and hide the gap).
        match listener.try_recv().await? {
            Some(notification) => match notification.payload().parse::<AccountId>() {
                Ok(account) => directory.forget(account),
                Err(_) => directory.forget_everything(),
            },
            None => return Err(sqlx::Error::Protocol("the notification connection closed".into())),
        }
    }
}

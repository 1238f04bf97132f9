//! Outgoing email. The embedded default writes each message to a file in an outbox
//! folder and logs where; SMTP comes with the mail issue.

use std::path::PathBuf;

use async_trait::async_trait;

/// One message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    /// Recipient.
    pub to: String,
    /// Subject line.
    pub subject: String,
    /// Plain-text body.
    pub body: String,
}

/// Something that sends mail.
#[async_trait]
pub trait Mailer: Send + Sync + std::fmt::Debug {
    /// Sends (or queues) a message.
    async fn send(&self, mail: Mail) -> std::io::Result<()>;
}

/// Writes every message as an `.eml` file under a folder.
#[derive(Debug, Clone)]
pub struct FileOutbox {
    dir: PathBuf,
}

impl FileOutbox {
    /// An outbox in `dir` (created on first use).
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }
}

#[async_trait]
impl Mailer for FileOutbox {
    async fn send(&self, mail: Mail) -> std::io::Result<()> {
        tokio::fs::create_dir_all(&self.dir).await?;
        let path = self.dir.join(format!("{}.eml", uuid::Uuid::now_v7()));
        let text = format!(
            "To: {}\r\nSubject: {}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{}\r\n",
            mail.to, mail.subject, mail.body
        );
        // Written under a temporary name and renamed, so readers never see half a message.
        let tmp = path.with_extension("tmp");
        tokio::fs::write(&tmp, text).await?;
        tokio::fs::rename(&tmp, &path).await?;
        tracing::info!(to = %mail.to, subject = %mail.subject, path = %path.display(), "mail written to the outbox");
        Ok(())
    }
}

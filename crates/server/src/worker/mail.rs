//! Delivers `mail.send` jobs: over SMTP when `smtp.url` is set, else as `.eml` files under
//! `data_dir/outbox/`. Either way the message's `Message-ID` and the file name come from
//! the job id, so a second delivery of the same job is recognisable (and, for files,
//! simply overwrites the first).

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use ponte_identity::jobs::{Job, JobFailure, JobId};
use ponte_identity::outbox::{OutgoingMail, message_id};
use ponte_identity::seal::MasterKeys;

use super::registry::JobHandler;
use super::smtp::SmtpUrl;
use crate::config::{Config, SmtpConfig};

/// Where rendered messages go.
#[derive(Clone)]
enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Files(PathBuf),
}

/// The `mail.send` handler.
#[derive(Clone)]
pub struct MailHandler {
    from: Mailbox,
    transport: Transport,
    master: MasterKeys,
}

impl std::fmt::Debug for MailHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let transport = match &self.transport {
            Transport::Smtp(_) => "smtp".to_owned(),
            Transport::Files(dir) => dir.display().to_string(),
        };
        f.debug_struct("MailHandler").field("from", &self.from.to_string()).field("transport", &transport).finish()
    }
}

impl MailHandler {
    /// The handler the configuration asks for.
    pub fn from_config(config: &Config, master: MasterKeys) -> Result<Self, String> {
        let smtp: &SmtpConfig = &config.smtp;
        let from = smtp.from.parse::<Mailbox>().map_err(|e| format!("smtp.from: {e}"))?;
        let transport = match smtp.url.as_ref().filter(|u| !u.expose().is_empty()) {
            Some(url) => {
                Transport::Smtp(SmtpUrl::parse(url.expose())?.transport(Duration::from_secs(smtp.timeout_secs))?)
            }
            None => Transport::Files(config.data_dir.join("outbox")),
        };
        Ok(Self { from, transport, master })
    }

    /// Writes files into `dir` instead of talking SMTP.
    pub fn files(from: Mailbox, dir: PathBuf, master: MasterKeys) -> Self {
        Self { from, transport: Transport::Files(dir), master }
    }
}

/// The message a job sends: the same bytes' meaning on every attempt (only `Date` moves).
pub fn build_message(from: &Mailbox, job: JobId, mail: &OutgoingMail) -> Result<Message, JobFailure> {
    let to = mail.to.parse::<Mailbox>().map_err(|e| JobFailure::Permanent(format!("bad recipient address: {e}")))?;
    let rendered = mail.render();
    // Quoted-printable keeps both bodies readable in a file outbox and safe over any relay.
    let part = |content_type: ContentType, body: String| {
        SinglePart::builder().header(content_type).header(ContentTransferEncoding::QuotedPrintable).body(body)
    };
    Message::builder()
        .from(from.clone())
        .to(to)
        .subject(rendered.subject)
        .message_id(Some(message_id(job, from.email.domain())))
        .multipart(
            MultiPart::alternative()
                .singlepart(part(ContentType::TEXT_PLAIN, rendered.text))
                .singlepart(part(ContentType::TEXT_HTML, rendered.html)),
        )
        .map_err(|e| JobFailure::Permanent(format!("cannot build the message: {e}")))
}

/// Writes a file only its owner can read: a mail carries single-use codes.
async fn write_private(path: &std::path::Path, contents: Vec<u8>) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(path).await?;
    // `mode` applies only to a new file: a leftover from before keeps its own.
    #[cfg(unix)]
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600)).await?;
    file.write_all(&contents).await?;
    file.sync_all().await
}

/// SMTP's own verdict: 5xx cannot succeed later, anything else (4xx, connection, timeout,
/// TLS) may.
fn classify(e: &lettre::transport::smtp::Error) -> JobFailure {
    if e.is_permanent() { JobFailure::Permanent(format!("smtp: {e}")) } else { JobFailure::Retry(format!("smtp: {e}")) }
}

#[async_trait]
impl JobHandler for MailHandler {
    async fn run(&self, job: &Job) -> Result<(), JobFailure> {
        let mail = OutgoingMail::from_payload(&job.payload, &self.master).map_err(|e| {
            // The cause can quote the payload (a code): it stays in the debug log, not in
            // last_error, which support reads.
            tracing::debug!(job = %job.id, error = %e, "mail payload unreadable");
            JobFailure::Permanent("the mail could not be opened (another master key, or corrupt)".into())
        })?;
        let message = build_message(&self.from, job.id, &mail)?;
        match &self.transport {
            Transport::Smtp(smtp) => {
                smtp.send(message).await.map_err(|e| classify(&e))?;
                tracing::info!(job = %job.id, to = %mail.to, "mail delivered over SMTP");
            }
            Transport::Files(dir) => {
                let write = async {
                    tokio::fs::create_dir_all(dir).await?;
                    let path = dir.join(format!("{}.eml", job.id));
                    // Written under a temporary name and renamed, so readers never see half a message.
                    let tmp = path.with_extension("tmp");
                    write_private(&tmp, message.formatted()).await?;
                    tokio::fs::rename(&tmp, &path).await?;
                    Ok::<_, std::io::Error>(path)
                };
                let path = write.await.map_err(|e| JobFailure::Retry(format!("outbox folder: {e}")))?;
                // The embedded default has no mail server: the log is where a developer reads it.
                tracing::info!(job = %job.id, to = %mail.to, path = %path.display(), text = %mail.render().text,
                    "mail written to the outbox");
            }
        }
        Ok(())
    }
}

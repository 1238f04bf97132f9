//! The mail outbox: every email is a `mail.send` job, enqueued with the change that causes
//! it and delivered by the worker, so a mail server that is away delays mail but never
//! loses it or fails the request that asked for it.
//!
//! The message is a typed template, rendered at delivery in the recipient's language.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;
use time::OffsetDateTime;

use crate::clock::Clock;
use crate::jobs::{JobId, JobStore, NewJob, SqlJobs};
use crate::seal::MasterKeys;
use crate::{Error, Result};

/// The job kind that carries an email.
pub const MAIL_SEND: &str = "mail.send";

/// The languages mail is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    /// Italiano.
    It,
    /// English.
    En,
}

impl Lang {
    /// The stored and wire spelling: `it` or `en`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::It => "it",
            Self::En => "en",
        }
    }

    /// Parses the stored and wire spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "it" => Some(Self::It),
            "en" => Some(Self::En),
            _ => None,
        }
    }
}

/// The templates Ponte sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "template", rename_all = "snake_case")]
pub enum Message {
    /// A single-use code proving the recipient owns the account an upstream ID wants to link to.
    LinkCode {
        /// The code to type in.
        code: String,
        /// The upstream provider's display name.
        provider_name: String,
        /// The email of the upstream identity asking to be linked.
        upstream_email: String,
    },
    /// A collaboration invite: accept it to activate a company's e-invoicing integration.
    CollaborationInvite {
        /// The single-use link to `/invites/{token}`.
        link: String,
        /// The company's legal name.
        company_name: String,
        /// The platform account the company is tied to.
        platform_account: String,
        /// The last day the link works (`YYYY-MM-DD`).
        expires_on: String,
    },
    /// A single-use link to choose a new password, asked for on `/password/forgot`.
    PasswordReset {
        /// The link to `/password/reset?token=…`.
        link: String,
        /// How long it works.
        expires_in_minutes: u32,
    },
    /// The password was just changed through a reset; every session was ended.
    PasswordChanged {},
    /// A new member of an account chooses their first password with a single-use link.
    PasswordSetup {
        /// The link to `/password/reset?token=…`.
        link: String,
        /// The account the member was added to.
        account_name: String,
        /// The last day the link works (`YYYY-MM-DD`).
        expires_on: String,
    },
    /// To the owner: paid seats are about to expire.
    SeatsExpiring {
        /// The account.
        account_name: String,
        /// How many seats the grant holds.
        quantity: u32,
        /// The order they were bought with.
        order_reference: String,
        /// The last day they count (`YYYY-MM-DD`).
        expires_on: String,
    },
    /// To the owner: seats lapsed and these members were suspended (never deleted).
    SeatsLapsed {
        /// The account.
        account_name: String,
        /// The suspended members, as `Name <email>`.
        suspended: Vec<String>,
    },
}

/// One email, before rendering.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutgoingMail {
    /// The recipient's address.
    pub to: String,
    /// The recipient's language.
    pub lang: Lang,
    /// What to say.
    pub message: Message,
}

/// A rendered email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The subject line.
    pub subject: String,
    /// The plain-text body.
    pub text: String,
    /// The HTML body; every interpolated value is escaped.
    pub html: String,
}

impl OutgoingMail {
    /// Renders subject, text and HTML in the recipient's language.
    pub fn render(&self) -> Rendered {
        match &self.message {
            Message::LinkCode { code, provider_name, upstream_email } => {
                let (subject, intro, ignore) = match self.lang {
                    Lang::It => (
                        "Ponte: il codice per collegare il tuo ID",
                        format!(
                            "Qualcuno vuole collegare l'ID {provider_name} ({upstream_email}) al tuo account Ponte."
                        ),
                        "Se non sei stato tu, ignora questa email: senza il codice non succede nulla.",
                    ),
                    Lang::En => (
                        "Ponte: your code to link your ID",
                        format!(
                            "Someone wants to link the {provider_name} ID ({upstream_email}) to your Ponte account."
                        ),
                        "If it was not you, ignore this email: nothing happens without the code.",
                    ),
                };
                let label = match self.lang {
                    Lang::It => "Codice",
                    Lang::En => "Code",
                };
                let text = format!("{intro}\n\n{label}: {code}\n\n{ignore}\n");
                let intro_html = match self.lang {
                    Lang::It => format!(
                        "Qualcuno vuole collegare l'ID <b>{}</b> ({}) al tuo account Ponte.",
                        escape_html(provider_name),
                        escape_html(upstream_email)
                    ),
                    Lang::En => format!(
                        "Someone wants to link the <b>{}</b> ID ({}) to your Ponte account.",
                        escape_html(provider_name),
                        escape_html(upstream_email)
                    ),
                };
                let html = format!(
                    "<!doctype html><html lang=\"{lang}\"><body><p>{intro_html}</p>\
                     <p>{label}: <strong id=\"code\">{code}</strong></p><p>{ignore}</p></body></html>",
                    lang = self.lang_code(),
                    code = escape_html(code),
                );
                Rendered { subject: subject.to_owned(), text, html }
            }
            Message::CollaborationInvite { link, company_name, platform_account, expires_on } => {
                let (subject, intro, how, until) = match self.lang {
                    Lang::It => (
                        format!("Invito di collaborazione: fatturazione elettronica di {company_name}"),
                        format!(
                            "Sei invitato a collaborare sull'account {platform_account} della piattaforma di \
                             fatturazione elettronica per l'azienda {company_name}."
                        ),
                        "Apri il link e accedi con il tuo ID esterno per accettare l'invito:",
                        format!("Il link vale una sola volta, fino al {expires_on}."),
                    ),
                    Lang::En => (
                        format!("Collaboration invite: electronic invoicing for {company_name}"),
                        format!(
                            "You are invited to collaborate on the platform account {platform_account} for the \
                             electronic invoicing of {company_name}."
                        ),
                        "Open the link and sign in with your external ID to accept the invite:",
                        format!("The link works once, until {expires_on}."),
                    ),
                };
                let text = format!("{intro}\n\n{how}\n{link}\n\n{until}\n");
                let html = format!(
                    "<!doctype html><html lang=\"{lang}\"><body><p>{intro}</p><p>{how}<br>\
                     <a id=\"invite\" href=\"{link}\">{link}</a></p><p>{until}</p></body></html>",
                    lang = self.lang_code(),
                    intro = escape_html(&intro),
                    how = escape_html(how),
                    link = escape_html(link),
                    until = escape_html(&until),
                );
                Rendered { subject, text, html }
            }
            Message::PasswordReset { link, expires_in_minutes } => {
                let (subject, intro, until, ignore) = match self.lang {
                    Lang::It => (
                        "Ponte: reimposta la password",
                        "Hai chiesto di reimpostare la password del tuo account Ponte. Apri il link per sceglierne una nuova:",
                        format!("Il link vale una sola volta, per {expires_in_minutes} minuti."),
                        "Se non sei stato tu, ignora questa email: la password resta quella di prima.",
                    ),
                    Lang::En => (
                        "Ponte: reset your password",
                        "You asked to reset the password of your Ponte account. Open the link to choose a new one:",
                        format!("The link works once, for {expires_in_minutes} minutes."),
                        "If it was not you, ignore this email: your password stays as it was.",
                    ),
                };
                let text = format!("{intro}\n{link}\n\n{until}\n{ignore}\n");
                let html = format!(
                    "<!doctype html><html lang=\"{lang}\"><body><p>{intro}<br>\
                     <a id=\"reset\" href=\"{link}\">{link}</a></p><p>{until}</p><p>{ignore}</p></body></html>",
                    lang = self.lang_code(),
                    intro = escape_html(intro),
                    link = escape_html(link),
                    until = escape_html(&until),
                    ignore = escape_html(ignore),
                );
                Rendered { subject: subject.to_owned(), text, html }
            }
            Message::PasswordChanged {} => {
                let (subject, said, unknown) = match self.lang {
                    Lang::It => (
                        "Ponte: la tua password è stata cambiata",
                        "La password del tuo account Ponte è stata appena cambiata con un link di reimpostazione. \
                         Tutte le sessioni aperte sono state chiuse: accedi di nuovo con la nuova password.",
                        "Se non sei stato tu, chiedi subito una nuova reimpostazione e avvisa l'amministratore del tuo account.",
                    ),
                    Lang::En => (
                        "Ponte: your password was changed",
                        "The password of your Ponte account was just changed through a reset link. \
                         Every open session was ended: sign in again with the new password.",
                        "If it was not you, ask for a new reset at once and tell your account's administrator.",
                    ),
                };
                let text = format!("{said}\n\n{unknown}\n");
                let html = format!(
                    "<!doctype html><html lang=\"{lang}\"><body><p>{said}</p><p>{unknown}</p></body></html>",
                    lang = self.lang_code(),
                    said = escape_html(said),
                    unknown = escape_html(unknown),
                );
                Rendered { subject: subject.to_owned(), text, html }
            }
            Message::PasswordSetup { link, account_name, expires_on } => {
                let (subject, intro, until) = match self.lang {
                    Lang::It => (
                        format!("Ponte: sei stato aggiunto a {account_name}"),
                        format!(
                            "Sei stato aggiunto come utente dell'account {account_name}. Apri il link per scegliere \
                             la tua password:"
                        ),
                        format!("Il link vale una sola volta, fino al {expires_on}."),
                    ),
                    Lang::En => (
                        format!("Ponte: you were added to {account_name}"),
                        format!(
                            "You were added as a user of the account {account_name}. Open the link to choose your password:"
                        ),
                        format!("The link works once, until {expires_on}."),
                    ),
                };
                let text = format!("{intro}\n{link}\n\n{until}\n");
                let html = format!(
                    "<!doctype html><html lang=\"{lang}\"><body><p>{intro}<br>\
                     <a id=\"setup\" href=\"{link}\">{link}</a></p><p>{until}</p></body></html>",
                    lang = self.lang_code(),
                    intro = escape_html(&intro),
                    link = escape_html(link),
                    until = escape_html(&until),
                );
                Rendered { subject, text, html }
            }
            Message::SeatsExpiring { account_name, quantity, order_reference, expires_on } => {
                let (subject, said, what) = match self.lang {
                    Lang::It => (
                        format!("Ponte: gli utenti aggiuntivi di {account_name} scadono il {expires_on}"),
                        format!(
                            "{quantity} utenti aggiuntivi dell'ordine {order_reference} valgono fino al {expires_on}."
                        ),
                        "Rinnova per tempo: alla scadenza gli utenti oltre i posti validi vengono sospesi (mai eliminati).",
                    ),
                    Lang::En => (
                        format!("Ponte: the additional users of {account_name} expire on {expires_on}"),
                        format!("{quantity} additional users of order {order_reference} count until {expires_on}."),
                        "Renew in time: when they expire, members beyond the valid seats are suspended (never deleted).",
                    ),
                };
                let text = format!("{said}\n\n{what}\n");
                let html = format!(
                    "<!doctype html><html lang=\"{lang}\"><body><p>{said}</p><p>{what}</p></body></html>",
                    lang = self.lang_code(),
                    said = escape_html(&said),
                    what = escape_html(what),
                );
                Rendered { subject, text, html }
            }
            Message::SeatsLapsed { account_name, suspended } => {
                let (subject, said, how) = match self.lang {
                    Lang::It => (
                        format!("Ponte: utenti sospesi in {account_name}"),
                        "I posti per gli utenti aggiuntivi sono scaduti. Questi utenti sono stati sospesi e non possono \
                         accedere; nessuno è stato eliminato:",
                        "Acquista nuovi posti: appena il pagamento è registrato, gli utenti sospesi tornano attivi.",
                    ),
                    Lang::En => (
                        format!("Ponte: members suspended in {account_name}"),
                        "The seats for additional users expired. These members were suspended and cannot sign in; \
                         nobody was deleted:",
                        "Buy new seats: once the payment is registered, the suspended members become active again.",
                    ),
                };
                let list = suspended.iter().map(|s| format!("- {s}")).collect::<Vec<_>>().join("\n");
                let text = format!("{said}\n{list}\n\n{how}\n");
                let items: String = suspended.iter().map(|s| format!("<li>{}</li>", escape_html(s))).collect();
                let html = format!(
                    "<!doctype html><html lang=\"{lang}\"><body><p>{said}</p><ul id=\"suspended\">{items}</ul>\
                     <p>{how}</p></body></html>",
                    lang = self.lang_code(),
                    said = escape_html(said),
                    how = escape_html(how),
                );
                Rendered { subject, text, html }
            }
        }
    }

    fn lang_code(&self) -> &'static str {
        match self.lang {
            Lang::It => "it",
            Lang::En => "en",
        }
    }

    /// The `mail.send` job that carries this mail, sealed with the master key: mail
    /// carries single-use codes and links, which must not sit readable in the jobs table.
    pub fn to_job(&self, master: &MasterKeys) -> Result<NewJob> {
        let json = serde_json::to_vec(self).map_err(|e| Error::Invalid(format!("mail payload: {e}")))?;
        let sealed = master.seal(&json, MAIL_SEND)?;
        Ok(NewJob::new(MAIL_SEND, serde_json::json!({ "sealed": sealed })))
    }

    /// The mail a `mail.send` job carries, opened with the master key.
    pub fn from_payload(payload: &serde_json::Value, master: &MasterKeys) -> Result<Self> {
        let sealed = payload
            .get("sealed")
            .and_then(|v| v.as_str())
            .ok_or_else(|| Error::Corrupt("mail payload: not a sealed mail".into()))?;
        let json = master.open(sealed, MAIL_SEND)?;
        serde_json::from_slice(&json).map_err(|e| Error::Corrupt(format!("mail payload: {e}")))
    }
}

/// Escapes text for HTML bodies and double-quoted attributes (mail here, pages in the server).
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            c => out.push(c),
        }
    }
    out
}

/// The `Message-ID` of the mail a job sends, in the sender's domain: the same on every
/// delivery attempt, so a duplicate delivery after a crash is recognisable as one.
pub fn message_id(job: JobId, domain: &str) -> String {
    format!("<{job}@{domain}>")
}

/// Where emails go.
#[async_trait]
pub trait Outbox: Send + Sync + std::fmt::Debug {
    /// Queues a mail for delivery; returns the job that carries it.
    async fn send(&self, mail: OutgoingMail) -> Result<JobId>;

    /// Queues a mail inside the caller's transaction (pass `&mut *tx`): it leaves only if
    /// that transaction commits.
    async fn send_in(&self, conn: &mut AnyConnection, mail: &OutgoingMail, now: OffsetDateTime) -> Result<JobId>;
}

/// The outbox on the job queue.
#[derive(Debug, Clone)]
pub struct JobOutbox {
    jobs: Arc<SqlJobs>,
    master: MasterKeys,
    clock: Arc<dyn Clock>,
}

impl JobOutbox {
    /// An outbox enqueueing into `jobs`, sealing each mail with `master`.
    pub fn new(jobs: Arc<SqlJobs>, master: MasterKeys, clock: Arc<dyn Clock>) -> Self {
        Self { jobs, master, clock }
    }
}

#[async_trait]
impl Outbox for JobOutbox {
    async fn send(&self, mail: OutgoingMail) -> Result<JobId> {
        Ok(self.jobs.enqueue(mail.to_job(&self.master)?, self.clock.now()).await?.job.id)
    }

    async fn send_in(&self, conn: &mut AnyConnection, mail: &OutgoingMail, now: OffsetDateTime) -> Result<JobId> {
        Ok(self.jobs.enqueue_in(conn, mail.to_job(&self.master)?, now).await?.job.id)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn link_code(lang: Lang, provider_name: &str, upstream_email: &str) -> OutgoingMail {
        OutgoingMail {
            to: "mario@esempio.it".into(),
            lang,
            message: Message::LinkCode {
                code: "12345678".into(),
                provider_name: provider_name.into(),
                upstream_email: upstream_email.into(),
            },
        }
    }

    #[test]
    fn the_link_code_speaks_the_recipients_language_in_text_and_html() {
        let it = link_code(Lang::It, "TeamSystem ID", "mario@gruppo.it").render();
        assert_eq!(it.subject, "Ponte: il codice per collegare il tuo ID");
        assert!(it.text.contains("Codice: 12345678"), "{}", it.text);
        assert!(it.text.contains("collegare l'ID TeamSystem ID (mario@gruppo.it)"), "{}", it.text);
        assert!(it.html.contains("lang=\"it\"") && it.html.contains("<strong id=\"code\">12345678</strong>"));
        let en = link_code(Lang::En, "TeamSystem ID", "mario@gruppo.it").render();
        assert_eq!(en.subject, "Ponte: your code to link your ID");
        assert!(en.text.contains("Code: 12345678") && !en.text.contains("Codice"), "{}", en.text);
        assert!(en.html.contains("lang=\"en\"") && en.html.contains("the <b>TeamSystem ID</b> ID"));
    }

    #[test]
    fn the_collaboration_invite_carries_its_link_and_expiry_in_both_languages() {
        let mail = |lang| OutgoingMail {
            to: "mario@esempio.it".into(),
            lang,
            message: Message::CollaborationInvite {
                link: "https://ponte.example/invites/abc".into(),
                company_name: "Bar <Sport>".into(),
                platform_account: "Bar Sport S.r.l.".into(),
                expires_on: "2026-12-08".into(),
            },
        };
        let it = mail(Lang::It).render();
        assert!(it.subject.contains("Bar <Sport>") && it.subject.starts_with("Invito"), "{}", it.subject);
        assert!(it.text.contains("https://ponte.example/invites/abc") && it.text.contains("fino al 2026-12-08"));
        assert!(
            it.html.contains("href=\"https://ponte.example/invites/abc\"") && it.html.contains("Bar &lt;Sport&gt;")
        );
        let en = mail(Lang::En).render();
        assert!(en.text.contains("until 2026-12-08") && en.subject.starts_with("Collaboration"), "{}", en.text);
    }

    #[test]
    fn the_reset_mail_carries_its_link_and_lifetime_and_the_changed_mail_says_what_ended() {
        let reset = |lang| OutgoingMail {
            to: "mario@esempio.it".into(),
            lang,
            message: Message::PasswordReset {
                link: "https://ponte.example/password/reset?token=abc&x=1".into(),
                expires_in_minutes: 30,
            },
        };
        let it = reset(Lang::It).render();
        assert_eq!(it.subject, "Ponte: reimposta la password");
        assert!(
            it.text.contains("https://ponte.example/password/reset?token=abc&x=1") && it.text.contains("30 minuti")
        );
        assert!(it.html.contains("href=\"https://ponte.example/password/reset?token=abc&amp;x=1\""), "{}", it.html);
        let en = reset(Lang::En).render();
        assert!(en.subject.contains("reset your password") && en.text.contains("for 30 minutes"), "{}", en.text);
        let changed = |lang| OutgoingMail { to: "mario@esempio.it".into(), lang, message: Message::PasswordChanged {} };
        let it = changed(Lang::It).render();
        assert!(it.subject.contains("cambiata") && it.text.contains("sessioni"), "{}", it.text);
        let en = changed(Lang::En).render();
        assert!(en.subject.contains("changed") && en.text.contains("Every open session was ended"), "{}", en.text);
        let master = MasterKeys::generate();
        let mail = changed(Lang::En);
        assert_eq!(OutgoingMail::from_payload(&mail.to_job(&master).unwrap().payload, &master).unwrap(), mail);
    }

    #[test]
    fn the_member_and_seat_mails_say_what_happened_in_both_languages() {
        let mail = |lang, message| OutgoingMail { to: "mario@esempio.it".into(), lang, message };
        let setup = Message::PasswordSetup {
            link: "https://ponte.example/password/reset?token=abc".into(),
            account_name: "Bar <Sport>".into(),
            expires_on: "2026-12-14".into(),
        };
        let it = mail(Lang::It, setup.clone()).render();
        assert!(it.subject.contains("Bar <Sport>") && it.text.contains("fino al 2026-12-14"), "{}", it.text);
        assert!(it.html.contains("id=\"setup\" href=\"https://ponte.example/password/reset?token=abc\""));
        assert!(it.html.contains("Bar &lt;Sport&gt;") && !it.html.contains("<Sport>"));
        assert!(mail(Lang::En, setup).render().text.contains("choose your password"));
        let expiring = Message::SeatsExpiring {
            account_name: "Bar Sport".into(),
            quantity: 3,
            order_reference: "ORD-1".into(),
            expires_on: "2027-01-01".into(),
        };
        let en = mail(Lang::En, expiring).render();
        assert!(en.text.contains("3 additional users of order ORD-1 count until 2027-01-01"), "{}", en.text);
        let lapsed = Message::SeatsLapsed {
            account_name: "Bar Sport".into(),
            suspended: vec!["Anna <anna@esempio.it>".into(), "Bruno <b@esempio.it>".into()],
        };
        let it = mail(Lang::It, lapsed).render();
        assert!(it.text.contains("- Anna <anna@esempio.it>\n- Bruno <b@esempio.it>"), "{}", it.text);
        assert!(it.html.contains("<li>Anna &lt;anna@esempio.it&gt;</li>") && it.subject.contains("sospesi"));
    }

    #[test]
    fn interpolated_values_are_escaped_in_html_only() {
        let r = link_code(Lang::En, "<script>alert(1)</script>", "a&b\"'@x.it").render();
        assert!(!r.html.contains("<script>"), "{}", r.html);
        assert!(r.html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(r.html.contains("a&amp;b&quot;&#x27;@x.it"));
        assert!(r.text.contains("<script>alert(1)</script>"), "plain text stays as typed");
    }

    #[test]
    fn a_mail_survives_its_sealed_job_payload_and_no_code_is_readable_there() {
        let master = MasterKeys::generate();
        let mail = link_code(Lang::It, "X", "y@z.it");
        let job = mail.to_job(&master).unwrap();
        assert_eq!(job.kind, MAIL_SEND);
        let stored = job.payload.to_string();
        for clear in ["y@z.it", "mario@esempio.it", "12345678"] {
            assert!(!stored.contains(clear), "{clear} is readable in {stored}");
        }
        assert_eq!(OutgoingMail::from_payload(&job.payload, &master).unwrap(), mail);
        assert!(
            OutgoingMail::from_payload(&job.payload, &MasterKeys::generate()).is_err(),
            "another key cannot open it"
        );
        assert!(OutgoingMail::from_payload(&serde_json::json!({"to": 1}), &master).is_err());
        let id = JobId::new();
        assert_eq!(message_id(id, "esempio.it"), format!("<{id}@esempio.it>"));
    }
}

//! `smtp.url`: how Ponte reaches its mail server, and the lettre transport built from it.

use std::fmt;
use std::time::Duration;

use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, Tokio1Executor};
use ponte_identity::client::is_loopback_host;

/// How the connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Plain SMTP, no STARTTLS attempted (`smtp://`): a relay on loopback or a test sink.
    None,
    /// STARTTLS required (`smtp://…?tls=starttls`).
    StartTls,
    /// TLS from the first byte (`smtps://`).
    Implicit,
}

/// A parsed `smtp.url`.
#[derive(Clone, PartialEq, Eq)]
pub struct SmtpUrl {
    /// Host name or address.
    pub host: String,
    /// Port (25 plain, 587 STARTTLS, 465 implicit TLS unless given).
    pub port: u16,
    /// Transport security.
    pub security: Security,
    /// `user:pass` from the URL, percent-decoded; AUTH is used only when present.
    pub credentials: Option<(String, String)>,
}

impl fmt::Debug for SmtpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpUrl")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("user", &self.credentials.as_ref().map(|(u, _)| u))
            .finish_non_exhaustive()
    }
}

impl SmtpUrl {
    /// Parses `smtp://[user:pass@]host[:port][?tls=starttls]` or `smtps://…`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let url = url::Url::parse(text).map_err(|e| format!("smtp.url is not a URL: {e}"))?;
        let mut plain_asked = false;
        let mut security = match url.scheme() {
            "smtp" => Security::None,
            "smtps" => Security::Implicit,
            other => return Err(format!("smtp.url must start with smtp:// or smtps://, not {other}://")),
        };
        for (key, value) in url.query_pairs() {
            match (key.as_ref(), value.as_ref(), security) {
                ("tls", "starttls", Security::None) => security = Security::StartTls,
                ("tls", "none", Security::None) => plain_asked = true,
                ("tls", "implicit", Security::Implicit) => {}
                ("tls", v, _) => return Err(format!("smtp.url: tls={v} does not fit {}://", url.scheme())),
                (k, _, _) => return Err(format!("smtp.url: unknown parameter {k:?}")),
            }
        }
        if !matches!(url.path(), "" | "/") || url.fragment().is_some() {
            return Err("smtp.url must not have a path or fragment".into());
        }
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or("smtp.url needs a host")?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = url.port().unwrap_or(match security {
            Security::None => 25,
            Security::StartTls => 587,
            Security::Implicit => 465,
        });
        let decode = |s: &str| percent_decode(s);
        let credentials = match (url.username(), url.password()) {
            ("", None) => None,
            (user, Some(pass)) => Some((decode(user)?, decode(pass)?)),
            (_, None) => return Err("smtp.url: a user needs a password (user:pass@host)".into()),
        };
        if security == Security::None {
            // Mail carries sign-in codes: in clear only on this machine, or when the operator
            // says so (`?tls=none`, e.g. a relay on a private link), and never a password.
            if credentials.is_some() {
                return Err("smtp.url: a user and password need TLS (smtps:// or ?tls=starttls)".into());
            }
            if !plain_asked && !is_loopback_host(&host) {
                return Err(format!(
                    "smtp.url: plain SMTP to {host} would send codes in clear; use ?tls=starttls or smtps://, \
                     or ?tls=none to insist"
                ));
            }
        }
        Ok(Self { host, port, security, credentials })
    }

    /// The lettre transport for this URL, with a timeout on every command.
    pub fn transport(&self, timeout: Duration) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
        // "Dangerous" only means "no TLS unless told": the URL says which.
        let mut builder =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&self.host).port(self.port).timeout(Some(timeout));
        builder = match self.security {
            Security::None => builder.tls(Tls::None),
            Security::StartTls | Security::Implicit => {
                let params = TlsParameters::new(self.host.clone()).map_err(|e| format!("smtp TLS: {e}"))?;
                builder.tls(if self.security == Security::StartTls {
                    Tls::Required(params)
                } else {
                    Tls::Wrapper(params)
                })
            }
        };
        if let Some((user, pass)) = &self.credentials {
            builder = builder.credentials(Credentials::new(user.clone(), pass.clone()));
        }
        Ok(builder.build())
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or("smtp.url: bad percent escape")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| "smtp.url: bad percent escape")?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "smtp.url: credentials are not UTF-8".into())
}

/// Checks `smtp.url` and `smtp.from` at start-up, so a typo fails there rather than at
/// the first mail.
pub fn check(url: Option<&str>, from: &str) -> Result<(), String> {
    if let Some(url) = url.filter(|u| !u.is_empty()) {
        SmtpUrl::parse(url)?;
    }
    from.parse::<lettre::message::Mailbox>().map_err(|e| format!("smtp.from {from:?} is not an address: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_starttls_and_implicit_tls_urls() {
        let plain = SmtpUrl::parse("smtp://127.0.0.1:8025").unwrap();
        assert_eq!(
            plain,
            SmtpUrl { host: "127.0.0.1".into(), port: 8025, security: Security::None, credentials: None }
        );
        let starttls = SmtpUrl::parse("smtp://mail.example.com?tls=starttls").unwrap();
        assert_eq!((starttls.port, starttls.security), (587, Security::StartTls));
        let implicit = SmtpUrl::parse("smtps://mail.example.com").unwrap();
        assert_eq!((implicit.port, implicit.security), (465, Security::Implicit));
        assert_eq!(SmtpUrl::parse("smtp://mail.example.com?tls=none").unwrap().port, 25);
        assert_eq!(SmtpUrl::parse("smtp://[::1]:2525").unwrap().host, "::1");
    }

    #[test]
    fn credentials_are_percent_decoded_and_kept_out_of_debug() {
        let u = SmtpUrl::parse("smtps://ponte%40example.com:p%3Ass%2Fword@mail.example.com:2465").unwrap();
        assert_eq!(u.credentials, Some(("ponte@example.com".into(), "p:ss/word".into())));
        assert_eq!(u.port, 2465);
        assert!(!format!("{u:?}").contains("p:ss"), "{u:?}");
    }

    #[test]
    fn nonsense_is_refused_with_a_reason() {
        for bad in [
            "http://mail.example.com",
            "smtp://",
            "smtp://mail.example.com?tls=sometimes",
            "smtps://mail.example.com?tls=starttls",
            "smtp://mail.example.com?auth=plain",
            "smtp://user@mail.example.com",
            "smtp://mail.example.com",
            "smtp://192.0.2.1:25",
            "smtp://user:pass@127.0.0.1:2525",
            "smtp://user:pass@mail.example.com?tls=none",
            "smtp://mail.example.com/path",
            "not a url",
        ] {
            assert!(SmtpUrl::parse(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn transports_build_for_every_security() {
        for url in ["smtp://127.0.0.1:2525", "smtp://localhost?tls=starttls", "smtps://u:p@localhost"] {
            SmtpUrl::parse(url).unwrap().transport(Duration::from_secs(5)).unwrap();
        }
    }
}

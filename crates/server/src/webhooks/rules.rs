//! The rules a webhook receiver's definition must meet, wherever it comes from (the
//! configuration or REST). Pure checks with no other part of the server behind them.

use ponte_identity::client::is_loopback_host;

/// Shortest signing secret accepted.
pub const MIN_SECRET_LEN: usize = 32;

/// A value of a receiver's definition that breaks a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    /// The field, as named in the request.
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> Invalid {
    Invalid { field, message: message.into() }
}

/// Checks a receiver id: 1 to 64 of `a-z`, `0-9`, `_`, `-`.
pub fn check_id(id: &str) -> Result<(), Invalid> {
    let ok = (1..=64).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok { Ok(()) } else { Err(invalid("receiver", "use 1 to 64 lowercase letters, digits, '_' or '-'")) }
}

/// Checks a receiver URL: `https`, or `http` to a loopback host only; no user or password
/// in it (a credential in a URL ends up in logs), no fragment.
pub fn check_url(url: &str) -> Result<(), Invalid> {
    let parsed = url::Url::parse(url).map_err(|e| invalid("url", format!("not a URL: {e}")))?;
    let host = match parsed.host() {
        Some(url::Host::Domain(d)) => d.to_owned(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        None => return Err(invalid("url", "the URL has no host")),
    };
    match parsed.scheme() {
        "https" => {}
        "http" if is_loopback_host(&host) => {}
        "http" => return Err(invalid("url", "use https (plain http only to a loopback host)")),
        other => return Err(invalid("url", format!("scheme {other:?}: use https"))),
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid("url", "the URL must not carry a user or password"));
    }
    if parsed.fragment().is_some() {
        return Err(invalid("url", "the URL must not have a fragment"));
    }
    Ok(())
}

/// Checks a signing secret: at least [`MIN_SECRET_LEN`] characters.
pub fn check_secret(secret: &str) -> Result<(), Invalid> {
    if secret.chars().count() < MIN_SECRET_LEN {
        return Err(invalid("secret", format!("the secret must be at least {MIN_SECRET_LEN} characters")));
    }
    Ok(())
}

/// Checks a whole receiver definition.
pub fn check(id: &str, url: &str, secret: &str) -> Result<(), Invalid> {
    check_id(id)?;
    check_url(url)?;
    check_secret(secret)
}

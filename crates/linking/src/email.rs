//! Email addresses that can only hold plausible values.

use std::fmt;

use crate::{Error, Result};

/// A syntactically plausible email address. Uniqueness is case-insensitive: compare
/// [`Email::normalized`], show [`Email::as_str`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// Parses and trims an address; the error says what is wrong.
    pub fn parse(input: &str) -> Result<Self> {
        let s = input.trim();
        let bad = |m: &str| Error::invalid("email", m);
        if s.is_empty() {
            return Err(bad("email is required"));
        }
        if s.len() > 254 {
            return Err(bad("email is longer than 254 characters"));
        }
        let Some((local, domain)) = s.rsplit_once('@') else {
            return Err(bad("email must contain @"));
        };
        if local.is_empty() || local.len() > 64 {
            return Err(bad("the part before @ must have 1 to 64 characters"));
        }
        let labels_ok = domain.split('.').count() >= 2
            && domain.split('.').all(|l| {
                !l.is_empty()
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.chars().all(|c| c.is_alphanumeric() || c == '-')
            });
        if !labels_ok {
            return Err(bad("the part after @ must be a domain such as example.com"));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | '"' | ',' | ';'))
            || local.contains('@')
        {
            return Err(bad("email contains characters that are not allowed"));
        }
        Ok(Self(s.to_owned()))
    }

    /// As given (trimmed).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form uniqueness is checked on.
    pub fn normalized(&self) -> String {
        self.0.to_lowercase()
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_addresses_and_normalizes_case() {
        let e = Email::parse("  Mario.Rossi+pos@Esempio.IT ").unwrap();
        assert_eq!(e.as_str(), "Mario.Rossi+pos@Esempio.IT");
        assert_eq!(e.normalized(), "mario.rossi+pos@esempio.it");
        assert!(Email::parse("a@b.co").is_ok());
        assert!(Email::parse("anna@città.it").is_ok());
    }

    #[test]
    fn rejects_what_is_not_an_address() {
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a@localhost",
            "a b@example.com",
            "a@-x.com",
            "a@x..com",
            "<a@x.com>",
            "a@b@x.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(Email::parse(&format!("{}@example.com", "a".repeat(65))).is_err());
    }
}

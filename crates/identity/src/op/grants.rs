//! The token endpoint as a use case: the `authorization_code` (with PKCE),
//! `refresh_token` (rotating, with reuse detection) and `client_credentials` grants, and
//! the claims each mints.
//!
//! A refused request changes nothing: every check runs before a code's tokens are
//! minted or a refresh family moves on.

use std::collections::HashMap;
use std::sync::Arc;

use time::OffsetDateTime;

use super::{Provider, Subject, codes, denylist};
use crate::Error;
use crate::client::{Client, GrantType};
use crate::oidc::{CodeGrant, RedeemedCode, pkce_matches};
use crate::refresh::{Family, NewFamily, Verdict, family_of, judge};
use crate::token::{AccessTokenClaims, IdTokenClaims};

/// An RFC 6749 §5.2 refusal: the error code and a description for a developer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `invalid_request`, `invalid_client`, `invalid_grant`, `invalid_scope`,
    /// `unauthorized_client` or `unsupported_grant_type`.
    pub error: &'static str,
    /// For a developer.
    pub description: String,
    /// Whether it answers the reuse of an old refresh token (the family was revoked).
    pub reuse_detected: bool,
}

impl Refusal {
    /// A refusal with `error` and `description`.
    pub fn new(error: &'static str, description: impl Into<String>) -> Self {
        Self { error, description: description.into(), reuse_detected: false }
    }

    fn invalid_grant(description: &str) -> Self {
        Self::new("invalid_grant", description)
    }
}

/// Why a token request got no tokens.
#[derive(Debug)]
pub enum GrantFailure {
    /// A rule refused it; the client is told why.
    Refused(Refusal),
    /// A store or the signer failed.
    Fault(Error),
}

impl From<Refusal> for GrantFailure {
    fn from(r: Refusal) -> Self {
        Self::Refused(r)
    }
}

impl From<Error> for GrantFailure {
    fn from(e: Error) -> Self {
        Self::Fault(e)
    }
}

/// The outcome of a grant, before or after refusal.
pub type GrantResult<T> = std::result::Result<T, GrantFailure>;

/// What a successful grant issues (RFC 6749 §5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSet {
    /// The signed access token.
    pub access_token: String,
    /// Its lifetime in seconds.
    pub expires_in: u64,
    /// The granted scopes, space-separated.
    pub scope: String,
    /// The signed ID token, with scope `openid`.
    pub id_token: Option<String>,
    /// The new refresh token, when the grant starts or continues a family.
    pub refresh_token: Option<String>,
    /// The grant that issued it.
    pub grant_type: GrantType,
}

/// Which of `allowed` to grant: all when none are asked for, else exactly those asked
/// (deduplicated), if each is allowed.
pub fn granted_scope(allowed: &[String], requested: Option<&str>) -> Result<String, Refusal> {
    let Some(requested) = requested.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(allowed.join(" "));
    };
    let mut granted: Vec<&str> = Vec::new();
    for scope in requested.split(' ').filter(|s| !s.is_empty()) {
        if !allowed.iter().any(|s| s == scope) {
            return Err(Refusal::new("invalid_scope", format!("Scope {scope} is not allowed here.")));
        }
        if !granted.contains(&scope) {
            granted.push(scope);
        }
    }
    Ok(granted.join(" "))
}

/// What a user's tokens are minted from: a redeemed code or a refresh family.
#[derive(Debug, Clone)]
pub struct UserGrant<'a> {
    /// The user, as the directory has them now.
    pub subject: &'a Subject,
    /// The client.
    pub client_id: &'a str,
    /// Granted scopes, space-separated.
    pub scope: &'a str,
    /// The client's nonce (code grants only).
    pub nonce: Option<&'a str>,
    /// When the user authenticated (Unix seconds).
    pub auth_time: i64,
    /// Authentication methods.
    pub amr: Vec<String>,
    /// The Ponte session.
    pub sid: Option<&'a str>,
}

impl Provider<'_> {
    /// The claims of a user's access token and, with scope `openid`, of the ID token.
    pub fn user_claims(
        &self,
        grant: &UserGrant<'_>,
        now: OffsetDateTime,
    ) -> (AccessTokenClaims, Option<IdTokenClaims>) {
        let s = &self.settings;
        let subject = grant.subject;
        let access = AccessTokenClaims {
            access: Some(subject.access.clone()),
            ..AccessTokenClaims::for_user(
                &s.issuer,
                subject.id,
                subject.account_id,
                &subject.role,
                grant.client_id,
                grant.scope,
                now,
                s.access_token_ttl,
            )
        };
        let scopes: Vec<&str> = grant.scope.split(' ').collect();
        let profile = scopes.contains(&"profile");
        let email = scopes.contains(&"email");
        let id = scopes.contains(&"openid").then(|| IdTokenClaims {
            iss: s.issuer.clone(),
            sub: subject.id.to_string(),
            aud: grant.client_id.to_owned(),
            exp: (now + s.id_token_ttl).unix_timestamp(),
            iat: now.unix_timestamp(),
            auth_time: grant.auth_time,
            nonce: grant.nonce.map(str::to_owned),
            amr: grant.amr.clone(),
            sid: grant.sid.map(str::to_owned),
            azp: grant.client_id.to_owned(),
            email: email.then(|| subject.email.clone()),
            email_verified: email.then_some(s.assert_email_verified),
            name: profile.then(|| subject.name.clone()),
            account_id: Some(subject.account_id.to_string()),
            access: profile.then(|| subject.access.clone()),
        });
        (access, id)
    }

    /// Checks a client's credentials: a matching secret for a confidential client, no
    /// secret for a public one. `None` when they do not hold (unknown and wrong look the
    /// same).
    pub async fn authenticate_client(
        &self,
        client_id: &str,
        secret: Option<&str>,
    ) -> crate::Result<Option<Arc<Client>>> {
        let client = self.client(client_id).await?;
        let authenticated = match (&client, secret) {
            (Some(c), Some(secret)) => c.secret_matches(secret),
            (Some(c), None) => !c.is_confidential(),
            (None, _) => false,
        };
        Ok(client.filter(|_| authenticated))
    }

    /// `POST /oauth2/token` for an authenticated `client`: `params` is the form, each
    /// parameter once.
    pub async fn token(
        &self,
        client: &Client,
        params: &HashMap<String, String>,
        now: OffsetDateTime,
    ) -> GrantResult<TokenSet> {
        let param = |name: &str| params.get(name).map(String::as_str);
        let grant = param("grant_type").unwrap_or_default();
        let grant_type = match GrantType::parse(grant) {
            Some(g) => g,
            None if grant.is_empty() => return Err(Refusal::new("invalid_request", "grant_type is required.").into()),
            None => {
                return Err(
                    Refusal::new("unsupported_grant_type", format!("grant_type {grant} is not supported.")).into()
                );
            }
        };
        if !client.allows_grant(grant_type) {
            return Err(Refusal::new("unauthorized_client", format!("This client may not use {grant}.")).into());
        }
        match grant_type {
            GrantType::ClientCredentials => self.client_credentials(client, param("scope"), now),
            GrantType::AuthorizationCode => {
                let (Some(code), Some(redirect_uri), Some(verifier)) =
                    (param("code"), param("redirect_uri"), param("code_verifier"))
                else {
                    return Err(
                        Refusal::new("invalid_request", "code, redirect_uri and code_verifier are required.").into()
                    );
                };
                // Boxed, as is the refresh below: their state is kilobytes, and inline it
                // would make every token request's future that large, client_credentials
                // too (a slow allocation per request).
                Box::pin(self.authorization_code(client, code, redirect_uri, verifier, now)).await
            }
            GrantType::RefreshToken => {
                let Some(presented) = param("refresh_token") else {
                    return Err(Refusal::new("invalid_request", "refresh_token is required.").into());
                };
                Box::pin(self.refresh_token(client, presented, param("scope"), now)).await
            }
        }
    }

    /// The `client_credentials` grant: the client is the subject.
    pub fn client_credentials(
        &self,
        client: &Client,
        scope: Option<&str>,
        now: OffsetDateTime,
    ) -> GrantResult<TokenSet> {
        if !client.is_confidential() {
            return Err(Refusal::new("unauthorized_client", "A public client cannot use client_credentials.").into());
        }
        let scope = granted_scope(&client.scopes, scope)?;
        let ttl = self.settings.access_token_ttl;
        let claims = AccessTokenClaims::for_client(&self.settings.issuer, &client.id, &scope, now, ttl);
        Ok(TokenSet {
            access_token: self.keys.sign_access_token(&claims)?,
            expires_in: ttl.whole_seconds().max(0) as u64,
            scope,
            id_token: None,
            refresh_token: None,
            grant_type: GrantType::ClientCredentials,
        })
    }

    /// The `authorization_code` grant. A replayed code revokes what its first redemption
    /// issued.
    pub async fn authorization_code(
        &self,
        client: &Client,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
        now: OffsetDateTime,
    ) -> GrantResult<TokenSet> {
        let Some(grant) = codes::take(self.store, code).await? else {
            if let Some(redeemed) = codes::take_redemption(self.store, code).await? {
                if let Some(family) = &redeemed.family_id {
                    self.refresh.revoke(family, now).await?;
                }
                denylist::deny(self.store, &redeemed.access_jti, redeemed.access_exp, now).await?;
                tracing::warn!(client_id = %client.id, "authorization code replayed; its tokens were revoked");
            }
            return Err(Refusal::invalid_grant("The code is invalid, expired or already used.").into());
        };
        let subject = self.check_code(client, &grant, redirect_uri, verifier).await?;
        let scope = grant.scope.join(" ");
        let starts_family =
            client.allows_grant(GrantType::RefreshToken) && grant.scope.iter().any(|s| s == "offline_access");
        let (family_id, refresh_token) = if starts_family {
            let new = NewFamily {
                client_id: client.id.clone(),
                user_id: grant.user_id,
                account_id: grant.account_id,
                scope: scope.clone(),
                sid: Some(grant.sid.clone()),
                auth_time: grant.auth_time,
                amr: grant.amr.join(" "),
            };
            let (family, token) = self.refresh.start(new, self.settings.refresh_token_ttl, now).await?;
            (Some(family.id), Some(token))
        } else {
            (None, None)
        };
        let minted = UserGrant {
            subject: &subject,
            client_id: &client.id,
            scope: &scope,
            nonce: grant.nonce.as_deref(),
            auth_time: grant.auth_time,
            amr: grant.amr.clone(),
            sid: Some(&grant.sid),
        };
        let (tokens, access) = self.mint(&minted, refresh_token, GrantType::AuthorizationCode, now)?;
        let redeemed = RedeemedCode { family_id, access_jti: access.jti, access_exp: access.exp };
        codes::remember_redemption(self.store, code, &redeemed).await?;
        Ok(tokens)
    }

    /// Everything a code must satisfy before it buys tokens; the user it stands for.
    async fn check_code(
        &self,
        client: &Client,
        grant: &CodeGrant,
        redirect_uri: &str,
        verifier: &str,
    ) -> GrantResult<Subject> {
        if grant.client_id != client.id || grant.redirect_uri != redirect_uri {
            return Err(Refusal::invalid_grant("The code was issued to another client or redirect_uri.").into());
        }
        if !pkce_matches(verifier, &grant.code_challenge) {
            return Err(Refusal::invalid_grant("code_verifier does not match the code_challenge.").into());
        }
        // Logout between the code and its redemption: the session's tokens were revoked,
        // so the code must not start new ones.
        if self.store.get(&grant.sid).await?.is_none() {
            return Err(Refusal::invalid_grant("The session this code came from has ended.").into());
        }
        match self.subjects.active_subject(grant.account_id, grant.user_id).await? {
            Some(subject) => Ok(subject),
            None => Err(Refusal::invalid_grant("The user can no longer sign in.").into()),
        }
    }

    /// The `refresh_token` grant: the family moves on only once the request is known to
    /// succeed (client, scope, user), so a refused request leaves the token in use.
    pub async fn refresh_token(
        &self,
        client: &Client,
        presented: &str,
        scope: Option<&str>,
        now: OffsetDateTime,
    ) -> GrantResult<TokenSet> {
        let invalid = || Refusal::invalid_grant("The refresh token is invalid, expired or revoked.");
        let Some(id) = family_of(presented) else { return Err(invalid().into()) };
        let mut family = match self.refresh.find(id).await? {
            Some(f) if f.client_id == client.id => f,
            _ => return Err(invalid().into()),
        };
        let mut checked: Option<(String, Subject)> = None;
        // Two tries: a concurrent refresh of the same family may change it under us.
        for _ in 0..2 {
            match judge(&family, presented, now) {
                verdict @ (Verdict::Rotate | Verdict::RetryWithinGrace) => {
                    let (scope, subject) = match checked.take() {
                        Some(done) => done,
                        None => self.check_refresh(&family, scope, now).await?,
                    };
                    if let Some(token) = self.refresh.advance(&family, verdict, now).await? {
                        return self.mint_from_family(client, &family, &scope, &subject, token, now);
                    }
                    checked = Some((scope, subject));
                    family = self.refresh.find(id).await?.ok_or_else(invalid)?;
                }
                Verdict::Reuse => {
                    self.refresh.revoke(&family.id, now).await?;
                    tracing::warn!(client_id = %client.id, family = %family.id, "refresh token reused; family revoked");
                    return Err(Refusal { reuse_detected: true, ..invalid() }.into());
                }
                Verdict::Dead => return Err(invalid().into()),
            }
        }
        Err(invalid().into())
    }

    /// The scope to grant from `family` and the user it stands for; refuses without
    /// touching the family, except that a user who may no longer sign in ends it.
    async fn check_refresh(
        &self,
        family: &Family,
        requested: Option<&str>,
        now: OffsetDateTime,
    ) -> GrantResult<(String, Subject)> {
        let allowed: Vec<String> = family.scope.split(' ').map(str::to_owned).collect();
        let scope = granted_scope(&allowed, requested)?;
        let Some(subject) = self.subjects.active_subject(family.account_id, family.user_id).await? else {
            self.refresh.revoke(&family.id, now).await?;
            return Err(Refusal::invalid_grant("The user can no longer sign in.").into());
        };
        Ok((scope, subject))
    }

    fn mint_from_family(
        &self,
        client: &Client,
        family: &Family,
        scope: &str,
        subject: &Subject,
        token: String,
        now: OffsetDateTime,
    ) -> GrantResult<TokenSet> {
        let minted = UserGrant {
            subject,
            client_id: &client.id,
            scope,
            nonce: None,
            auth_time: family.auth_time,
            amr: family.amr.split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect(),
            sid: family.sid.as_deref(),
        };
        Ok(self.mint(&minted, Some(token), GrantType::RefreshToken, now)?.0)
    }

    fn mint(
        &self,
        grant: &UserGrant<'_>,
        refresh_token: Option<String>,
        grant_type: GrantType,
        now: OffsetDateTime,
    ) -> crate::Result<(TokenSet, AccessTokenClaims)> {
        let (access, id) = self.user_claims(grant, now);
        let tokens = TokenSet {
            access_token: self.keys.sign_access_token(&access)?,
            expires_in: self.settings.access_token_ttl.whole_seconds().max(0) as u64,
            scope: grant.scope.to_owned(),
            id_token: id.map(|id| self.keys.sign_id_token(&id)).transpose()?,
            refresh_token,
            grant_type,
        };
        Ok((tokens, access))
    }
}

#[cfg(test)]
mod tests {
    use time::Duration;

    use super::*;
    use crate::op::authorize::{AuthorizeDecision, Browser};
    use crate::op::fakes::{REDIRECT, T0, VERIFIER, World, authorize_params, shop};
    use crate::refresh::RefreshRepo;
    use crate::session::Session;

    fn form(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    async fn code_for(world: &World, scope: &str) -> (String, Session) {
        let session = world.sign_in(T0).await;
        let browser = Browser { session: Some(&session), ip: "192.0.2.1" };
        match world.provider().authorize(&authorize_params(scope, &[]), browser, T0).await.unwrap() {
            AuthorizeDecision::RedirectWithCode { code, .. } => (code, session),
            other => panic!("{other:?}"),
        }
    }

    async fn redeem(world: &World, code: &str, at: OffsetDateTime) -> GrantResult<TokenSet> {
        let params = form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ]);
        world.provider().token(&shop(true), &params, at).await
    }

    async fn refresh(world: &World, token: &str, scope: Option<&str>, at: OffsetDateTime) -> GrantResult<TokenSet> {
        let mut params = form(&[("grant_type", "refresh_token"), ("refresh_token", token)]);
        params.extend(scope.map(|s| ("scope".to_owned(), s.to_owned())));
        world.provider().token(&shop(true), &params, at).await
    }

    fn refusal<T: std::fmt::Debug>(result: GrantResult<T>) -> Refusal {
        match result {
            Err(GrantFailure::Refused(r)) => r,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_code_buys_tokens_once_and_a_replay_revokes_them() {
        let world = World::new(shop(true));
        let (code, session) = code_for(&world, "openid email offline_access").await;
        let tokens = redeem(&world, &code, T0).await.unwrap();
        let op = world.provider();
        let access = op.verify_access(&tokens.access_token, T0).await.unwrap().expect("a live access token");
        assert_eq!((access.sub, access.role.as_deref()), (world.user.id.to_string(), Some("owner")));
        let id = op.keys.verify_id_token_hint(tokens.id_token.as_deref().unwrap(), "https://ponte.example").unwrap();
        assert_eq!((id.nonce.as_deref(), id.sid.as_deref()), (Some("no"), Some(session.id.as_str())));
        assert_eq!((id.email.as_deref(), id.name), (Some("mario@esempio.it"), None), "claims follow the scopes");
        let family = tokens.refresh_token.clone().expect("offline_access starts a family");

        let replay = refusal(redeem(&world, &code, T0).await);
        assert_eq!(replay.error, "invalid_grant");
        assert_eq!(op.verify_access(&tokens.access_token, T0).await.unwrap(), None, "its access token is denied");
        assert_eq!(refusal(refresh(&world, &family, None, T0).await).error, "invalid_grant", "its family is gone");
    }

    #[tokio::test]
    async fn a_code_needs_its_verifier_its_session_and_an_active_user() {
        let world = World::new(shop(true));
        let (code, _) = code_for(&world, "openid").await;
        let params = form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &format!("{VERIFIER}x")),
        ]);
        assert_eq!(refusal(world.provider().token(&shop(true), &params, T0).await).error, "invalid_grant");

        let (code, session) = code_for(&world, "openid").await;
        world.sessions.revoke(session.user_id, &session.id).await.unwrap();
        let ended = refusal(redeem(&world, &code, T0).await);
        assert_eq!(ended.description, "The session this code came from has ended.");

        let (code, _) = code_for(&world, "openid").await;
        world.disable_user();
        assert_eq!(refusal(redeem(&world, &code, T0).await).description, "The user can no longer sign in.");
    }

    #[tokio::test]
    async fn a_refresh_refused_for_its_scope_leaves_the_family_as_it_was() {
        let world = World::new(shop(true));
        let (code, _) = code_for(&world, "openid offline_access").await;
        let first = redeem(&world, &code, T0).await.unwrap().refresh_token.unwrap();
        let id = family_of(&first).unwrap().to_owned();
        let before = world.refresh.find(&id).await.unwrap();

        let later = T0 + Duration::minutes(5);
        assert_eq!(refusal(refresh(&world, &first, Some("openid email"), later).await).error, "invalid_scope");
        assert_eq!(world.refresh.find(&id).await.unwrap(), before, "nothing moved");

        let narrowed = refresh(&world, &first, Some("openid"), later).await.unwrap();
        assert_eq!((narrowed.scope.as_str(), narrowed.grant_type), ("openid", GrantType::RefreshToken));
        let next = narrowed.refresh_token.unwrap();
        assert_eq!(
            refresh(&world, &next, None, later + Duration::minutes(5)).await.unwrap().scope,
            "openid offline_access"
        );
    }

    #[tokio::test]
    async fn an_old_refresh_token_revokes_its_family() {
        let world = World::new(shop(true));
        let (code, _) = code_for(&world, "openid offline_access").await;
        let first = redeem(&world, &code, T0).await.unwrap().refresh_token.unwrap();
        let second = refresh(&world, &first, None, T0).await.unwrap().refresh_token.unwrap();
        let reuse = refusal(refresh(&world, &first, None, T0 + Duration::minutes(1)).await);
        assert!(reuse.reuse_detected && reuse.error == "invalid_grant");
        assert!(!refusal(refresh(&world, &second, None, T0 + Duration::minutes(1)).await).reuse_detected);
    }

    #[tokio::test]
    async fn a_refresh_for_a_disabled_user_ends_the_family() {
        let world = World::new(shop(true));
        let (code, _) = code_for(&world, "openid offline_access").await;
        let first = redeem(&world, &code, T0).await.unwrap().refresh_token.unwrap();
        world.disable_user();
        assert_eq!(refusal(refresh(&world, &first, None, T0).await).error, "invalid_grant");
        let family = world.refresh.find(family_of(&first).unwrap()).await.unwrap().unwrap();
        assert_eq!(family.revoked_at, Some(T0));
    }

    #[tokio::test]
    async fn grant_types_are_checked_before_anything_else() {
        let world = World::new(shop(true));
        let op = world.provider();
        let mut browser_only = shop(true);
        browser_only.grants = vec![GrantType::AuthorizationCode];
        let cc = form(&[("grant_type", "client_credentials")]);
        assert_eq!(refusal(op.token(&browser_only, &cc, T0).await).error, "unauthorized_client");
        assert_eq!(
            refusal(op.token(&shop(true), &form(&[("grant_type", "password")]), T0).await).error,
            "unsupported_grant_type"
        );
        assert_eq!(refusal(op.token(&shop(true), &form(&[]), T0).await).error, "invalid_request");
        let cc = form(&[("grant_type", "client_credentials"), ("scope", "ponte.api")]);
        let issued = op.token(&shop(true), &cc, T0).await.unwrap();
        assert_eq!((issued.scope.as_str(), issued.id_token, issued.expires_in), ("ponte.api", None, 600));
    }

    #[test]
    fn scopes_are_a_subset_of_what_is_allowed() {
        let allowed = vec!["openid".to_owned(), "email".to_owned()];
        assert_eq!(granted_scope(&allowed, None).unwrap(), "openid email");
        assert_eq!(granted_scope(&allowed, Some("email email")).unwrap(), "email");
        assert_eq!(granted_scope(&allowed, Some("openid admin")).unwrap_err().error, "invalid_scope");
    }

    #[test]
    fn id_token_claims_follow_the_scopes() {
        let world = World::new(shop(true));
        let op = world.provider();
        let grant = |scope| UserGrant {
            subject: &world.user,
            client_id: "shop",
            scope,
            nonce: None,
            auth_time: 7,
            amr: vec!["pwd".into()],
            sid: Some("sid"),
        };
        let (access, id) = op.user_claims(&grant("ponte.api"), T0);
        assert!(id.is_none(), "no openid, no ID token");
        assert_eq!((access.account_id, access.exp - access.iat), (Some(world.user.account_id.to_string()), 600));
        let id = op.user_claims(&grant("openid profile email"), T0).1.unwrap();
        assert_eq!((id.name.as_deref(), id.email_verified, id.auth_time), (Some("Mario Rossi"), Some(true), 7));
        assert_eq!((id.aud.as_str(), id.azp.as_str(), id.exp - id.iat), ("shop", "shop", 600));
    }
}

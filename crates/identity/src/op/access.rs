//! What a presented token is worth: verification of our access tokens, introspection
//! (RFC 7662), revocation (RFC 7009) and userinfo (OpenID Connect Core §5.3).
//!
//! A user's token is only as good as the user: once the user or the account may no
//! longer sign in, introspection, userinfo and the REST API all refuse it alike.

use time::OffsetDateTime;

use super::{Provider, Subject, denylist};
use crate::Result;
use crate::client::Client;
use crate::refresh::{Family, Verdict, family_of, judge};
use crate::token::{API_AUDIENCE, AccessTokenClaims};

/// What introspection says about a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Introspection {
    /// A live access token of ours.
    Access(AccessTokenClaims),
    /// A live refresh token issued to the asking client.
    Refresh(Family),
    /// Anything else: `{"active": false}` and nothing more.
    Inactive,
}

/// Claims about the user an access token stands for, by the scopes it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserClaims {
    /// The user.
    pub sub: String,
    /// With scope `email`.
    pub email: Option<String>,
    /// With scope `email`.
    pub email_verified: Option<bool>,
    /// With scope `profile`.
    pub name: Option<String>,
    /// The user's account.
    pub account_id: String,
    /// The user's role now.
    pub role: String,
    /// With scope `profile`: the role and the permissions per company now.
    pub access: Option<serde_json::Value>,
}

/// What userinfo answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserInfoOutcome {
    /// The claims.
    Claims(UserClaims),
    /// Not a live token of ours, or its user may no longer sign in (`invalid_token`).
    InvalidToken(&'static str),
    /// A client's own token, or one without `openid` (`insufficient_scope`).
    InsufficientScope,
}

impl Provider<'_> {
    /// Verifies one of our access tokens (signature, issuer, audience, expiry) and checks
    /// the deny-list. Says nothing about whether its user is still active: see
    /// [`Provider::token_subject`].
    pub async fn verify_access(&self, token: &str, now: OffsetDateTime) -> Result<Option<AccessTokenClaims>> {
        let Ok(claims) = self.keys.verify_access_token(token, &self.settings.issuer, API_AUDIENCE, now) else {
            return Ok(None);
        };
        if denylist::is_denied(self.store, &claims.jti).await? {
            return Ok(None);
        }
        Ok(Some(claims))
    }

    /// The user a user's token stands for, if they may still sign in; `None` for ids
    /// that are not ours or a user who was disabled or deleted.
    pub async fn token_subject(&self, claims: &AccessTokenClaims) -> Result<Option<Subject>> {
        let Some((account, user)) = claims.user_ids() else { return Ok(None) };
        self.subjects.active_subject(account, user).await
    }

    /// Introspection for an authenticated confidential `client`. A user's token is
    /// described with the user's role and permissions as they are now, not as issued: a
    /// resource server that introspects always enforces the current ones.
    pub async fn introspect(&self, client: &Client, token: &str, now: OffsetDateTime) -> Result<Introspection> {
        if let Some(mut claims) = self.verify_access(token, now).await? {
            if claims.is_user_token() {
                let Some(subject) = self.token_subject(&claims).await? else {
                    return Ok(Introspection::Inactive);
                };
                claims.role = Some(subject.role);
                claims.access = Some(subject.access);
            }
            return Ok(Introspection::Access(claims));
        }
        // Refresh tokens are only described to the client they were issued to.
        if let Some(id) = family_of(token)
            && let Some(family) = self.refresh.find(id).await?
            && family.client_id == client.id
            && judge(&family, token, now) == Verdict::Rotate
            && self.subjects.is_active(family.account_id, family.user_id).await?
        {
            return Ok(Introspection::Refresh(family));
        }
        Ok(Introspection::Inactive)
    }

    /// Revocation by `client`: a refresh token ends its family, an access token goes on
    /// the deny-list; tokens of other clients, or none of ours, are left alone.
    pub async fn revoke(&self, client: &Client, token: &str, now: OffsetDateTime) -> Result<()> {
        if let Some(id) = family_of(token) {
            if let Some(family) = self.refresh.find(id).await?
                && family.client_id == client.id
                && judge(&family, token, now) != Verdict::Dead
            {
                self.refresh.revoke(&family.id, now).await?;
            }
        } else if let Some(claims) = self.verify_access(token, now).await?
            && claims.client_id == client.id
        {
            denylist::deny(self.store, &claims.jti, claims.exp, now).await?;
        }
        Ok(())
    }

    /// Userinfo for a bearer `token`.
    pub async fn userinfo(&self, token: &str, now: OffsetDateTime) -> Result<UserInfoOutcome> {
        let Some(claims) = self.verify_access(token, now).await? else {
            return Ok(UserInfoOutcome::InvalidToken("The access token is invalid or expired."));
        };
        if !claims.has_scope("openid") || !claims.is_user_token() {
            return Ok(UserInfoOutcome::InsufficientScope);
        }
        if claims.user_ids().is_none() {
            return Ok(UserInfoOutcome::InvalidToken("The access token is invalid or expired."));
        }
        let Some(subject) = self.token_subject(&claims).await? else {
            return Ok(UserInfoOutcome::InvalidToken("The user can no longer sign in."));
        };
        let email = claims.has_scope("email");
        let profile = claims.has_scope("profile");
        Ok(UserInfoOutcome::Claims(UserClaims {
            sub: subject.id.to_string(),
            email: email.then(|| subject.email.clone()),
            email_verified: email.then_some(self.settings.assert_email_verified),
            name: profile.then(|| subject.name.clone()),
            account_id: subject.account_id.to_string(),
            role: subject.role,
            access: profile.then_some(subject.access),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::GrantType;
    use crate::op::fakes::{T0, World, shop};
    use crate::op::grants::UserGrant;

    fn user_token(world: &World, scope: &str) -> String {
        let op = world.provider();
        let grant = UserGrant {
            subject: &world.user,
            client_id: "shop",
            scope,
            nonce: None,
            auth_time: 0,
            amr: vec![],
            sid: None,
        };
        op.keys.sign_access_token(&op.user_claims(&grant, T0).0).unwrap()
    }

    #[tokio::test]
    async fn a_disabled_user_s_token_is_inactive_everywhere() {
        let world = World::new(shop(true));
        let op = world.provider();
        let token = user_token(&world, "openid email");
        assert!(matches!(op.introspect(&shop(true), &token, T0).await.unwrap(), Introspection::Access(_)));
        let UserInfoOutcome::Claims(claims) = op.userinfo(&token, T0).await.unwrap() else { panic!("claims") };
        assert_eq!(
            (claims.email.as_deref(), claims.name, claims.role.as_str()),
            (Some("mario@esempio.it"), None, "owner")
        );

        world.disable_user();
        assert_eq!(op.introspect(&shop(true), &token, T0).await.unwrap(), Introspection::Inactive);
        assert_eq!(
            op.userinfo(&token, T0).await.unwrap(),
            UserInfoOutcome::InvalidToken("The user can no longer sign in.")
        );
    }

    #[tokio::test]
    async fn the_token_carries_the_permissions_of_its_issue_and_introspection_those_of_now() {
        let world = World::new(shop(true));
        let op = world.provider();
        let token = user_token(&world, "openid profile");
        let issued = op.verify_access(&token, T0).await.unwrap().unwrap();
        assert_eq!(issued.access, Some(world.user.access.clone()));
        let UserInfoOutcome::Claims(info) = op.userinfo(&token, T0).await.unwrap() else { panic!("claims") };
        assert_eq!(info.access, Some(world.user.access.clone()), "userinfo shows them with scope profile");

        let narrowed = serde_json::json!({"role": "member", "permissions": {}});
        world.set_access(narrowed.clone());
        let Introspection::Access(now) = op.introspect(&shop(true), &token, T0).await.unwrap() else {
            panic!("active")
        };
        assert_eq!((now.access, now.role.as_deref()), (Some(narrowed.clone()), Some("owner")));
        let UserInfoOutcome::Claims(info) = op.userinfo(&token, T0).await.unwrap() else { panic!("claims") };
        assert_eq!(info.access, Some(narrowed));
        let plain = user_token(&world, "openid");
        let UserInfoOutcome::Claims(info) = op.userinfo(&plain, T0).await.unwrap() else { panic!("claims") };
        assert_eq!(info.access, None, "without profile, userinfo leaves them out");
    }

    #[tokio::test]
    async fn a_client_s_own_token_has_no_user_to_describe() {
        let world = World::new(shop(true));
        let op = world.provider();
        let token = op.client_credentials(&shop(true), Some("openid"), T0).unwrap().access_token;
        assert!(matches!(op.introspect(&shop(true), &token, T0).await.unwrap(), Introspection::Access(_)));
        assert_eq!(op.userinfo(&token, T0).await.unwrap(), UserInfoOutcome::InsufficientScope);
        assert_eq!(
            op.userinfo("garbage", T0).await.unwrap(),
            UserInfoOutcome::InvalidToken("The access token is invalid or expired.")
        );
    }

    #[tokio::test]
    async fn revoked_access_tokens_stop_verifying_but_only_their_client_may_revoke_them() {
        let world = World::new(shop(true));
        let op = world.provider();
        let token = user_token(&world, "openid");
        let mut other = shop(true);
        other.id = "other".into();
        other.grants = vec![GrantType::ClientCredentials];
        op.revoke(&other, &token, T0).await.unwrap();
        assert!(op.verify_access(&token, T0).await.unwrap().is_some(), "another client's revocation is ignored");
        op.revoke(&shop(true), &token, T0).await.unwrap();
        assert_eq!(op.verify_access(&token, T0).await.unwrap(), None);
        assert_eq!(op.introspect(&shop(true), &token, T0).await.unwrap(), Introspection::Inactive);
    }
}

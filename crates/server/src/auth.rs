//! Who is calling the REST API, and what they may do.
//!
//! Two kinds of bearer token are accepted: a client's own token with scope `ponte.admin`
//! (the POS backend: every account), and a user's token for audience `ponte-api` (that
//! user's account only, by role: owners and admins manage it, a member reads itself).

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use ponte_linking::account::Role;
use ponte_linking::audit::Actor;
use ponte_linking::ids::{AccountId, UserId};

use crate::extract::client_ip;
use crate::op::provider;
use crate::problem::Problem;
use crate::state::AppState;

/// The scope that lets a client administer every account (the POS backend).
pub const ADMIN_SCOPE: &str = "ponte.admin";

/// The scope a user's token needs to act on the REST API (within the user's account).
pub const API_SCOPE: &str = "ponte.api";

/// An authenticated REST caller.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A client with `ponte.admin`: may act on every account.
    Backend {
        /// The client.
        client_id: String,
    },
    /// A signed-in user, through a client.
    User {
        /// The client that obtained the token.
        client_id: String,
        /// The user's account.
        account: AccountId,
        /// The user.
        user: UserId,
        /// The user's role when the token was issued.
        role: Role,
    },
}

/// What an operation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Only the POS backend (e.g. creating accounts).
    Backend,
    /// Anyone in the account (reading the account itself).
    Member,
    /// An owner or admin of the account.
    Manage,
    /// An owner or admin, or the user `target` itself.
    ManageOrSelf(UserId),
}

impl Caller {
    /// Checks the caller may do what `need` says to `account`. Users of other accounts get
    /// the same 404 as a missing account, so ids cannot be probed.
    pub fn check(&self, account: Option<AccountId>, need: Need) -> Result<(), Problem> {
        let forbidden =
            || Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden").detail("Your role does not allow this.");
        match self {
            Caller::Backend { .. } => Ok(()),
            Caller::User { account: own, user, role, .. } => {
                if need == Need::Backend {
                    return Err(forbidden());
                }
                if account.is_some_and(|a| a != *own) {
                    return Err(Problem::not_found("account_not_found", "No such account."));
                }
                match need {
                    Need::Backend => Err(forbidden()),
                    Need::Member => Ok(()),
                    Need::Manage if role.is_admin() => Ok(()),
                    Need::ManageOrSelf(target) if role.is_admin() || target == *user => Ok(()),
                    _ => Err(forbidden()),
                }
            }
        }
    }

    /// The audit actor for this caller.
    pub fn actor(&self, req: &HttpRequest) -> Actor {
        match self {
            Caller::Backend { client_id } => Actor::client(client_id, client_ip(req)),
            Caller::User { user, .. } => Actor::user(user, client_ip(req)),
        }
    }
}

fn unauthorized(error: Option<&str>, detail: &str) -> Problem {
    let challenge = match error {
        Some(e) => format!("Bearer realm=\"ponte\", error=\"{e}\""),
        None => "Bearer realm=\"ponte\"".to_owned(),
    };
    Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized").detail(detail).www_authenticate(challenge)
}

/// The token of an `Authorization: Bearer <token>` header value, if it is one.
pub fn bearer_token(value: &str) -> Option<&str> {
    value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|t| !t.is_empty())
}

async fn authenticate(state: web::Data<AppState>, authorization: Option<String>) -> Result<Caller, Problem> {
    let Some(value) = authorization else {
        return Err(unauthorized(None, "Send an access token as 'Authorization: Bearer <token>'."));
    };
    let token = bearer_token(&value)
        .ok_or_else(|| unauthorized(Some("invalid_request"), "The Authorization header must use the Bearer scheme."))?;
    let claims = provider(&state)
        .verify_access(token, state.now())
        .await?
        .ok_or_else(|| unauthorized(Some("invalid_token"), "The access token is invalid or expired."))?;
    if claims.is_user_token() {
        // A user's token reaches the REST API only if the user consented to the API
        // scope for that client: a third-party app signed in with "openid email" must not
        // act as the user here.
        if !claims.has_scope(API_SCOPE) {
            return Err(Problem::new(StatusCode::FORBIDDEN, "insufficient_scope", "Forbidden")
                .detail(format!("A user's token needs the {API_SCOPE} scope here."))
                .www_authenticate(format!(
                    "Bearer realm=\"ponte\", error=\"insufficient_scope\", scope=\"{API_SCOPE}\""
                )));
        }
        // The role comes from the user store now, not from the token: a demoted, disabled
        // or deleted user loses the API at once.
        let Some((account, user)) = claims.user_ids() else {
            return Err(unauthorized(Some("invalid_token"), "The access token is invalid or expired."));
        };
        let Some(user) = state.active_user(account, user).await? else {
            return Err(unauthorized(Some("invalid_token"), "The access token is invalid or expired."));
        };
        return Ok(Caller::User {
            client_id: claims.client_id,
            account: user.account_id,
            user: user.id,
            role: user.role,
        });
    }
    if !claims.has_scope(ADMIN_SCOPE) {
        return Err(Problem::new(StatusCode::FORBIDDEN, "insufficient_scope", "Forbidden")
            .detail(format!("This operation needs the {ADMIN_SCOPE} scope."))
            .www_authenticate(format!(
                "Bearer realm=\"ponte\", error=\"insufficient_scope\", scope=\"{ADMIN_SCOPE}\""
            )));
    }
    Ok(Caller::Backend { client_id: claims.client_id })
}

impl FromRequest for Caller {
    type Error = Problem;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self, Problem>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let authorization = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
        Box::pin(async move {
            let state = state.ok_or_else(|| Problem::internal(&std::io::Error::other("application state missing")))?;
            authenticate(state, authorization).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(role: Role) -> (Caller, AccountId, UserId) {
        let (account, user) = (AccountId::new(), UserId::new());
        (Caller::User { client_id: "c".into(), account, user, role }, account, user)
    }

    #[test]
    fn users_act_in_their_own_account_by_role() {
        let (admin, account, _) = user(Role::Admin);
        assert!(admin.check(Some(account), Need::Manage).is_ok());
        assert!(admin.check(Some(account), Need::Backend).is_err());
        let (member, account, me) = user(Role::Member);
        assert!(member.check(Some(account), Need::Member).is_ok());
        assert!(member.check(Some(account), Need::ManageOrSelf(me)).is_ok());
        assert_eq!(member.check(Some(account), Need::ManageOrSelf(UserId::new())).unwrap_err().code(), "forbidden");
        assert_eq!(member.check(Some(account), Need::Manage).unwrap_err().code(), "forbidden");
        assert_eq!(admin.check(Some(AccountId::new()), Need::Member).unwrap_err().code(), "account_not_found");
        let backend = Caller::Backend { client_id: "pos".into() };
        assert!(backend.check(Some(account), Need::Manage).is_ok() && backend.check(None, Need::Backend).is_ok());
    }
}

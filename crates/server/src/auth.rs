//! Who is calling the REST API, and what they may do.
//!
//! Two kinds of bearer token are accepted: a client's own token with scope `ponte.admin`
//! (the POS backend: every account), and a user's token for audience `ponte-api` (that
//! user's account only: owners and admins manage it, a member does what their grants
//! allow, as [`ponte_linking::access::allows`] decides with the grants read now, not the
//! ones the token was issued with).

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use ponte_linking::access::{Grant, Permission, Principal, Target, allows, may_see};
use ponte_linking::account::Role;
use ponte_linking::audit::Actor;
use ponte_linking::ids::{AccountId, CompanyId, UserId};

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
        /// The user's role now.
        role: Role,
        /// The user's grants now (a member's; empty for owners and admins).
        grants: Vec<Grant>,
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
    /// The user `target` itself, or whoever may manage users (`users:manage`).
    ManageOrSelf(UserId),
    /// A permission on a target: owners and admins always, members by their grants.
    Permission(Permission, Target),
    /// Any permission at all on the company (to see it).
    AnyOn(CompanyId),
}

impl Caller {
    /// Checks the caller may do what `need` says to `account`. Users of other accounts get
    /// the same 404 as a missing account, so ids cannot be probed.
    pub fn check(&self, account: Option<AccountId>, need: Need) -> Result<(), Problem> {
        let forbidden =
            || Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden").detail("Your role does not allow this.");
        match self {
            Caller::Backend { .. } => Ok(()),
            Caller::User { account: own, user, role, grants, .. } => {
                if need == Need::Backend {
                    return Err(forbidden());
                }
                if account.is_some_and(|a| a != *own) {
                    return Err(Problem::not_found("account_not_found", "No such account."));
                }
                let who = Principal { role: *role, grants };
                let allowed = match need {
                    Need::Backend => false,
                    Need::Member => true,
                    Need::Manage => who.role.is_admin(),
                    Need::ManageOrSelf(target) => {
                        target == *user || allows(who, Permission::UsersManage, Target::Account)
                    }
                    Need::Permission(permission, target) => allows(who, permission, target),
                    Need::AnyOn(company) => may_see(who, company),
                };
                if allowed { Ok(()) } else { Err(forbidden()) }
            }
        }
    }

    /// A user caller as the access rule sees them; `None` for the POS backend, which may
    /// do everything.
    pub fn principal(&self) -> Option<Principal<'_>> {
        match self {
            Caller::Backend { .. } => None,
            Caller::User { role, grants, .. } => Some(Principal { role: *role, grants }),
        }
    }

    /// The user behind a user's token; `None` for the POS backend.
    pub fn user_id(&self) -> Option<UserId> {
        match self {
            Caller::Backend { .. } => None,
            Caller::User { user, .. } => Some(*user),
        }
    }

    /// Whether the caller may see `company` at all (lists are filtered by it).
    pub fn sees(&self, company: CompanyId) -> bool {
        self.principal().is_none_or(|who| may_see(who, company))
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
            grants: user.grants,
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
        with_grants(role, Vec::new())
    }

    fn with_grants(role: Role, grants: Vec<Grant>) -> (Caller, AccountId, UserId) {
        let (account, user) = (AccountId::new(), UserId::new());
        (Caller::User { client_id: "c".into(), account, user, role, grants }, account, user)
    }

    #[test]
    fn members_act_by_their_grants_and_see_only_the_companies_they_are_granted() {
        use ponte_linking::access::Companies;
        let (bar, pizzeria) = (CompanyId::new(), CompanyId::new());
        let grants = vec![Grant { permission: Permission::InvoicesSend, companies: Companies::Only([bar].into()) }];
        let (member, account, _) = with_grants(Role::Member, grants);
        let on = |p, c| Need::Permission(p, Target::Company(c));
        assert!(member.check(Some(account), on(Permission::InvoicesSend, bar)).is_ok());
        assert_eq!(
            member.check(Some(account), on(Permission::InvoicesSend, pizzeria)).unwrap_err().code(),
            "forbidden"
        );
        assert!(member.check(Some(account), on(Permission::IntegrationsManage, bar)).is_err());
        assert!(
            member.check(Some(account), Need::AnyOn(bar)).is_ok()
                && member.check(Some(account), Need::AnyOn(pizzeria)).is_err()
        );
        assert!(member.sees(bar) && !member.sees(pizzeria));
        assert_eq!(
            member.check(Some(AccountId::new()), on(Permission::InvoicesSend, bar)).unwrap_err().code(),
            "account_not_found",
            "another tenant is not found, whatever the grants"
        );
        let backend = Caller::Backend { client_id: "pos".into() };
        assert!(backend.sees(pizzeria) && backend.check(Some(account), on(Permission::UsersManage, bar)).is_ok());
        let manager = vec![Grant { permission: Permission::UsersManage, companies: Companies::All }];
        let (manager, account, _) = with_grants(Role::Member, manager);
        assert!(manager.check(Some(account), Need::ManageOrSelf(UserId::new())).is_ok());
        assert!(manager.check(Some(account), Need::Manage).is_err(), "users:manage is not owner or admin");
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

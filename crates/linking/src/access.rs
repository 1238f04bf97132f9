//! Who may do what: the permission catalogue, grants on companies, and the one pure rule
//! ([`allows`]) that REST, pages and token claims decide every access by.
//!
//! Owners and admins may do everything in their account. A member (an additional user)
//! may do only what a grant gives them: each grant names one permission and either every
//! company of the account or a list of them. Account-wide actions (managing users or
//! settings) need the grant on every company.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::ids::CompanyId;

/// What a user may do in their account: the role is the first half of every access
/// decision (the grants are the second), so it is defined here, beside [`allows`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Created with the account; cannot be removed or demoted.
    Owner,
    /// Manages users, links, seats and integrations.
    Admin,
    /// An additional user; needs a seat.
    Member,
}

impl Role {
    /// The stored and wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Admin => "admin",
            Self::Member => "member",
        }
    }

    /// Parses the stored and wire spelling.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Owner, Self::Admin, Self::Member].into_iter().find(|r| r.as_str() == s)
    }

    /// Owners and admins manage the account.
    pub fn is_admin(self) -> bool {
        matches!(self, Self::Owner | Self::Admin)
    }
}

/// One thing a member may be allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Permission {
    /// See the company's invoices.
    #[serde(rename = "invoices:read")]
    InvoicesRead,
    /// Send invoices for the company.
    #[serde(rename = "invoices:send")]
    InvoicesSend,
    /// Download invoices and their files.
    #[serde(rename = "invoices:download")]
    InvoicesDownload,
    /// Manage the company's customers and suppliers.
    #[serde(rename = "contacts:manage")]
    ContactsManage,
    /// Change the company's settings.
    #[serde(rename = "settings:manage")]
    SettingsManage,
    /// Drive the company's e-invoicing integration and its credentials.
    #[serde(rename = "integrations:manage")]
    IntegrationsManage,
    /// Add, change and remove the account's members.
    #[serde(rename = "users:manage")]
    UsersManage,
}

impl Permission {
    /// The whole catalogue, in the documented order.
    pub const ALL: [Permission; 7] = [
        Self::InvoicesRead,
        Self::InvoicesSend,
        Self::InvoicesDownload,
        Self::ContactsManage,
        Self::SettingsManage,
        Self::IntegrationsManage,
        Self::UsersManage,
    ];

    /// The wire spelling, e.g. `invoices:read`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvoicesRead => "invoices:read",
            Self::InvoicesSend => "invoices:send",
            Self::InvoicesDownload => "invoices:download",
            Self::ContactsManage => "contacts:manage",
            Self::SettingsManage => "settings:manage",
            Self::IntegrationsManage => "integrations:manage",
            Self::UsersManage => "users:manage",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// What it allows, in Italian and in English.
    pub fn describe(self) -> (&'static str, &'static str) {
        match self {
            Self::InvoicesRead => ("Vedere le fatture dell'azienda", "See the company's invoices"),
            Self::InvoicesSend => ("Inviare fatture per l'azienda", "Send invoices for the company"),
            Self::InvoicesDownload => ("Scaricare le fatture e i loro file", "Download invoices and their files"),
            Self::ContactsManage => {
                ("Gestire clienti e fornitori dell'azienda", "Manage the company's customers and suppliers")
            }
            Self::SettingsManage => ("Modificare le impostazioni dell'azienda", "Change the company's settings"),
            Self::IntegrationsManage => (
                "Gestire l'integrazione di fatturazione elettronica e le sue credenziali",
                "Drive the e-invoicing integration and its credentials",
            ),
            Self::UsersManage => (
                "Aggiungere, modificare e rimuovere gli utenti aggiuntivi",
                "Add, change and remove the account's members",
            ),
        }
    }

    /// Whether the permission is about the account as a whole rather than one company.
    pub fn is_account_wide(self) -> bool {
        self == Self::UsersManage
    }
}

/// The companies a grant covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Companies {
    /// Every company of the account, present and future.
    All,
    /// Only these.
    Only(BTreeSet<CompanyId>),
}

impl Companies {
    /// Whether `company` is covered.
    pub fn covers(&self, company: CompanyId) -> bool {
        match self {
            Self::All => true,
            Self::Only(list) => list.contains(&company),
        }
    }
}

/// One permission on some companies: `{"permission": "invoices:send", "companies": "all" | [ids]}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// What it allows.
    pub permission: Permission,
    /// Where.
    pub companies: Companies,
}

/// Who asks: their role and, for a member, their grants.
#[derive(Debug, Clone, Copy)]
pub struct Principal<'a> {
    /// The role in the account.
    pub role: Role,
    /// The member's grants (ignored for owners and admins).
    pub grants: &'a [Grant],
}

/// What an action is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The account as a whole (its users, its settings).
    Account,
    /// One company of the account.
    Company(CompanyId),
}

/// Whether `who` may do `action` to `target` (within their own account: tenant checks come
/// before this). Owners and admins may do everything; a member needs a grant of `action`
/// covering the company, or covering every company for an account-wide target.
pub fn allows(who: Principal<'_>, action: Permission, target: Target) -> bool {
    if who.role.is_admin() {
        return true;
    }
    who.grants.iter().filter(|g| g.permission == action).any(|g| match target {
        Target::Account => g.companies == Companies::All,
        Target::Company(company) => g.companies.covers(company),
    })
}

/// Whether `who` may see `company` at all: some permission covers it. Lists (REST and
/// pages) show a member only these companies.
pub fn may_see(who: Principal<'_>, company: CompanyId) -> bool {
    Permission::ALL.into_iter().any(|p| allows(who, p, Target::Company(company)))
}

/// `grants` once `company` is gone: it leaves every list, and a grant whose list empties
/// goes too (it granted nothing else). Grants on `"all"` stay.
pub fn without_company(grants: &[Grant], company: CompanyId) -> Vec<Grant> {
    grants
        .iter()
        .filter_map(|g| match &g.companies {
            Companies::All => Some(g.clone()),
            Companies::Only(ids) => {
                let rest: BTreeSet<CompanyId> = ids.iter().copied().filter(|c| *c != company).collect();
                (!rest.is_empty()).then_some(Grant { permission: g.permission, companies: Companies::Only(rest) })
            }
        })
        .collect()
}

/// Whether `giver` may hand out `grants`: owners and admins anything; a member (with
/// `users:manage`) only what they hold themselves, on the same companies, so a grant can
/// never raise anyone above the one who gave it.
pub fn may_grant(giver: Principal<'_>, grants: &[Grant]) -> bool {
    grants.iter().all(|g| match &g.companies {
        Companies::All => allows(giver, g.permission, Target::Account),
        Companies::Only(ids) => ids.iter().all(|c| allows(giver, g.permission, Target::Company(*c))),
    })
}

/// Whether `giver` may create, change or remove a user with `target` role: owners and
/// admins manage everyone but the owner (whom only the owner changes); a member with
/// `users:manage` manages members only.
pub fn may_manage(giver: Principal<'_>, target: Role) -> bool {
    if giver.role.is_admin() {
        return true;
    }
    target == Role::Member && allows(giver, Permission::UsersManage, Target::Account)
}

/// The one compact claim tokens, userinfo and introspection carry about what the user may
/// do: `{"role": "member", "permissions": {"invoices:read": "all", "invoices:send":
/// ["<company id>", …]}}`. Owners and admins hold every permission on `"all"`; a member's
/// grants of one permission are merged (`"all"` wins over lists). A downstream service
/// enforces it with the same rule as [`allows`]: the permission is listed with `"all"` or
/// with the company's id.
pub fn claim(who: Principal<'_>) -> serde_json::Value {
    let mut permissions = serde_json::Map::new();
    for permission in Permission::ALL {
        let companies = if who.role.is_admin() {
            Some(Companies::All)
        } else {
            who.grants.iter().filter(|g| g.permission == permission).fold(None, |acc, g| {
                Some(match (acc, &g.companies) {
                    (Some(Companies::All), _) | (_, Companies::All) => Companies::All,
                    (Some(Companies::Only(mut ids)), Companies::Only(more)) => {
                        ids.extend(more.iter().copied());
                        Companies::Only(ids)
                    }
                    (None, Companies::Only(ids)) => Companies::Only(ids.clone()),
                })
            })
        };
        if let Some(companies) = companies {
            let value = Grant { permission, companies }.to_json().companies;
            permissions.insert(permission.as_str().to_owned(), value);
        }
    }
    serde_json::json!({"role": who.role.as_str(), "permissions": permissions})
}

/// The wire form of a grant list, as requests and responses carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantJson {
    /// The permission's spelling.
    pub permission: String,
    /// `"all"`, or a list of company ids.
    pub companies: serde_json::Value,
}

impl Grant {
    /// Parses one grant of a request; the error names what is wrong.
    pub fn parse(json: &GrantJson) -> Result<Self, String> {
        let permission =
            Permission::parse(&json.permission).ok_or_else(|| format!("unknown permission {:?}", json.permission))?;
        let companies = match &json.companies {
            serde_json::Value::String(s) if s == "all" => Companies::All,
            serde_json::Value::Array(items) => {
                let mut ids = BTreeSet::new();
                for item in items {
                    let id = item
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .ok_or("companies must be \"all\" or a list of company ids")?;
                    ids.insert(id);
                }
                if ids.is_empty() {
                    return Err("a grant on no company grants nothing: name at least one, or \"all\"".into());
                }
                Companies::Only(ids)
            }
            _ => return Err("companies must be \"all\" or a list of company ids".into()),
        };
        if permission.is_account_wide() && companies != Companies::All {
            return Err(format!("{} is about the whole account: grant it on \"all\"", permission.as_str()));
        }
        Ok(Self { permission, companies })
    }

    /// The wire form.
    pub fn to_json(&self) -> GrantJson {
        let companies = match &self.companies {
            Companies::All => serde_json::Value::String("all".into()),
            Companies::Only(ids) => ids.iter().map(|id| serde_json::Value::String(id.to_string())).collect(),
        };
        GrantJson { permission: self.permission.as_str().to_owned(), companies }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn only(ids: &[CompanyId]) -> Companies {
        Companies::Only(ids.iter().copied().collect())
    }

    #[test]
    fn owners_and_admins_may_do_everything_in_their_account() {
        let company = CompanyId::new();
        for role in [Role::Owner, Role::Admin] {
            for action in Permission::ALL {
                let who = Principal { role, grants: &[] };
                assert!(allows(who, action, Target::Company(company)) && allows(who, action, Target::Account));
            }
        }
    }

    #[test]
    fn a_member_may_do_only_what_a_grant_gives_on_the_companies_it_names() {
        let (bar, pizzeria) = (CompanyId::new(), CompanyId::new());
        let grants = [
            Grant { permission: Permission::InvoicesRead, companies: Companies::All },
            Grant { permission: Permission::InvoicesSend, companies: only(&[bar]) },
        ];
        let member = Principal { role: Role::Member, grants: &grants };
        assert!(allows(member, Permission::InvoicesRead, Target::Company(pizzeria)));
        assert!(allows(member, Permission::InvoicesSend, Target::Company(bar)));
        assert!(!allows(member, Permission::InvoicesSend, Target::Company(pizzeria)), "not granted there");
        assert!(!allows(member, Permission::IntegrationsManage, Target::Company(bar)), "never granted");
        assert!(!allows(member, Permission::InvoicesSend, Target::Account), "account-wide needs every company");
        assert!(allows(member, Permission::InvoicesRead, Target::Account));
        let nobody = Principal { role: Role::Member, grants: &[] };
        assert!(Permission::ALL.iter().all(|p| !allows(nobody, *p, Target::Company(bar))));
    }

    #[test]
    fn grants_parse_from_and_to_the_documented_json() {
        let bar = CompanyId::new();
        let all: GrantJson =
            serde_json::from_value(serde_json::json!({"permission": "invoices:read", "companies": "all"})).unwrap();
        assert_eq!(
            Grant::parse(&all).unwrap(),
            Grant { permission: Permission::InvoicesRead, companies: Companies::All }
        );
        let some = GrantJson { permission: "invoices:send".into(), companies: serde_json::json!([bar.to_string()]) };
        let grant = Grant::parse(&some).unwrap();
        assert_eq!(grant.companies, only(&[bar]));
        assert_eq!(grant.to_json(), some);
        for (permission, companies, why) in [
            ("invoices:print", serde_json::json!("all"), "unknown permission"),
            ("invoices:read", serde_json::json!([]), "at least one"),
            ("invoices:read", serde_json::json!(["not-an-id"]), "company ids"),
            ("invoices:read", serde_json::json!("some"), "company ids"),
            ("users:manage", serde_json::json!([bar.to_string()]), "whole account"),
        ] {
            let err = Grant::parse(&GrantJson { permission: permission.into(), companies }).unwrap_err();
            assert!(err.contains(why), "{permission}: {err}");
        }
        assert!(
            serde_json::from_value::<GrantJson>(serde_json::json!({"permission": "x", "companies": "all", "y": 1}))
                .is_err()
        );
    }

    #[test]
    fn nobody_grants_more_than_they_hold_and_members_manage_only_members() {
        let (bar, pizzeria) = (CompanyId::new(), CompanyId::new());
        let grants = [
            Grant { permission: Permission::UsersManage, companies: Companies::All },
            Grant { permission: Permission::InvoicesRead, companies: Companies::All },
            Grant { permission: Permission::InvoicesSend, companies: only(&[bar]) },
        ];
        let manager = Principal { role: Role::Member, grants: &grants };
        let send_bar = Grant { permission: Permission::InvoicesSend, companies: only(&[bar]) };
        let send_both = Grant { permission: Permission::InvoicesSend, companies: only(&[bar, pizzeria]) };
        let send_all = Grant { permission: Permission::InvoicesSend, companies: Companies::All };
        let read_all = Grant { permission: Permission::InvoicesRead, companies: Companies::All };
        assert!(may_grant(manager, &[send_bar.clone(), read_all.clone()]));
        assert!(!may_grant(manager, &[send_both]), "pizzeria is not theirs to give");
        assert!(!may_grant(manager, std::slice::from_ref(&send_all)));
        assert!(!may_grant(manager, &[Grant { permission: Permission::SettingsManage, companies: only(&[bar]) }]));
        let admin = Principal { role: Role::Admin, grants: &[] };
        assert!(may_grant(admin, &[send_all]));
        assert!(may_manage(manager, Role::Member));
        assert!(!may_manage(manager, Role::Admin) && !may_manage(manager, Role::Owner));
        assert!(may_manage(admin, Role::Admin));
        let reader = Principal { role: Role::Member, grants: &grants[1..] };
        assert!(!may_manage(reader, Role::Member), "users:manage is needed");
    }

    #[test]
    fn a_removed_company_leaves_every_grant_and_a_grant_on_it_alone_goes() {
        let (bar, pizzeria) = (CompanyId::new(), CompanyId::new());
        let grants = [
            Grant { permission: Permission::InvoicesRead, companies: Companies::All },
            Grant { permission: Permission::InvoicesSend, companies: only(&[bar, pizzeria]) },
            Grant { permission: Permission::SettingsManage, companies: only(&[bar]) },
        ];
        assert_eq!(
            without_company(&grants, bar),
            vec![
                Grant { permission: Permission::InvoicesRead, companies: Companies::All },
                Grant { permission: Permission::InvoicesSend, companies: only(&[pizzeria]) },
            ]
        );
        assert_eq!(without_company(&grants, CompanyId::new()), grants.to_vec());
    }

    #[test]
    fn the_claim_lists_each_permission_once_with_where_it_applies() {
        let (bar, pizzeria) = (CompanyId::new(), CompanyId::new());
        let grants = [
            Grant { permission: Permission::InvoicesSend, companies: only(&[bar]) },
            Grant { permission: Permission::InvoicesSend, companies: only(&[pizzeria]) },
            Grant { permission: Permission::InvoicesRead, companies: only(&[bar]) },
            Grant { permission: Permission::InvoicesRead, companies: Companies::All },
        ];
        let claim = claim(Principal { role: Role::Member, grants: &grants });
        let mut both = [bar.to_string(), pizzeria.to_string()];
        both.sort();
        assert_eq!(
            claim,
            serde_json::json!({"role": "member", "permissions": {"invoices:read": "all", "invoices:send": both}})
        );
        let admin = super::claim(Principal { role: Role::Admin, grants: &[] });
        assert_eq!(admin["role"], "admin");
        assert_eq!(admin["permissions"].as_object().unwrap().len(), Permission::ALL.len());
        assert!(admin["permissions"].as_object().unwrap().values().all(|v| v == "all"));
        assert_eq!(
            super::claim(Principal { role: Role::Member, grants: &[] }),
            serde_json::json!({"role": "member", "permissions": {}})
        );
    }

    #[test]
    fn the_catalogue_round_trips_and_is_described_in_both_languages() {
        for p in Permission::ALL {
            assert_eq!(Permission::parse(p.as_str()), Some(p));
            assert_eq!(serde_json::to_value(p).unwrap(), p.as_str());
            let (it, en) = p.describe();
            assert!(!it.is_empty() && !en.is_empty() && it != en);
        }
        assert_eq!(Permission::ALL.len(), 7);
    }
}

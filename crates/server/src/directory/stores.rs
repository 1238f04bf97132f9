//! The stores as the application sees them: each reads through the [`Directory`] where a
//! hot path reads, and forgets the account after each of its writes (so this replica reads
//! its own writes at once; other replicas learn of them by notification).

use async_trait::async_trait;
use ponte_identity::outbox::OutgoingMail;
use ponte_identity::recovery::IssuedToken;
use ponte_identity::upstream::UpstreamIdentity;
use ponte_linking::Result;
use ponte_linking::access::Grant;
use ponte_linking::account::{Account, AccountStore, LoginCandidate, NewUser, User, UserPatch, UserStore};
use ponte_linking::audit::Actor;
use ponte_linking::audit::AuditEntry;
use ponte_linking::company::{Company, CompanyData, CompanyDraft, CompanyStore};
use ponte_linking::ids::SeatGrantId;
use ponte_linking::ids::{AccountId, CompanyId, InviteId, UserId};
use ponte_linking::integration::store::Refused;
use ponte_linking::integration::{Applied, Change, Integration, IntegrationKind, Integrations, PlatformAccount};
use ponte_linking::invite::Invite;
use ponte_linking::links::{Decision, ExternalIdentity, Links};
use ponte_linking::recovery::{Redemption, ResetStore, StoredReset};
use ponte_linking::seats::{Lapse, NewSeatGrant, PaidGrant, SeatGrant, SeatStore, SeatUsage};
use time::OffsetDateTime;

use super::{Directory, Key};

/// A store of `S` read through `directory`.
#[derive(Debug)]
pub struct Cached<S> {
    inner: S,
    directory: Directory,
}

impl<S> Cached<S> {
    /// `inner`, read through `directory`.
    pub fn new(inner: S, directory: Directory) -> Self {
        Self { inner, directory }
    }

    /// Forgets `account` once `result` is in, whatever it is (a failed write may still
    /// have raced with others; forgetting is always safe).
    fn after<T>(&self, account: AccountId, result: Result<T>) -> Result<T> {
        self.directory.forget(account);
        result
    }
}

#[async_trait]
impl<S: AccountStore> AccountStore for Cached<S> {
    async fn create(
        &self,
        name: String,
        owner: NewUser,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<(Account, User)> {
        let created = self.inner.create(name, owner, actor, now).await?;
        self.directory.forget(created.0.id);
        Ok(created)
    }

    async fn get(&self, id: AccountId) -> Result<Option<Account>> {
        self.directory.fetch(id, Key::Account, self.inner.get(id)).await
    }
}

#[async_trait]
impl<S: UserStore> UserStore for Cached<S> {
    async fn list(&self, account: AccountId) -> Result<Vec<User>> {
        self.inner.list(account).await
    }

    async fn get(&self, account: AccountId, user: UserId) -> Result<Option<User>> {
        self.directory.fetch(account, Key::User(user), self.inner.get(account, user)).await
    }

    async fn create(&self, account: AccountId, new: NewUser, actor: &Actor, now: OffsetDateTime) -> Result<User> {
        let result = self.inner.create(account, new, actor, now).await;
        self.after(account, result)
    }

    async fn update(
        &self,
        account: AccountId,
        user: UserId,
        patch: UserPatch,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<User> {
        let result = self.inner.update(account, user, patch, actor, now).await;
        self.after(account, result)
    }

    async fn set_grants(
        &self,
        account: AccountId,
        user: UserId,
        grants: Vec<Grant>,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<User> {
        let result = self.inner.set_grants(account, user, grants, actor, now).await;
        self.after(account, result)
    }

    async fn delete(&self, account: AccountId, user: UserId, actor: &Actor, now: OffsetDateTime) -> Result<()> {
        let result = self.inner.delete(account, user, actor, now).await;
        self.after(account, result)
    }

    async fn login_candidate(&self, email: &str) -> Result<Option<LoginCandidate>> {
        self.inner.login_candidate(email).await
    }
}

#[async_trait]
impl<S: CompanyStore> CompanyStore for Cached<S> {
    async fn list(&self, account: AccountId) -> Result<Vec<Company>> {
        self.directory.fetch_list(account, Key::Companies, self.inner.list(account)).await
    }

    async fn get(&self, account: AccountId, company: CompanyId) -> Result<Option<Company>> {
        self.inner.get(account, company).await
    }

    async fn create(
        &self,
        account: AccountId,
        data: CompanyData,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<Company> {
        let result = self.inner.create(account, data, actor, now).await;
        self.after(account, result)
    }

    async fn update(
        &self,
        account: AccountId,
        company: CompanyId,
        draft: &CompanyDraft,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<Company> {
        let result = self.inner.update(account, company, draft, actor, now).await;
        self.after(account, result)
    }

    async fn delete(&self, account: AccountId, company: CompanyId, actor: &Actor, now: OffsetDateTime) -> Result<()> {
        let result = self.inner.delete(account, company, actor, now).await;
        self.after(account, result)
    }
}

#[async_trait]
impl<S: Integrations> Integrations for Cached<S> {
    async fn get(&self, account: AccountId, company: CompanyId, kind: IntegrationKind) -> Result<Option<Integration>> {
        self.inner.get(account, company, kind).await
    }

    async fn for_account(&self, account: AccountId) -> Result<Vec<Integration>> {
        self.directory.fetch_list(account, Key::Integrations, self.inner.for_account(account)).await
    }

    async fn apply(&self, change: Change) -> Result<std::result::Result<Applied, Refused>> {
        let account = change.account;
        let result = self.inner.apply(change).await;
        self.after(account, result)
    }

    async fn set_platform_account(
        &self,
        account: AccountId,
        company: CompanyId,
        kind: IntegrationKind,
        platform: &PlatformAccount,
        now: OffsetDateTime,
    ) -> Result<()> {
        let result = self.inner.set_platform_account(account, company, kind, platform, now).await;
        self.after(account, result)
    }

    async fn invites(&self, account: AccountId, company: CompanyId, kind: IntegrationKind) -> Result<Vec<Invite>> {
        self.directory
            .fetch_list(account, Key::Invites(company, kind), self.inner.invites(account, company, kind))
            .await
    }

    async fn invite_by_id(&self, invite: InviteId) -> Result<Option<Invite>> {
        self.inner.invite_by_id(invite).await
    }

    async fn by_platform_account(
        &self,
        vat_number: &str,
        platform_account: &str,
        kind: IntegrationKind,
    ) -> Result<Vec<Integration>> {
        self.inner.by_platform_account(vat_number, platform_account, kind).await
    }

    async fn invite_by_token_digest(&self, digest: &str) -> Result<Option<Invite>> {
        self.inner.invite_by_token_digest(digest).await
    }

    async fn pending_invites_for(
        &self,
        user: UserId,
        email_normalized: &str,
        now: OffsetDateTime,
    ) -> Result<Vec<Invite>> {
        self.inner.pending_invites_for(user, email_normalized, now).await
    }

    async fn revoke_invites_of(&self, user: UserId, actor: &Actor, now: OffsetDateTime) -> Result<u64> {
        let result = self.inner.revoke_invites_of(user, actor, now).await;
        // The user's account is not at hand here; this is rare (an unlink), so forget all.
        self.directory.forget_everything();
        result
    }

    async fn resend(
        &self,
        account: AccountId,
        company: CompanyId,
        kind: IntegrationKind,
        invite: InviteId,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<std::result::Result<Invite, Refused>> {
        let result = self.inner.resend(account, company, kind, invite, actor, now).await;
        self.after(account, result)
    }
}

#[async_trait]
impl<S: Links> Links for Cached<S> {
    async fn find(&self, issuer: &str, subject: &str) -> Result<Option<ExternalIdentity>> {
        self.inner.find(issuer, subject).await
    }

    async fn for_user(&self, account: AccountId, user: UserId) -> Result<Vec<ExternalIdentity>> {
        self.directory.fetch_list(account, Key::Links(user), self.inner.for_user(account, user)).await
    }

    async fn link(
        &self,
        user: &User,
        identity: &UpstreamIdentity,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<Decision> {
        let result = self.inner.link(user, identity, actor, now).await;
        self.after(user.account_id, result)
    }

    async fn unlink(
        &self,
        account: AccountId,
        user: UserId,
        provider: &str,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<bool> {
        let result = self.inner.unlink(account, user, provider, actor, now).await;
        self.after(account, result)
    }

    async fn record_login(
        &self,
        link: &ExternalIdentity,
        identity: &UpstreamIdentity,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<()> {
        let result = self.inner.record_login(link, identity, actor, now).await;
        self.after(link.account_id, result)
    }
}

/// Seats change users (a payment restores suspended members, a lapse suspends them).
#[async_trait]
impl<S: SeatStore> SeatStore for Cached<S> {
    async fn list(&self, account: AccountId) -> Result<Vec<SeatGrant>> {
        self.inner.list(account).await
    }

    async fn usage(&self, account: AccountId, now: OffsetDateTime) -> Result<SeatUsage> {
        self.inner.usage(account, now).await
    }

    async fn create(
        &self,
        account: AccountId,
        new: NewSeatGrant,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<SeatGrant> {
        self.inner.create(account, new, actor, now).await
    }

    async fn pay(
        &self,
        account: AccountId,
        grant: SeatGrantId,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<PaidGrant> {
        let result = self.inner.pay(account, grant, actor, now).await;
        self.after(account, result)
    }

    async fn remove(&self, account: AccountId, grant: SeatGrantId, actor: &Actor, now: OffsetDateTime) -> Result<()> {
        let result = self.inner.remove(account, grant, actor, now).await;
        self.after(account, result)
    }

    async fn lapse(&self, now: OffsetDateTime) -> Result<Vec<Lapse>> {
        let lapsed = self.inner.lapse(now).await?;
        for lapse in &lapsed {
            self.directory.forget(lapse.account);
        }
        Ok(lapsed)
    }

    async fn remind(&self, now: OffsetDateTime) -> Result<u32> {
        self.inner.remind(now).await
    }
}

/// Redeeming a reset sets the user's password.
#[async_trait]
impl<S: ResetStore> ResetStore for Cached<S> {
    async fn issue(
        &self,
        user: &User,
        token: &IssuedToken,
        mail: &OutgoingMail,
        audit: &AuditEntry,
        now: OffsetDateTime,
    ) -> Result<()> {
        self.inner.issue(user, token, mail, audit, now).await
    }

    async fn rotate(
        &self,
        user: &User,
        token: &IssuedToken,
        mail: &OutgoingMail,
        audit: &AuditEntry,
        now: OffsetDateTime,
    ) -> Result<()> {
        self.inner.rotate(user, token, mail, audit, now).await
    }

    async fn find(&self, digest: &str) -> Result<Option<StoredReset>> {
        self.inner.find(digest).await
    }

    async fn redeem(&self, redemption: Redemption<'_>, now: OffsetDateTime) -> Result<bool> {
        let account = redemption.user.account_id;
        let result = self.inner.redeem(redemption, now).await;
        self.after(account, result)
    }
}

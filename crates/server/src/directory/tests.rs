use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ponte_linking::company::Company;

use super::*;

/// A list load that counts its calls and answers `n` companies (none: the content does
/// not matter, only whether the store was asked).
struct Store(AtomicU32);

impl Store {
    fn new() -> Self {
        Self(AtomicU32::new(0))
    }

    async fn companies(&self) -> Result<Vec<Company>, ()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(Vec::new())
    }

    fn calls(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }
}

fn account() -> AccountId {
    AccountId::new()
}

async fn read(dir: &Directory, account: AccountId, store: &Store) {
    dir.fetch_list(account, Key::Companies, store.companies()).await.unwrap();
}

fn listening(ttl: Duration) -> Directory {
    let dir = Directory::new(ttl);
    dir.start_listening();
    dir
}

#[tokio::test]
async fn kept_while_listening_and_forgotten_on_change() {
    let (dir, store, a, b) = (listening(Duration::from_secs(60)), Store::new(), account(), account());
    read(&dir, a, &store).await;
    read(&dir, a, &store).await;
    assert_eq!(store.calls(), 1, "the second read is from memory");
    read(&dir, b, &store).await;
    dir.forget(a);
    read(&dir, a, &store).await;
    read(&dir, b, &store).await;
    assert_eq!(store.calls(), 3, "a forgotten account is read again, another one is not");
    let stats = dir.stats();
    assert_eq!((stats.active, stats.hits, stats.loads, stats.accounts), (true, 2, 3, 2));
}

#[tokio::test]
async fn nothing_is_kept_unless_notifications_arrive() {
    let (store, a) = (Store::new(), account());
    let never_listened = Directory::new(Duration::from_secs(60));
    read(&never_listened, a, &store).await;
    read(&never_listened, a, &store).await;
    assert_eq!(store.calls(), 2);

    let dir = listening(Duration::from_secs(60));
    read(&dir, a, &store).await;
    dir.stop_listening();
    assert_eq!(dir.stats().accounts, 0, "emptied when notifications stop");
    read(&dir, a, &store).await;
    read(&dir, a, &store).await;
    assert_eq!(store.calls(), 5, "every read goes to the store meanwhile");
    dir.start_listening();
    read(&dir, a, &store).await;
    read(&dir, a, &store).await;
    assert_eq!(store.calls(), 6, "and is kept again once they resume");
}

#[tokio::test]
async fn turned_off_or_expired_entries_are_never_served() {
    let (store, a) = (Store::new(), account());
    let off = Directory::off();
    off.start_listening();
    read(&off, a, &store).await;
    read(&off, a, &store).await;
    let expired = listening(Duration::from_nanos(1));
    read(&expired, a, &store).await;
    std::thread::sleep(Duration::from_millis(1));
    read(&expired, a, &store).await;
    assert_eq!(store.calls(), 4);
    assert!(!off.stats().active);
}

#[tokio::test]
async fn a_load_that_raced_with_a_change_is_not_kept() {
    let (dir, store, a) = (listening(Duration::from_secs(60)), Store::new(), account());
    // The change commits (and is forgotten) while the load is in flight: what the load
    // read may predate it.
    dir.fetch_list(a, Key::Companies, async {
        let read = store.companies().await;
        dir.forget(account());
        read
    })
    .await
    .unwrap();
    read(&dir, a, &store).await;
    assert_eq!(store.calls(), 2, "the raced load was not kept");
    read(&dir, a, &store).await;
    assert_eq!(store.calls(), 2);
}

#[tokio::test]
async fn absent_rows_are_not_kept() {
    let (dir, a) = (listening(Duration::from_secs(60)), account());
    let loads = AtomicU32::new(0);
    for _ in 0..2 {
        let found = dir
            .fetch(a, Key::Account, async {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok::<Option<Account>, ()>(None)
            })
            .await
            .unwrap();
        assert!(found.is_none());
    }
    assert_eq!(loads.load(Ordering::SeqCst), 2, "a row created later must be seen at once");
}

#[tokio::test]
async fn memory_is_bounded_by_the_number_of_accounts() {
    let (dir, store) = (listening(Duration::from_secs(60)), Store::new());
    for _ in 0..MAX_ACCOUNTS {
        read(&dir, account(), &store).await;
    }
    assert_eq!(dir.stats().accounts, MAX_ACCOUNTS);
    read(&dir, account(), &store).await;
    assert_eq!(dir.stats().accounts, 1, "starts over rather than grow");
}

#[tokio::test]
async fn a_notification_forgets_only_the_account_it_names() {
    let (dir, store, a, b) = (listening(Duration::from_secs(60)), Store::new(), account(), account());
    read(&dir, a, &store).await;
    read(&dir, b, &store).await;
    listen::on_notification(&dir, "heartbeat");
    assert_eq!(dir.stats().accounts, 2, "the heartbeat changes nothing");
    listen::on_notification(&dir, &a.to_string());
    read(&dir, a, &store).await;
    read(&dir, b, &store).await;
    assert_eq!(store.calls(), 3, "only the named account is read again");
    listen::on_notification(&dir, listen::EVERYTHING);
    assert_eq!(dir.stats().accounts, 0, "a TRUNCATE forgets every account");
}

/// Links in memory, counting reads: enough to see the write-through without notifications.
#[derive(Debug, Default)]
struct MemoryLinks {
    links: std::sync::Mutex<Vec<ExternalIdentity>>,
    reads: AtomicU32,
}

#[async_trait::async_trait]
impl ponte_linking::links::Links for MemoryLinks {
    async fn find(&self, _issuer: &str, _subject: &str) -> ponte_linking::Result<Option<ExternalIdentity>> {
        Ok(None)
    }

    async fn for_user(&self, account: AccountId, user: UserId) -> ponte_linking::Result<Vec<ExternalIdentity>> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let links = self.links.lock().unwrap();
        Ok(links.iter().filter(|l| l.account_id == account && l.user_id == user).cloned().collect())
    }

    async fn link(
        &self,
        _user: &User,
        _identity: &ponte_identity::upstream::UpstreamIdentity,
        _actor: &ponte_linking::audit::Actor,
        _now: time::OffsetDateTime,
    ) -> ponte_linking::Result<ponte_linking::links::Decision> {
        unimplemented!("not used here")
    }

    async fn unlink(
        &self,
        account: AccountId,
        user: UserId,
        provider: &str,
        _actor: &ponte_linking::audit::Actor,
        _now: time::OffsetDateTime,
    ) -> ponte_linking::Result<bool> {
        let mut links = self.links.lock().unwrap();
        let before = links.len();
        links.retain(|l| !(l.account_id == account && l.user_id == user && l.provider == provider));
        Ok(links.len() < before)
    }

    async fn record_login(
        &self,
        _link: &ExternalIdentity,
        _identity: &ponte_identity::upstream::UpstreamIdentity,
        _actor: &ponte_linking::audit::Actor,
        _now: time::OffsetDateTime,
    ) -> ponte_linking::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn this_replicas_own_write_is_read_back_at_once_without_any_notification() {
    use ponte_linking::links::Links;
    let (a, user) = (account(), UserId::new());
    let inner = MemoryLinks::default();
    inner.links.lock().unwrap().push(ExternalIdentity {
        id: "l1".into(),
        user_id: user,
        account_id: a,
        provider: "tsid".into(),
        issuer: "https://id.example".into(),
        subject: "s1".into(),
        email: None,
        name: None,
        linked_at: time::OffsetDateTime::UNIX_EPOCH,
        last_login_at: None,
    });
    let dir = listening(Duration::from_secs(60));
    let links = stores::Cached::new(inner, dir.clone());
    assert_eq!(links.for_user(a, user).await.unwrap().len(), 1);
    assert_eq!(links.for_user(a, user).await.unwrap().len(), 1);
    let actor = ponte_linking::audit::Actor::system();
    assert!(links.unlink(a, user, "tsid", &actor, time::OffsetDateTime::UNIX_EPOCH).await.unwrap());
    assert!(links.for_user(a, user).await.unwrap().is_empty(), "the write forgot the account");
    assert_eq!(dir.stats().hits, 1);
}

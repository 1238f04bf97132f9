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

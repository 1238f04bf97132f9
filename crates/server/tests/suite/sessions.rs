//! The session-store suite, on the in-process store and (when configured) Redis, one node
//! and a Redis Cluster.

use std::sync::Arc;

use ponte_identity::clock::{Clock, ManualClock};
use ponte_identity::ids::{AccountId, UserId};
use ponte_identity::session::{
    DENIED_PREFIX, MemoryStore, NewSession, RedisStore, SessionPolicy, SessionStore, Sessions,
};
use time::Duration;

use crate::harness::{TestRedis, now};

/// Test users, by number: the same number is the same user throughout a test.
fn user(n: u128) -> UserId {
    format!("00000000-0000-7000-8000-{n:012}").parse().unwrap()
}

fn new_session(user: UserId) -> NewSession {
    NewSession {
        user_id: user,
        account_id: AccountId::new(),
        amr: vec!["pwd".into()],
        user_agent: Some("test".into()),
        ip: None,
    }
}

const POLICY: SessionPolicy = SessionPolicy { idle: Duration::minutes(30), absolute: Duration::hours(8) };

/// Runs `suite` on every store this run has.
async fn on_every_store<F, Fut>(suite: F)
where
    F: Fn(Arc<dyn SessionStore>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    suite(Arc::new(MemoryStore::new())).await;
    if let Some(redis) = TestRedis::new() {
        suite(Arc::new(redis.store())).await;
    }
    if let Some(cluster) = TestRedis::cluster() {
        suite(Arc::new(cluster.store())).await;
    }
}

#[tokio::test]
async fn create_get_and_idle_expiry() {
    on_every_store(|store| async move {
        let sessions = Sessions::new(store, POLICY);
        let clock = ManualClock::new(now());
        let (token, created) = sessions.create(new_session(user(1)), clock.now()).await.unwrap();
        assert_eq!(token.expose().len(), 43, "256-bit token");
        assert_ne!(created.id, token.expose(), "the public id is not the cookie value");
        assert_eq!(sessions.get(token.expose(), clock.now()).await.unwrap().unwrap().user_id, user(1));

        // Used again before the idle timeout: the idle expiry moves forward.
        clock.advance(Duration::minutes(20));
        let seen = sessions.get(token.expose(), clock.now()).await.unwrap().expect("still live");
        assert!(seen.idle_expires_at > created.idle_expires_at);
        clock.advance(Duration::minutes(25));
        assert!(sessions.get(token.expose(), clock.now()).await.unwrap().is_some(), "45 min old but used 25 min ago");

        // Then left alone for longer than the idle timeout.
        clock.advance(Duration::minutes(31));
        assert!(sessions.get(token.expose(), clock.now()).await.unwrap().is_none());
        assert!(sessions.get("not-a-token", clock.now()).await.unwrap().is_none());
    })
    .await;
}

#[tokio::test]
async fn absolute_expiry_ends_even_a_busy_session() {
    on_every_store(|store| async move {
        let sessions = Sessions::new(store, POLICY);
        let clock = ManualClock::new(now());
        let (token, _) = sessions.create(new_session(user(1)), clock.now()).await.unwrap();
        for _ in 0..31 {
            clock.advance(Duration::minutes(15));
            if clock.now() >= now() + Duration::hours(8) {
                break;
            }
            assert!(sessions.get(token.expose(), clock.now()).await.unwrap().is_some());
        }
        clock.advance(Duration::minutes(15));
        assert!(sessions.get(token.expose(), clock.now()).await.unwrap().is_none(), "past 8 hours however busy");
    })
    .await;
}

#[tokio::test]
async fn list_revoke_and_revoke_all() {
    on_every_store(|store| async move {
        let sessions = Sessions::new(store, POLICY);
        let clock = ManualClock::new(now());
        let (a, _) = sessions.create(new_session(user(1)), clock.now()).await.unwrap();
        clock.advance(Duration::seconds(5));
        let (b, sb) = sessions.create(new_session(user(1)), clock.now()).await.unwrap();
        let (other, _) = sessions.create(new_session(user(2)), clock.now()).await.unwrap();

        let listed = sessions.list_for_user(user(1), clock.now()).await.unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].id, sb.id, "newest first");

        assert!(!sessions.revoke(user(2), &sb.id).await.unwrap(), "cannot revoke another user's session");
        assert!(sessions.revoke(user(1), &sb.id).await.unwrap());
        assert!(sessions.get(b.expose(), clock.now()).await.unwrap().is_none());
        assert!(!sessions.revoke(user(1), &sb.id).await.unwrap(), "already gone");

        assert_eq!(sessions.revoke_all_for_user(user(1)).await.unwrap(), 1);
        assert!(sessions.get(a.expose(), clock.now()).await.unwrap().is_none());
        assert!(sessions.list_for_user(user(1), clock.now()).await.unwrap().is_empty());
        assert!(sessions.get(other.expose(), clock.now()).await.unwrap().is_some(), "other users keep theirs");

        // Expired sessions drop out of the list.
        clock.advance(Duration::minutes(31));
        assert!(sessions.list_for_user(user(2), clock.now()).await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn rotation_issues_a_new_id_and_kills_the_old_one() {
    on_every_store(|store| async move {
        let sessions = Sessions::new(store, POLICY);
        let clock = ManualClock::new(now());
        let (old, old_session) = sessions.create(new_session(user(1)), clock.now()).await.unwrap();
        let (new, new_session) = sessions.rotate(old.expose(), clock.now()).await.unwrap().expect("rotated");
        assert_ne!(old.expose(), new.expose());
        assert_ne!(old_session.id, new_session.id);
        assert_eq!(new_session.created_at, old_session.created_at, "rotation keeps the sign-in time");
        assert!(sessions.get(old.expose(), clock.now()).await.unwrap().is_none());
        assert_eq!(sessions.get(new.expose(), clock.now()).await.unwrap().unwrap().user_id, user(1));
        assert_eq!(sessions.list_for_user(user(1), clock.now()).await.unwrap().len(), 1);
        assert!(sessions.rotate(old.expose(), clock.now()).await.unwrap().is_none());
    })
    .await;
}

#[tokio::test]
async fn one_time_values_are_taken_once_and_counters_count() {
    on_every_store(|store| async move {
        store.put_once("flow-1", "state", 60).await.unwrap();
        assert_eq!(store.take_once("flow-1").await.unwrap().as_deref(), Some("state"));
        assert_eq!(store.take_once("flow-1").await.unwrap(), None, "a replay gets nothing");
        assert_eq!(store.incr("counter", 60).await.unwrap(), 1);
        assert_eq!(store.incr("counter", 60).await.unwrap(), 2);
        store.ping().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_denied_key_stays_denied_and_its_denial_is_announced_with_the_write() {
    on_every_store(|store| async move {
        assert!(!store.is_denied("jti-revoked:a").await.unwrap());
        store.deny("jti-revoked:a", 60).await.unwrap();
        assert!(store.is_denied("jti-revoked:a").await.unwrap());
        assert!(!store.is_denied("jti-revoked:b").await.unwrap(), "only the key denied");
    })
    .await;
    // One node, announcing: a subscriber of the changes channel hears of the denial.
    let Some(redis) = TestRedis::new() else { return };
    let store = redis.store().announcing(true);
    let mut subscriber = redis::Client::open(redis.url.as_str()).unwrap().get_async_pubsub().await.unwrap();
    subscriber.subscribe(store.changes_channel()).await.unwrap();
    store.deny("jti-revoked:c", 60).await.unwrap();
    let mut messages = subscriber.on_message();
    let message = tokio::time::timeout(std::time::Duration::from_secs(5), futures_util::StreamExt::next(&mut messages))
        .await
        .expect("the denial is announced")
        .expect("a message");
    assert_eq!(message.get_payload::<String>().unwrap(), format!("{DENIED_PREFIX}jti-revoked:c"));
    assert!(store.is_denied("jti-revoked:c").await.unwrap());
}

#[tokio::test]
async fn a_logout_racing_a_touch_stays_logged_out() {
    on_every_store(|store| async move {
        let sessions = Sessions::new(store.clone(), POLICY);
        let clock = ManualClock::new(now());
        let (token, session) = sessions.create(new_session(user(1)), clock.now()).await.unwrap();
        store.remove(&session.id, &user(1).to_string()).await.unwrap();
        assert!(!store.replace(&session.id, "{}", 60).await.unwrap(), "replace must not resurrect");
        clock.advance(Duration::minutes(2));
        assert!(sessions.get(token.expose(), clock.now()).await.unwrap().is_none());
    })
    .await;
}

/// Runs `n` copies of `op` at once (released together by a barrier); returns their results.
async fn all_at_once<T, F, Fut>(n: usize, op: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (barrier, work) = (barrier.clone(), op(i));
            tokio::spawn(async move {
                barrier.wait().await;
                work.await
            })
        })
        .collect();
    let mut results = Vec::with_capacity(n);
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}

#[tokio::test]
async fn put_if_present_rewrites_a_live_value_and_never_brings_back_a_taken_one() {
    on_every_store(|store| async move {
        assert!(!store.put_if_present("pending:x", "late", 60).await.unwrap(), "nothing there: nothing written");
        assert_eq!(store.peek("pending:x").await.unwrap(), None);
        store.put_once("pending:x", "first", 60).await.unwrap();
        assert!(store.put_if_present("pending:x", "second", 60).await.unwrap());
        assert_eq!(store.take_once("pending:x").await.unwrap().as_deref(), Some("second"));
        assert!(!store.put_if_present("pending:x", "third", 60).await.unwrap(), "taken: stays taken");
        assert_eq!(store.peek("pending:x").await.unwrap(), None);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_many_concurrent_put_if_absent_exactly_one_wins() {
    on_every_store(|store| async move {
        for round in 0..5 {
            let key = format!("bcl-jti:test:{round}");
            let won = all_at_once(32, |i| {
                let (store, key) = (store.clone(), key.clone());
                async move { store.put_if_absent(&key, &i.to_string(), 60).await.unwrap() }
            })
            .await;
            assert_eq!(won.iter().filter(|w| **w).count(), 1, "round {round}: exactly one caller stores the value");
            assert!(!store.put_if_absent(&key, "late", 60).await.unwrap(), "a later caller loses too");
        }
        // A taken value frees the key again.
        store.take_once("bcl-jti:test:0").await.unwrap();
        assert!(store.put_if_absent("bcl-jti:test:0", "again", 60).await.unwrap());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_additions_to_one_set_are_all_kept_and_taken_once() {
    on_every_store(|store| async move {
        let key = "upsid:test:one-upstream-session";
        all_at_once(32, |i| {
            let store = store.clone();
            async move { store.add_member(key, &format!("session-{i}"), 60).await.unwrap() }
        })
        .await;
        let mut members = store.take_members(key).await.unwrap();
        members.sort();
        let mut expected: Vec<String> = (0..32).map(|i| format!("session-{i}")).collect();
        expected.sort();
        assert_eq!(members, expected, "no addition is lost to another");
        assert!(store.take_members(key).await.unwrap().is_empty(), "taken once");

        // A shorter TTL on a later addition never shortens the set's life.
        store.add_member(key, "long", 60).await.unwrap();
        store.add_member(key, "short", 1).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        assert_eq!(store.take_members(key).await.unwrap().len(), 2);
    })
    .await;
}

#[tokio::test]
async fn a_counter_starts_again_after_its_window() {
    on_every_store(|store| async move {
        assert_eq!(store.incr("window", 1).await.unwrap(), 1);
        assert_eq!(store.incr("window", 1).await.unwrap(), 2, "a later count keeps the first window's end");
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        assert_eq!(store.incr("window", 1).await.unwrap(), 1, "the store's own expiry ended the window");
    })
    .await;
}

/// A TCP proxy to `target` that forwards each connection until the client starts sending
/// the command named `cut_at`, delivers what came before it, then drops the connection:
/// a Ponte that dies (or loses its link) in the middle of a pipeline.
async fn cut_before(target: std::net::SocketAddr, cut_at: &'static str) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let marker = format!("${}\r\n{cut_at}\r\n", cut_at.len()).into_bytes();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let marker = marker.clone();
            tokio::spawn(async move {
                let server = tokio::net::TcpStream::connect(target).await.unwrap();
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let replies = tokio::spawn(async move { tokio::io::copy(&mut server_read, &mut client_write).await });
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let n = client_read.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    let start = seen.len();
                    seen.extend_from_slice(&buf[..n]);
                    match seen.windows(marker.len()).position(|w| w == marker.as_slice()) {
                        Some(at) => {
                            // Back up to the `*N\r\n` header of the cut command.
                            let header = seen[..at].iter().rposition(|b| *b == b'*').unwrap();
                            if header > start {
                                server_write.write_all(&seen[start..header]).await.unwrap();
                            }
                            // Let Redis run what it got before the line goes dead.
                            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                            break;
                        }
                        None => server_write.write_all(&buf[..n]).await.unwrap(),
                    }
                }
                replies.abort();
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_counter_cut_off_between_its_increment_and_its_expiry_is_not_left_forever() {
    let Some(redis) = TestRedis::new() else { return };
    let info = redis::Client::open(redis.url.as_str()).unwrap().get_connection_info().clone();
    let redis::ConnectionAddr::Tcp(host, port) = info.addr() else { panic!("a TCP Redis URL") };
    let target = tokio::net::lookup_host((host.as_str(), *port)).await.unwrap().next().unwrap();
    let proxy = cut_before(target, "EXPIRE").await;
    let cut = RedisStore::new(&format!("redis://{proxy}/{}", info.redis_settings().db()), &redis.prefix).unwrap();
    assert!(cut.incr("cut", 60).await.is_err(), "the line went dead mid-pipeline");

    // Read the key's TTL directly (layout `c:<key>`, see `redis_store.rs`): -1 would be a
    // counter without expiry; MULTI/EXEC leaves none at all (-2) or one with its TTL.
    let mut raw = redis::Client::open(redis.url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let ttl = |key: &str| redis::cmd("TTL").arg(format!("{}c:{key}", redis.prefix)).to_owned();
    let left: i64 = ttl("cut").query_async(&mut raw).await.unwrap();
    assert_ne!(left, -1, "a counter without expiry was left behind");

    let store = redis.store();
    assert_eq!(store.incr("whole", 60).await.unwrap(), 1);
    let whole: i64 = ttl("whole").query_async(&mut raw).await.unwrap();
    assert!((1..=60).contains(&whole), "ttl {whole}");
}

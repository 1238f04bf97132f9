//! In-process session store: the embedded default and the reference for tests.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::SessionStore;
use crate::Result;

#[derive(Debug, Default)]
struct Inner {
    values: HashMap<String, (String, Instant)>,
    counters: HashMap<String, (u64, Instant)>,
    user_index: HashMap<String, HashSet<String>>,
    sets: HashMap<String, (HashSet<String>, Instant)>,
    writes: u64,
}

impl Inner {
    fn live(&mut self, key: &str) -> Option<&String> {
        let now = Instant::now();
        if self.values.get(key).is_some_and(|(_, deadline)| *deadline <= now) {
            self.values.remove(key);
        }
        self.values.get(key).map(|(v, _)| v)
    }

    /// Every so often, forget what has expired so memory stays bounded.
    fn sweep(&mut self) {
        self.writes += 1;
        if !self.writes.is_multiple_of(1024) {
            return;
        }
        let now = Instant::now();
        self.values.retain(|_, (_, deadline)| *deadline > now);
        self.counters.retain(|_, (_, deadline)| *deadline > now);
        self.sets.retain(|_, (_, deadline)| *deadline > now);
        let values = &self.values;
        for ids in self.user_index.values_mut() {
            ids.retain(|id| values.contains_key(&session_key(id)));
        }
        self.user_index.retain(|_, ids| !ids.is_empty());
    }
}

/// Sessions kept in this process: lost on restart and not shared between replicas.
#[derive(Debug, Default)]
pub struct MemoryStore(Mutex<Inner>);

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn session_key(id: &str) -> String {
    format!("s:{id}")
}

fn deadline(ttl: u64) -> Instant {
    Instant::now() + Duration::from_secs(ttl)
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn insert(&self, id: &str, user_id: &str, value: &str, ttl: u64, _index_ttl: u64) -> Result<()> {
        let mut inner = self.lock();
        inner.sweep();
        inner.values.insert(session_key(id), (value.to_owned(), deadline(ttl)));
        inner.user_index.entry(user_id.to_owned()).or_default().insert(id.to_owned());
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<String>> {
        Ok(self.lock().live(&session_key(id)).cloned())
    }

    async fn replace(&self, id: &str, value: &str, ttl: u64) -> Result<bool> {
        let mut inner = self.lock();
        let key = session_key(id);
        if inner.live(&key).is_none() {
            return Ok(false);
        }
        inner.values.insert(key, (value.to_owned(), deadline(ttl)));
        Ok(true)
    }

    async fn remove(&self, id: &str, user_id: &str) -> Result<()> {
        let mut inner = self.lock();
        inner.values.remove(&session_key(id));
        if let Some(ids) = inner.user_index.get_mut(user_id) {
            ids.remove(id);
            if ids.is_empty() {
                inner.user_index.remove(user_id);
            }
        }
        Ok(())
    }

    async fn ids_for_user(&self, user_id: &str) -> Result<Vec<String>> {
        Ok(self.lock().user_index.get(user_id).map(|ids| ids.iter().cloned().collect()).unwrap_or_default())
    }

    async fn put_once(&self, key: &str, value: &str, ttl: u64) -> Result<()> {
        let mut inner = self.lock();
        inner.sweep();
        inner.values.insert(format!("o:{key}"), (value.to_owned(), deadline(ttl)));
        Ok(())
    }

    async fn peek(&self, key: &str) -> Result<Option<String>> {
        Ok(self.lock().live(&format!("o:{key}")).cloned())
    }

    async fn take_once(&self, key: &str) -> Result<Option<String>> {
        let mut inner = self.lock();
        let key = format!("o:{key}");
        let value = inner.live(&key).cloned();
        inner.values.remove(&key);
        Ok(value)
    }

    async fn put_if_absent(&self, key: &str, value: &str, ttl: u64) -> Result<bool> {
        // Checked and written under one lock, so no other caller can slip in between.
        let mut inner = self.lock();
        inner.sweep();
        let key = format!("o:{key}");
        if inner.live(&key).is_some() {
            return Ok(false);
        }
        inner.values.insert(key, (value.to_owned(), deadline(ttl)));
        Ok(true)
    }

    async fn put_if_present(&self, key: &str, value: &str, ttl: u64) -> Result<bool> {
        let mut inner = self.lock();
        inner.sweep();
        let key = format!("o:{key}");
        if inner.live(&key).is_none() {
            return Ok(false);
        }
        inner.values.insert(key, (value.to_owned(), deadline(ttl)));
        Ok(true)
    }

    async fn add_member(&self, key: &str, member: &str, ttl: u64) -> Result<()> {
        let mut inner = self.lock();
        inner.sweep();
        let now = Instant::now();
        let until = deadline(ttl);
        let entry = inner.sets.entry(key.to_owned()).or_insert_with(|| (HashSet::new(), until));
        if entry.1 <= now {
            *entry = (HashSet::new(), until);
        }
        entry.0.insert(member.to_owned());
        entry.1 = entry.1.max(until);
        Ok(())
    }

    async fn take_members(&self, key: &str) -> Result<Vec<String>> {
        let mut inner = self.lock();
        Ok(match inner.sets.remove(key) {
            Some((members, until)) if until > Instant::now() => members.into_iter().collect(),
            _ => Vec::new(),
        })
    }

    async fn incr(&self, key: &str, ttl: u64) -> Result<u64> {
        let mut inner = self.lock();
        inner.sweep();
        let now = Instant::now();
        let entry = inner.counters.entry(key.to_owned()).or_insert((0, deadline(ttl)));
        if entry.1 <= now {
            *entry = (0, deadline(ttl));
        }
        entry.0 += 1;
        Ok(entry.0)
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}

//! The node's connected sessions, by client id and by user: how server API calls that target a
//! user (disconnect, unsubscribe, subscribe, refresh) reach their connections.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::session::SessionShared;

#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<Arc<str>, Arc<SessionShared>>,
    by_user: HashMap<String, HashSet<Arc<str>>>,
}

impl Registry {
    /// Registers a connected session unless its user already has `limit` connections
    /// (0: no limit). Returns whether it was added.
    pub fn add(&self, user: &str, session: Arc<SessionShared>, limit: usize) -> bool {
        let mut inner = self.inner.lock();
        let ids = inner.by_user.entry(user.to_owned()).or_default();
        if limit > 0 && ids.len() >= limit {
            return false;
        }
        ids.insert(session.id.clone());
        inner.by_id.insert(session.id.clone(), session);
        metrics::gauge!("herald_connections").set(inner.by_id.len() as f64);
        true
    }

    pub fn remove(&self, user: &str, client: &str) {
        let mut inner = self.inner.lock();
        inner.by_id.remove(client);
        if let Some(ids) = inner.by_user.get_mut(user) {
            ids.remove(client);
            if ids.is_empty() {
                inner.by_user.remove(user);
            }
        }
        metrics::gauge!("herald_connections").set(inner.by_id.len() as f64);
    }

    /// The user's sessions, or only `client` among them when given.
    pub fn of_user(&self, user: &str, client: Option<&str>) -> Vec<Arc<SessionShared>> {
        let inner = self.inner.lock();
        let Some(ids) = inner.by_user.get(user) else {
            return Vec::new();
        };
        ids.iter()
            .filter(|id| client.is_none_or(|c| c == &***id))
            .filter_map(|id| inner.by_id.get(id).cloned())
            .collect()
    }

    pub fn get(&self, client: &str) -> Option<Arc<SessionShared>> {
        self.inner.lock().by_id.get(client).cloned()
    }

    pub fn all(&self) -> Vec<Arc<SessionShared>> {
        self.inner.lock().by_id.values().cloned().collect()
    }

    /// (connections, distinct users).
    pub fn counts(&self) -> (usize, usize) {
        let inner = self.inner.lock();
        (inner.by_id.len(), inner.by_user.len())
    }
}

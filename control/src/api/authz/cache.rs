//! The RBAC policy every request is decided on, read from the store once and kept until an
//! RBAC object changes, as kube-apiserver's RBAC authorizer reads its informers' caches rather
//! than etcd. Two things mark it stale: the authorization filter, right after any RBAC write it
//! let through (so a client that just made a RoleBinding is decided on it), and a watch of the
//! RBAC keys (for writes that do not pass the filter: the server's own, another server's).

use std::sync::{
    Arc, RwLock,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use futures::StreamExt as _;

use super::rbac::Policy;
use crate::{api::error::ApiError, store::Store};

/// Where every RBAC object is stored (`/registry/<group>/<plural>/...`).
pub const RBAC_PREFIX: &str = "/registry/rbac.authorization.k8s.io/";

/// The shared policy and its staleness.
#[derive(Debug, Default)]
pub struct PolicyCache {
    /// Bumped by every change; a policy read at an older generation is not kept.
    generation: Arc<AtomicU64>,
    held: RwLock<Option<(u64, Arc<Policy>)>>,
    /// Whether the watch task runs (it stops on a broken watch; the next read starts another).
    watching: Arc<AtomicBool>,
}

impl PolicyCache {
    /// Marks the policy stale.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The current policy: the one held, or one read now (and held, unless a change came in
    /// while it was read).
    pub async fn get<S: Store>(&self, store: &Arc<S>) -> Result<Arc<Policy>, ApiError> {
        let generation = self.generation.load(Ordering::Acquire);
        if self.watching.load(Ordering::Acquire)
            && let Ok(held) = self.held.read()
            && let Some((g, policy)) = held.as_ref()
            && *g == generation
        {
            return Ok(Arc::clone(policy));
        }
        if !self.watching.swap(true, Ordering::AcqRel)
            && let Err(e) = self.watch(store).await
        {
            self.watching.store(false, Ordering::Release);
            return Err(e);
        }
        let generation = self.generation.load(Ordering::Acquire);
        let policy = Arc::new(super::load_policy(store.as_ref()).await?);
        if let Ok(mut held) = self.held.write()
            && self.generation.load(Ordering::Acquire) == generation
        {
            *held = Some((generation, Arc::clone(&policy)));
        }
        Ok(policy)
    }

    /// Starts the task that marks the policy stale on every RBAC change after now. When the
    /// watch breaks (compacted, store gone) the task marks it stale and stops.
    async fn watch<S: Store>(&self, store: &Arc<S>) -> Result<(), ApiError> {
        let from = store.current_revision().await?;
        let mut events = store.watch(RBAC_PREFIX, from).await?;
        // Whatever was read before the watch began may miss a change before `from`.
        self.invalidate();
        let (generation, watching) = (Arc::clone(&self.generation), Arc::clone(&self.watching));
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                generation.fetch_add(1, Ordering::AcqRel);
                if event.is_err() {
                    break;
                }
            }
            watching.store(false, Ordering::Release);
            generation.fetch_add(1, Ordering::AcqRel);
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::SqliteStore;

    fn role(name: &str) -> Vec<u8> {
        serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": name}, "rules": []})
        .to_string()
        .into_bytes()
    }

    #[tokio::test]
    async fn the_policy_is_kept_until_rbac_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(SqliteStore::open(&dir.path().join("s.db")).expect("store"));
        let cache = PolicyCache::default();
        let key = |n: &str| format!("{RBAC_PREFIX}clusterroles/{n}");
        store.create(&key("a"), role("a")).await.expect("create");
        let first = cache.get(&store).await.expect("policy");
        assert!(first.cluster_roles.contains_key("a"));
        // Held: the same policy again.
        let again = cache.get(&store).await.expect("policy");
        assert!(Arc::ptr_eq(&first, &again));
        // A write the filter did not see reaches it through the watch.
        store.create(&key("b"), role("b")).await.expect("create");
        let mut seen = false;
        for _ in 0..100 {
            if cache
                .get(&store)
                .await
                .expect("policy")
                .cluster_roles
                .contains_key("b")
            {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(seen, "the watched write did not reach the policy");
        // Other keys do not make it stale.
        let held = cache.get(&store).await.expect("policy");
        store
            .create("/registry/core/configmaps/default/x", b"{}".to_vec())
            .await
            .expect("create");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(Arc::ptr_eq(
            &held,
            &cache.get(&store).await.expect("policy")
        ));
        // The filter's mark is immediate.
        cache.invalidate();
        assert!(!Arc::ptr_eq(
            &held,
            &cache.get(&store).await.expect("policy")
        ));
    }
}

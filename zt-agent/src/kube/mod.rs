//! Kubernetes pod metadata: which pod a process's cgroup belongs to, and
//! that pod's namespace, name, labels and service account, for `k8s:`
//! selectors and for every event.
//!
//! # Layout
//! - [`PodMeta`], [`Pods`]: the cache, by pod UID and by container id,
//!   bounded at [`MAX_PODS`]; shared by the watcher (writes), the identity
//!   resolver and the enricher (reads).
//! - [`api`]: the API server's JSON (pod lists, watch events) -> [`PodMeta`].
//! - [`client`]: list, then watch, the node's pods from the API server
//!   (in-cluster service account, or `--kube-api URL`), relisting when the
//!   watch expires, backing off on errors; [`client::Status`] for `status`.
//!
//! Processes are matched to pods through their cgroup path
//! (`identity::container`): the pod UID where the kubelet's layout has it,
//! else the container id, which the pod's status lists.
pub mod api;
pub mod client;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use serde::Serialize;

use crate::identity::container::Workload;

/// Pods kept at most (a node runs a few hundred at most; the bound is for
/// a watch without a node filter, or a misbehaving server).
pub const MAX_PODS: usize = 65_536;

/// One pod, as events show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PodMeta {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    /// Its containers' ids (the runtime prefix, `containerd://`, removed).
    #[serde(skip)]
    pub containers: Vec<String>,
}

#[derive(Default)]
struct Index {
    by_uid: HashMap<String, Arc<PodMeta>>,
    by_container: HashMap<String, String>,
}

impl Index {
    fn insert(&mut self, pod: PodMeta) {
        self.remove(&pod.uid.clone());
        for c in &pod.containers {
            self.by_container.insert(c.clone(), pod.uid.clone());
        }
        self.by_uid.insert(pod.uid.clone(), Arc::new(pod));
    }

    fn remove(&mut self, uid: &str) {
        if let Some(old) = self.by_uid.remove(uid) {
            for c in &old.containers {
                self.by_container.remove(c);
            }
        }
    }
}

/// The pod cache. `generation` moves with every change, so readers know
/// when to look again (the resolver's cgroup rescan).
#[derive(Default)]
pub struct Pods {
    index: RwLock<Index>,
    generation: AtomicU64,
    /// Pods not kept: the cache held [`MAX_PODS`].
    pub dropped: AtomicU64,
}

impl Pods {
    /// Replaces every pod (a list); returns how many did not fit.
    pub fn replace_all(&self, pods: Vec<PodMeta>) -> usize {
        let mut index = Index::default();
        let mut dropped = 0;
        for p in pods {
            if index.by_uid.len() >= MAX_PODS {
                dropped += 1;
                continue;
            }
            index.insert(p);
        }
        *self.index.write().unwrap_or_else(|e| e.into_inner()) = index;
        self.dropped.fetch_add(dropped as u64, Relaxed);
        self.generation.fetch_add(1, Relaxed);
        dropped
    }

    /// Adds or updates a pod; false when the cache is full.
    pub fn upsert(&self, pod: PodMeta) -> bool {
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        if index.by_uid.len() >= MAX_PODS && !index.by_uid.contains_key(&pod.uid) {
            self.dropped.fetch_add(1, Relaxed);
            return false;
        }
        index.insert(pod);
        self.generation.fetch_add(1, Relaxed);
        true
    }

    pub fn remove(&self, uid: &str) {
        self.index.write().unwrap_or_else(|e| e.into_inner()).remove(uid);
        self.generation.fetch_add(1, Relaxed);
    }

    /// The pod of a workload: by its pod UID, else by its container id.
    pub fn lookup(&self, w: &Workload) -> Option<Arc<PodMeta>> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = w.pod_uid.as_deref().and_then(|u| index.by_uid.get(u)) {
            return Some(p.clone());
        }
        let uid = index.by_container.get(w.container_id.as_deref()?)?;
        index.by_uid.get(uid).cloned()
    }

    pub fn len(&self) -> usize {
        self.index.read().unwrap_or_else(|e| e.into_inner()).by_uid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, containers: &[&str]) -> PodMeta {
        PodMeta {
            namespace: "ns".into(),
            name: uid.into(),
            uid: uid.into(),
            containers: containers.iter().map(|c| c.to_string()).collect(),
            ..Default::default()
        }
    }

    fn workload(uid: Option<&str>, container: Option<&str>) -> Workload {
        Workload { pod_uid: uid.map(Into::into), container_id: container.map(Into::into) }
    }

    #[test]
    fn found_by_uid_or_container_and_forgotten() {
        let pods = Pods::default();
        pods.replace_all(vec![pod("u1", &["c1", "c2"]), pod("u2", &[])]);
        assert_eq!(pods.lookup(&workload(Some("u1"), None)).unwrap().uid, "u1");
        assert_eq!(pods.lookup(&workload(None, Some("c2"))).unwrap().uid, "u1");
        assert_eq!(pods.lookup(&workload(Some("unknown"), Some("c1"))).unwrap().uid, "u1", "the container id when the uid is unknown");
        let g = pods.generation();
        // An update drops the containers it no longer lists.
        pods.upsert(pod("u1", &["c3"]));
        assert!(pods.generation() > g);
        assert!(pods.lookup(&workload(None, Some("c1"))).is_none());
        assert_eq!(pods.lookup(&workload(None, Some("c3"))).unwrap().uid, "u1");
        pods.remove("u1");
        assert!(pods.lookup(&workload(Some("u1"), Some("c3"))).is_none());
        assert_eq!(pods.len(), 1);
    }

    #[test]
    fn bounded() {
        let pods = Pods::default();
        let many: Vec<PodMeta> = (0..MAX_PODS + 3).map(|i| pod(&format!("u{i}"), &[])).collect();
        assert_eq!(pods.replace_all(many), 3);
        assert!(!pods.upsert(pod("one-more", &[])));
        assert!(pods.upsert(pod("u0", &["c"])), "an update of a kept pod still lands");
        assert_eq!(pods.len(), MAX_PODS);
        assert_eq!(pods.dropped.load(Relaxed), 4);
    }
}

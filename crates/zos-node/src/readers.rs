//! Who may read a deployment besides its owner: every key its signature requirement names
//! (co-owners sign its updates, so they see its state, logs and events too). Kept in memory,
//! built at start from the stored deployments, so a read never scans the database.

use std::collections::{BTreeSet, HashMap};
use zos_types::{Deployment, PublicKey};

/// A deployment, by owner and name.
pub type DeploymentRef = (PublicKey, String);

/// The co-owners of every stored deployment, both ways.
#[derive(Default)]
pub struct Readers {
    /// Each co-owner's deployments.
    by_reader: HashMap<PublicKey, BTreeSet<DeploymentRef>>,
    /// Each deployment's co-owners, so a new version can drop the old ones.
    by_deployment: HashMap<DeploymentRef, Vec<PublicKey>>,
}

impl Readers {
    /// Records `d`'s co-owners (the keys of its signature requirement other than its owner),
    /// replacing those of its earlier version.
    pub fn set(&mut self, d: &Deployment) {
        let key = (d.owner, d.name.clone());
        for old in self.by_deployment.remove(&key).unwrap_or_default() {
            if let Some(set) = self.by_reader.get_mut(&old) {
                set.remove(&key);
                if set.is_empty() {
                    self.by_reader.remove(&old);
                }
            }
        }
        let mut keys: Vec<PublicKey> = d
            .signature_requirement
            .requests
            .iter()
            .map(|r| r.key)
            .filter(|k| *k != d.owner)
            .collect();
        keys.sort_unstable();
        keys.dedup();
        for k in &keys {
            self.by_reader.entry(*k).or_default().insert(key.clone());
        }
        if !keys.is_empty() {
            self.by_deployment.insert(key, keys);
        }
    }

    /// Whether `reader` may read `owner`'s deployment `name`.
    pub fn can_read(&self, reader: &PublicKey, owner: &PublicKey, name: &str) -> bool {
        reader == owner
            || self
                .by_reader
                .get(reader)
                .is_some_and(|set| set.contains(&(*owner, name.to_string())))
    }

    /// The deployments `reader` co-owns (not those it owns).
    pub fn of(&self, reader: &PublicKey) -> Vec<DeploymentRef> {
        self.by_reader
            .get(reader)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default()
    }
}

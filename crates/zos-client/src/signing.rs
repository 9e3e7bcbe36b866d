//! The signing flow: the next version of a deployment from the one the node holds, the
//! owner's signature, co-signers' signatures, and what is still missing.

use crate::{DeployError, NodeClient};
use std::path::Path;
use zos_types::{Deployment, DeploymentFile, Keypair, PublicKey, SignatureError};

/// A deployment ready for its owner's signature, and what sending it will do.
pub struct Plan {
    /// The deployment: owner, node and versions filled in, not yet signed.
    pub deployment: Deployment,
    /// Whether it creates the deployment or updates the stored one.
    pub action: Action,
}

/// What sending a deployment does on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The node holds no deployment by this name.
    Create,
    /// The node holds one; this is its next version.
    Update {
        /// The new version.
        version: u32,
        /// How many workloads changed (or are new), so the node (re)creates them.
        changed: usize,
        /// How many workloads the deployment has.
        total: usize,
    },
}

impl Plan {
    /// Signs the deployment with `key`, its owner's.
    pub fn sign(mut self, key: &Keypair) -> Deployment {
        self.deployment.sign(key);
        self.deployment
    }
}

/// Makes the deployment `file` (read from `path`) describes, owned by the client's key, for
/// the node the client talks to, versioned after what the node holds. The file is checked
/// before the node is contacted.
pub fn plan(node: &NodeClient, file: DeploymentFile, path: &Path) -> Result<Plan, DeployError> {
    let owner = node.key().public();
    // The node is named once the file is known to be good: asking its id is the first contact.
    let mut deployment = file.into_deployment(owner, owner);
    // Versions are the node's bookkeeping: computed from what it holds, whatever the file says.
    deployment.version = 0;
    for w in &mut deployment.workloads {
        w.version = 0;
    }
    let invalid = |error| DeployError::Invalid {
        path: path.to_path_buf(),
        error,
    };
    deployment.validate().map_err(invalid)?;
    deployment.node = node.node_id()?;
    let action = match node.find_deployment(&deployment.name)? {
        Some(old) => {
            bump_versions(&mut deployment, &old.value)?;
            deployment.validate().map_err(invalid)?;
            let changed = deployment
                .workloads
                .iter()
                .filter(|w| w.version == deployment.version)
                .count();
            Action::Update {
                version: deployment.version,
                changed,
                total: deployment.workloads.len(),
            }
        }
        None => Action::Create,
    };
    Ok(Plan { deployment, action })
}

/// Gives `new` the version after `old`'s, and each workload the version in which it last
/// changed: an unchanged workload keeps its old version, which tells the node to leave it
/// running; a changed or new one gets the new version.
pub fn bump_versions(new: &mut Deployment, old: &Deployment) -> Result<(), DeployError> {
    let version = old
        .version
        .checked_add(1)
        .ok_or_else(|| DeployError::LastVersion {
            name: old.name.clone(),
            version: old.version,
        })?;
    new.version = version;
    for w in &mut new.workloads {
        let unchanged = old.workloads.iter().find(|o| {
            o.name == w.name
                && o.spec == w.spec
                && o.description == w.description
                && o.metadata == w.metadata
        });
        w.version = unchanged.map_or(version, |o| o.version);
    }
    Ok(())
}

/// Checks that `key` is one of the deployment's signers, before anything is shown or signed.
pub fn check_signer(d: &Deployment, key: &PublicKey) -> Result<(), DeployError> {
    if d.signature_requirement
        .requests
        .iter()
        .any(|r| r.key == *key)
    {
        Ok(())
    } else {
        Err(DeployError::NotASigner {
            key: *key,
            name: d.name.clone(),
        })
    }
}

/// Adds a co-signer's signature, refusing a key the deployment does not list.
pub fn cosign(d: &mut Deployment, key: &Keypair) -> Result<(), DeployError> {
    check_signer(d, &key.public())?;
    d.sign(key);
    Ok(())
}

/// What a signer puts their name to: the deployment, its node and owner, and each workload
/// with its type and version, one per line.
pub fn describe_signing(d: &Deployment) -> String {
    let mut text = format!(
        "signing {} version {} for node {}, owned by {}:",
        d.name, d.version, d.node, d.owner
    );
    for w in &d.workloads {
        text += &format!(
            "\n  {} ({}), version {}",
            w.name,
            w.spec.type_name(),
            w.version
        );
    }
    text
}

/// Why the node would not yet accept a deployment's signatures.
#[derive(Debug)]
pub struct MissingSignatures {
    /// The first rule the signatures break.
    pub reason: SignatureError,
    /// The listed keys that have not signed yet.
    pub unsigned: Vec<PublicKey>,
}

/// `None` when every signature the deployment needs is there; otherwise what is missing.
pub fn missing_signatures(d: &Deployment) -> Option<MissingSignatures> {
    let reason = d.verify_signatures().err()?;
    let unsigned = d
        .signature_requirement
        .requests
        .iter()
        .map(|r| r.key)
        .filter(|key| !d.signatures.iter().any(|s| s.key == *key))
        .collect();
    Some(MissingSignatures { reason, unsigned })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{deployment, with_states, YAML};
    use zos_types::{ResultState, SignatureRequest};

    #[test]
    fn unchanged_workloads_keep_their_version() {
        let mut old = deployment(YAML);
        old.version = 4;
        old.workloads[0].version = 2;
        old.workloads[1].version = 4;

        let mut same = deployment(YAML);
        bump_versions(&mut same, &old).unwrap();
        assert_eq!(same.version, 5);
        assert_eq!(
            same.workloads.iter().map(|w| w.version).collect::<Vec<_>>(),
            [2, 4]
        );
        same.validate().unwrap();

        // web changes its memory, db is new, disk only changes its description.
        let changed = YAML.replace("mounts:", "memory: 1G, mounts:")
            + "  - name: db\n    type: zmount\n    data: { size: 2G }\n";
        let changed = changed.replace(
            "  - name: disk\n",
            "  - name: disk\n    description: scratch\n",
        );
        let mut new = deployment(&changed);
        bump_versions(&mut new, &old).unwrap();
        let versions: Vec<(&str, u32)> = new
            .workloads
            .iter()
            .map(|w| (w.name.as_str(), w.version))
            .collect();
        assert_eq!(versions, [("disk", 5), ("web", 5), ("db", 5)]);

        // Results on the old deployment do not count as a change.
        let old = with_states(old, &[Some(ResultState::Ok), Some(ResultState::Error)]);
        let mut again = deployment(YAML);
        bump_versions(&mut again, &old).unwrap();
        assert_eq!(again.workloads[0].version, 2);

        let mut last = deployment(YAML);
        last.version = u32::MAX;
        let err = bump_versions(&mut deployment(YAML), &last).unwrap_err();
        assert!(err.to_string().contains("last version"), "{err}");
    }

    #[test]
    fn co_signers_add_their_signature_and_outsiders_are_refused() {
        let owner = Keypair::from_seed(&[7; 32]);
        let bob = Keypair::from_seed(&[8; 32]);
        let mut d = deployment(YAML);
        d.signature_requirement.requests.push(SignatureRequest {
            key: bob.public(),
            weight: 1,
            required: true,
        });
        d.sign(&owner);
        let missing = missing_signatures(&d).expect("bob has not signed");
        assert_eq!(missing.unsigned, [bob.public()]);

        let eve = Keypair::from_seed(&[9; 32]);
        let err = cosign(&mut d, &eve).unwrap_err().to_string();
        assert!(err.contains("not among the signers of app"), "{err}");
        assert_eq!(d.signatures.len(), 1);

        cosign(&mut d, &bob).unwrap();
        assert!(missing_signatures(&d).is_none());
        assert!(describe_signing(&d).contains("\n  web (zmachine), version 0"));
    }
}

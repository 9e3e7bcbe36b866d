//! Deployments: what a user signs and a node runs.

use crate::canonical;
use crate::keys::{Keypair, PublicKey, SignatureBytes};
use crate::parse::{self, ParseError};
use crate::workload::{Workload, WorkloadFile};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;

/// Prefix of the hashed challenge, so a deployment signature can never pass as a signature
/// over anything else (such as a request).
pub const DEPLOYMENT_DOMAIN: &[u8] = b"zos-deployment-v1\n";

/// A set of workloads owned by one key, as the node receives, stores and returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    /// 1 to 64 letters, digits, `_` or `-`; unique per owner.
    pub name: String,
    /// Starts at 0 and goes up by one with every update.
    pub version: u32,
    /// The key that created the deployment.
    pub owner: PublicKey,
    /// The node it is for (the node's public key): signed with the rest, so a deployment
    /// seen by one node cannot be replayed onto another.
    pub node: PublicKey,
    /// Free text for tools.
    #[serde(default)]
    pub metadata: String,
    /// Free text for humans.
    #[serde(default)]
    pub description: String,
    /// Who must sign; the owner always among the required keys. Files may leave it out
    /// ([`Deployment::fill_defaults`] then makes it the owner alone); the wire form may not.
    #[serde(default)]
    pub signature_requirement: SignatureRequirement,
    /// Signatures over [`Deployment::challenge`]; not themselves signed.
    #[serde(default)]
    pub signatures: Vec<Signature>,
    /// What to run.
    pub workloads: Vec<Workload>,
}

/// Which keys may sign and how much each signature counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureRequirement {
    /// The keys that may sign.
    #[serde(default)]
    pub requests: Vec<SignatureRequest>,
    /// The total weight of valid signatures needed (at least 1).
    #[serde(default)]
    pub weight_required: u32,
}

/// One key allowed to sign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureRequest {
    /// The key.
    pub key: PublicKey,
    /// How much its signature counts.
    pub weight: u32,
    /// Whether the deployment is invalid without this key's signature.
    #[serde(default)]
    pub required: bool,
}

impl SignatureRequirement {
    /// The owner alone signs: one required request of weight 1, weight 1 needed.
    pub fn owner_only(owner: &PublicKey) -> Self {
        SignatureRequirement {
            requests: vec![SignatureRequest {
                key: *owner,
                weight: 1,
                required: true,
            }],
            weight_required: 1,
        }
    }
}

/// A signature over a deployment's challenge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// Who signed.
    pub key: PublicKey,
    /// The Ed25519 signature of [`Deployment::challenge`].
    pub signature: SignatureBytes,
}

/// Why a deployment's signatures are not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// `weight_required` is 0, which would accept an unsigned deployment.
    #[error("signature_requirement.weight_required must be at least 1")]
    NoWeightRequired,
    /// A key is listed twice, which would count its signature twice.
    #[error("key {0} appears more than once in signature_requirement.requests")]
    DuplicateRequest(PublicKey),
    /// A signature from a key the requirement does not list.
    #[error("signature by {0}: key is not in signature_requirement.requests")]
    UnknownSigner(PublicKey),
    /// A signature that does not match the deployment.
    #[error("signature by {0} does not verify (the deployment changed after signing, or the signature is corrupt)")]
    Invalid(PublicKey),
    /// The owner is not a required signer: anyone could then sign a deployment in the
    /// owner's name.
    #[error("the owner {0} must be listed in signature_requirement.requests with required: true")]
    OwnerNotRequired(PublicKey),
    /// A required key did not sign.
    #[error("missing required signature by {0}")]
    MissingRequired(PublicKey),
    /// The signers' weights do not add up.
    #[error("signatures carry weight {have}; {need} required")]
    NotEnoughWeight {
        /// Sum of the weights of valid distinct signers.
        have: u64,
        /// `weight_required`.
        need: u32,
    },
}

impl Deployment {
    /// Parses a deployment in wire form from YAML; errors name the field path.
    pub fn from_yaml_str(text: &str) -> Result<Self, ParseError> {
        parse::yaml(text)
    }

    /// Parses a deployment in wire form from JSON; errors name the field path.
    pub fn from_json_str(text: &str) -> Result<Self, ParseError> {
        parse::json(text)
    }

    /// Makes an empty signature requirement mean "the owner alone signs".
    pub fn fill_defaults(&mut self) {
        if self.signature_requirement.requests.is_empty() {
            self.signature_requirement = SignatureRequirement::owner_only(&self.owner);
        }
    }

    /// The bytes a deployment's signatures cover: the deployment without `signatures` and
    /// without every workload's `result` (both keys absent, not empty), as canonical JSON
    /// (RFC 8785: members sorted, no whitespace). Results and signatures change as the node
    /// and co-signers work, so they must not change what was signed.
    pub fn signing_bytes(&self) -> Vec<u8> {
        // Cannot fail: every map key in these types is a string. A fallback value instead of
        // a panic would give every deployment the same challenge.
        let mut value = serde_json::to_value(self).expect("deployments always convert to JSON");
        if let Some(map) = value.as_object_mut() {
            map.remove("signatures");
            if let Some(workloads) = map.get_mut("workloads").and_then(|w| w.as_array_mut()) {
                for workload in workloads.iter_mut().filter_map(|w| w.as_object_mut()) {
                    workload.remove("result");
                }
            }
        }
        canonical::to_vec(&value)
    }

    /// SHA-256 of [`DEPLOYMENT_DOMAIN`] followed by [`Deployment::signing_bytes`]: the 32
    /// bytes every signer signs with Ed25519.
    pub fn challenge(&self) -> [u8; 32] {
        let mut hash = Sha256::new();
        hash.update(DEPLOYMENT_DOMAIN);
        hash.update(self.signing_bytes());
        hash.finalize().into()
    }

    /// Adds `key`'s signature, replacing an earlier one by the same key.
    pub fn sign(&mut self, key: &Keypair) {
        let signature = key.sign(&self.challenge());
        let public = key.public();
        self.signatures.retain(|s| s.key != public);
        self.signatures.push(Signature {
            key: public,
            signature,
        });
    }

    /// Checks the signatures against the requirement: each must verify and come from a
    /// listed key, every `required` key must have signed, and the distinct signers' weights
    /// must reach `weight_required`. Repeated signatures by one key count once.
    pub fn verify_signatures(&self) -> Result<(), SignatureError> {
        let owner_required = self
            .signature_requirement
            .requests
            .iter()
            .any(|r| r.key == self.owner && r.required);
        if !owner_required {
            return Err(SignatureError::OwnerNotRequired(self.owner));
        }
        self.check_signatures(&self.signature_requirement, true)
    }

    /// For an update: the new version's signatures must also satisfy the requirement of
    /// the version it replaces, or whoever can sign alone could write themselves a new
    /// requirement and take the deployment over. Signers the old requirement does not list
    /// count for nothing here (rather than failing), so a co-owner can be added.
    /// Call it after [`Deployment::verify_signatures`].
    pub fn verify_update_from(&self, old: &SignatureRequirement) -> Result<(), SignatureError> {
        self.check_signatures(old, false)
    }

    fn check_signatures(
        &self,
        req: &SignatureRequirement,
        strict: bool,
    ) -> Result<(), SignatureError> {
        if req.weight_required == 0 {
            return Err(SignatureError::NoWeightRequired);
        }
        let mut listed = BTreeSet::new();
        if let Some(dup) = req.requests.iter().find(|r| !listed.insert(r.key)) {
            return Err(SignatureError::DuplicateRequest(dup.key));
        }
        let challenge = self.challenge();
        let mut signers = BTreeSet::new();
        for sig in &self.signatures {
            if !listed.contains(&sig.key) {
                if strict {
                    return Err(SignatureError::UnknownSigner(sig.key));
                }
                continue;
            }
            sig.key
                .verify(&challenge, &sig.signature)
                .map_err(|_| SignatureError::Invalid(sig.key))?;
            signers.insert(sig.key);
        }
        if let Some(missing) = req
            .requests
            .iter()
            .find(|r| r.required && !signers.contains(&r.key))
        {
            return Err(SignatureError::MissingRequired(missing.key));
        }
        let have: u64 = req
            .requests
            .iter()
            .filter(|r| signers.contains(&r.key))
            .map(|r| u64::from(r.weight))
            .sum();
        if have < u64::from(req.weight_required) {
            return Err(SignatureError::NotEnoughWeight {
                have,
                need: req.weight_required,
            });
        }
        Ok(())
    }
}

/// A deployment as a user writes it: no owner, node, signatures or results; `version` and
/// `signature_requirement` optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentFile {
    /// See [`Deployment::name`].
    pub name: String,
    /// Free text for humans.
    #[serde(default)]
    pub description: String,
    /// Free text for tools.
    #[serde(default)]
    pub metadata: String,
    /// Defaults to 0, a new deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Defaults to the owner alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_requirement: Option<SignatureRequirement>,
    /// What to run.
    pub workloads: Vec<WorkloadFile>,
}

impl DeploymentFile {
    /// Parses a user's YAML file; errors name the field path.
    pub fn from_yaml_str(text: &str) -> Result<Self, ParseError> {
        parse::yaml(text)
    }

    /// Parses a user's JSON file; errors name the field path.
    pub fn from_json_str(text: &str) -> Result<Self, ParseError> {
        parse::json(text)
    }

    /// The unsigned deployment owned by `owner`, with defaults filled in: version 0,
    /// owner-only signing, and workload versions equal to the deployment's.
    pub fn into_deployment(self, owner: PublicKey, node: PublicKey) -> Deployment {
        let version = self.version.unwrap_or(0);
        let workloads = self
            .workloads
            .into_iter()
            .map(|w| Workload {
                name: w.name,
                version: w.version.unwrap_or(version),
                description: w.description,
                metadata: w.metadata,
                spec: w.spec,
                result: None,
            })
            .collect();
        let mut deployment = Deployment {
            name: self.name,
            version,
            owner,
            node,
            metadata: self.metadata,
            description: self.description,
            signature_requirement: self.signature_requirement.unwrap_or_default(),
            signatures: Vec::new(),
            workloads,
        };
        deployment.fill_defaults();
        deployment
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KAT_YAML: &str = "
name: kat
workloads:
  - name: disk
    type: zmount
    data: { size: 1G }
  - name: vm
    type: zmachine
    data:
      flist: https://hub.example/alpine.fl
      env: { Z: last, A: first }
      mounts: [{ name: disk, mountpoint: /data }]
";

    /// The node of the known answers: seed [3; 32].
    fn kat_node() -> PublicKey {
        Keypair::from_seed(&[3; 32]).public()
    }

    fn kat() -> (Keypair, Deployment) {
        let key = Keypair::from_seed(&[1; 32]);
        let d = DeploymentFile::from_yaml_str(KAT_YAML)
            .unwrap()
            .into_deployment(key.public(), kat_node());
        (key, d)
    }

    // The exact signed bytes of KAT_YAML owned by seed [1; 32], for the node of seed [3; 32]. Note: keys sorted, sizes as
    // integers, defaults written out, no `signatures`.
    const KAT_BYTES: &str = r#"{"description":"","metadata":"","name":"kat","node":"ed4928c628d1c2c6eae90338905995612959273a5c63f93636c14614ac8737d1","owner":"8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c","signature_requirement":{"requests":[{"key":"8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c","required":true,"weight":1}],"weight_required":1},"version":0,"workloads":[{"data":{"size":1073741824},"description":"","metadata":"","name":"disk","type":"zmount","version":0},{"data":{"cmd":[],"cpu":1,"entrypoint":[],"env":{"A":"first","Z":"last"},"flist":"https://hub.example/alpine.fl","memory":268435456,"mounts":[{"mountpoint":"/data","name":"disk"}],"root_size":1073741824},"description":"","metadata":"","name":"vm","type":"zmachine","version":0}]}"#;
    // Also checked outside Rust: `printf 'zos-deployment-v1\n%s' "$KAT_BYTES" | sha256sum`,
    // and the signature with Python's `cryptography` Ed25519 from the same seed.
    const KAT_CHALLENGE: &str = "f41dc210667f52b1d601640f943c8e6b5b751b3d0aeae486d42da433d5ef94f8";
    const KAT_SIGNATURE: &str = "1a3b63d8b441a813da252a3352327671e3824e91ce502ba6cbb245b293361a9b1088f9326fc8511dd88d4a053151e05806f455c14ac1f5ec6a7e8ddd85eba407";

    #[test]
    fn known_answer() {
        let (key, mut d) = kat();
        assert_eq!(
            key.public().to_string(),
            "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c"
        );
        assert_eq!(String::from_utf8(d.signing_bytes()).unwrap(), KAT_BYTES);
        assert_eq!(hex::encode(d.challenge()), KAT_CHALLENGE);
        d.sign(&key);
        assert_eq!(d.signatures[0].signature.to_string(), KAT_SIGNATURE);
        d.verify_signatures().unwrap();
    }

    #[test]
    fn challenge_is_sha256_of_domain_and_literal_bytes() {
        let independent =
            Sha256::digest([b"zos-deployment-v1\n".as_slice(), KAT_BYTES.as_bytes()].concat());
        assert_eq!(hex::encode(independent), KAT_CHALLENGE);
    }

    #[test]
    fn wire_json_round_trips_with_same_challenge() {
        let (key, mut d) = kat();
        d.sign(&key);
        let back = Deployment::from_json_str(&serde_json::to_string(&d).unwrap()).unwrap();
        assert_eq!(back, d);
        // Canonical order puts `data` before `type`; the workload parser must cope.
        let canonical = Deployment::from_json_str(KAT_BYTES).unwrap();
        assert_eq!(hex::encode(canonical.challenge()), KAT_CHALLENGE);
        let yaml = Deployment::from_yaml_str(&serde_yaml_ng::to_string(&d).unwrap()).unwrap();
        assert_eq!(yaml, d);
    }

    #[test]
    fn results_and_signatures_do_not_change_the_challenge() {
        let (key, mut d) = kat();
        let before = d.challenge();
        d.sign(&key);
        d.workloads[0].result = Some(crate::WorkloadResult {
            state: crate::ResultState::Ok,
            message: "running".into(),
            data: serde_json::json!({"ip": "10.0.0.2"}),
            created: 1,
        });
        assert_eq!(d.challenge(), before);
        d.verify_signatures().unwrap();
    }

    #[test]
    fn an_update_must_satisfy_the_replaced_requirement() {
        let (owner, old) = kat();
        let co = Keypair::from_seed(&[2; 32]);
        let request = |k: &Keypair, required| SignatureRequest {
            key: k.public(),
            weight: 1,
            required,
        };
        let mut shared = old.clone();
        shared.signature_requirement = SignatureRequirement {
            requests: vec![request(&owner, true), request(&co, true)],
            weight_required: 2,
        };
        // A deployment in the owner's name that does not need the owner: refused outright.
        let mut squat = shared.clone();
        squat.signature_requirement = SignatureRequirement {
            requests: vec![request(&co, true)],
            weight_required: 1,
        };
        squat.sign(&co);
        assert_eq!(
            squat.verify_signatures(),
            Err(SignatureError::OwnerNotRequired(owner.public()))
        );
        // The owner alone drops the co-owner: valid on its own, refused as an update of the
        // shared version.
        let mut takeover = shared.clone();
        takeover.version = 1;
        takeover.signature_requirement = SignatureRequirement::owner_only(&owner.public());
        takeover.sign(&owner);
        assert_eq!(takeover.verify_signatures(), Ok(()));
        assert_eq!(
            takeover.verify_update_from(&shared.signature_requirement),
            Err(SignatureError::MissingRequired(co.public()))
        );
        // The owner adding a co-owner: the new signer is simply not counted by the old rule.
        let mut adding = old.clone();
        adding.version = 1;
        adding.signature_requirement = shared.signature_requirement.clone();
        adding.sign(&owner);
        adding.sign(&co);
        assert_eq!(
            adding.verify_update_from(&old.signature_requirement),
            Ok(())
        );
    }

    #[test]
    fn signature_rules() {
        let (owner, mut d) = kat();
        let (a, b) = (Keypair::from_seed(&[2; 32]), Keypair::from_seed(&[3; 32]));
        let request = |k: &Keypair, weight, required| SignatureRequest {
            key: k.public(),
            weight,
            required,
        };
        d.signature_requirement = SignatureRequirement {
            requests: vec![
                request(&owner, 1, true),
                request(&a, 2, false),
                request(&b, 2, false),
            ],
            weight_required: 3,
        };
        let signed = |keys: &[&Keypair]| {
            let mut d = d.clone();
            keys.iter().for_each(|k| d.sign(k));
            d.verify_signatures()
        };
        assert_eq!(signed(&[&owner, &a]), Ok(()));
        assert_eq!(
            signed(&[&owner]),
            Err(SignatureError::NotEnoughWeight { have: 1, need: 3 })
        );
        assert_eq!(
            signed(&[&a, &b]),
            Err(SignatureError::MissingRequired(owner.public()))
        );
        let stranger = Keypair::from_seed(&[9; 32]);
        assert_eq!(
            signed(&[&owner, &a, &stranger]),
            Err(SignatureError::UnknownSigner(stranger.public()))
        );

        // The same signature twice counts once.
        let mut dup = d.clone();
        dup.sign(&owner);
        dup.signatures.push(dup.signatures[0].clone());
        assert_eq!(
            dup.verify_signatures(),
            Err(SignatureError::NotEnoughWeight { have: 1, need: 3 })
        );

        // Changing workload data after signing breaks the signature.
        let mut tampered = d.clone();
        tampered.sign(&owner);
        tampered.sign(&a);
        if let crate::WorkloadSpec::Zmount(z) = &mut tampered.workloads[0].spec {
            z.size = crate::ByteSize(2 << 30);
        }
        assert_eq!(
            tampered.verify_signatures(),
            Err(SignatureError::Invalid(owner.public()))
        );

        let mut zero = d.clone();
        zero.signature_requirement.weight_required = 0;
        zero.sign(&owner);
        assert_eq!(
            zero.verify_signatures(),
            Err(SignatureError::NoWeightRequired)
        );
    }
}

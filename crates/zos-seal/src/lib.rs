//! Values sealed to one node's identity, in a format a user can make without zos: age,
//! ASCII-armored, with the node's ed25519 key as an `ssh-ed25519` recipient (`age -a -R`
//! with the line [`recipient`] prints). Only the node holding that key opens them.

use age::armor::{ArmoredReader, ArmoredWriter, Format};
use ssh_key::private::Ed25519Keypair;
use ssh_key::public::Ed25519PublicKey;
use ssh_key::LineEnding;
use std::io::{Read, Write};
use std::str::FromStr;
use zos_types::{Keypair, PublicKey};

/// How every sealed value starts (age's ASCII armor).
pub use zos_types::SEALED_BEGIN as ARMOR_BEGIN;

/// Largest value opened: secrets are environment values and credentials, not files.
const MAX_OPENED: u64 = 64 * 1024;

/// Why a value could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// Not an age file in ASCII armor.
    #[error("not a sealed value: expected age's ASCII armor ({ARMOR_BEGIN} …), as `zos seal` or `age -a` print it ({0})")]
    NotSealed(String),
    /// Sealed, but not for this node.
    #[error("sealed for another key, not this node's: seal it with `zos seal --node-id {0}`")]
    OtherNode(PublicKey),
    /// Opened, but too large.
    #[error("the sealed value is larger than {MAX_OPENED} bytes")]
    TooLarge,
    /// age failed otherwise.
    #[error("{0}")]
    Age(String),
}

/// The age recipient of `node`: its key as an OpenSSH `ssh-ed25519` public key line.
pub fn recipient(node: &PublicKey) -> String {
    let key = ssh_key::PublicKey::from(Ed25519PublicKey(node.0));
    // Only fails for key types needing an algorithm we do not use.
    key.to_openssh()
        .map(|line| format!("{line} zos-node"))
        .unwrap_or_default()
}

/// Whether `text` looks like a sealed value (age's ASCII armor).
pub fn is_sealed(text: &str) -> bool {
    text.trim_start().starts_with(ARMOR_BEGIN)
}

/// Seals `plaintext` to `node`.
pub fn seal(node: &PublicKey, plaintext: &[u8]) -> Result<String, SealError> {
    let age_err = |e: &dyn std::fmt::Display| SealError::Age(e.to_string());
    let to = age::ssh::Recipient::from_str(&recipient(node))
        .map_err(|e| SealError::Age(format!("{e:?}")))?;
    let encryptor = age::Encryptor::with_recipients(std::iter::once(&to as &dyn age::Recipient))
        .map_err(|e| age_err(&e))?;
    let mut out = Vec::new();
    let armor =
        ArmoredWriter::wrap_output(&mut out, Format::AsciiArmor).map_err(|e| age_err(&e))?;
    let mut writer = encryptor.wrap_output(armor).map_err(|e| age_err(&e))?;
    writer.write_all(plaintext).map_err(|e| age_err(&e))?;
    writer
        .finish()
        .and_then(|armor| armor.finish())
        .map_err(|e| age_err(&e))?;
    String::from_utf8(out).map_err(|e| age_err(&e))
}

/// Opens values sealed to one node: that node's key as an age identity.
pub struct Opener {
    node: PublicKey,
    identity: age::ssh::Identity,
}

impl Opener {
    /// The opener of the node whose identity is `key`.
    pub fn new(key: &Keypair) -> Result<Opener, SealError> {
        let private = ssh_key::PrivateKey::from(Ed25519Keypair::from_seed(&key.seed()));
        let pem = private
            .to_openssh(LineEnding::LF)
            .map_err(|e| SealError::Age(e.to_string()))?;
        let identity = age::ssh::Identity::from_buffer(pem.as_bytes(), None)
            .map_err(|e| SealError::Age(e.to_string()))?;
        Ok(Opener {
            node: key.public(),
            identity,
        })
    }

    /// The plaintext of `sealed`, if it was sealed to this node.
    pub fn open(&self, sealed: &str) -> Result<Vec<u8>, SealError> {
        if !is_sealed(sealed) {
            return Err(SealError::NotSealed("no armor header".into()));
        }
        let decryptor = age::Decryptor::new(ArmoredReader::new(sealed.trim().as_bytes()))
            .map_err(|e| SealError::NotSealed(e.to_string()))?;
        let mut reader = decryptor
            .decrypt(std::iter::once(&self.identity as &dyn age::Identity))
            .map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => SealError::OtherNode(self.node),
                e => SealError::Age(e.to_string()),
            })?;
        let mut out = Vec::new();
        reader
            .by_ref()
            .take(MAX_OPENED + 1)
            .read_to_end(&mut out)
            .map_err(|e| SealError::Age(e.to_string()))?;
        if out.len() as u64 > MAX_OPENED {
            return Err(SealError::TooLarge);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn sealed_to_a_node_opens_there_only() {
        let node = Keypair::generate();
        let sealed = seal(&node.public(), b"s3cret value").unwrap();
        assert!(is_sealed(&sealed), "{sealed}");
        assert!(!sealed.contains("s3cret"));
        assert_eq!(
            Opener::new(&node).unwrap().open(&sealed).unwrap(),
            b"s3cret value"
        );
        let other = Keypair::generate();
        let err = Opener::new(&other).unwrap().open(&sealed).unwrap_err();
        assert!(
            matches!(err, SealError::OtherNode(k) if k == other.public()),
            "{err}"
        );
        let err = Opener::new(&node)
            .unwrap()
            .open("s3cret value")
            .unwrap_err();
        assert!(matches!(err, SealError::NotSealed(_)), "{err}");
    }

    /// Runs `age ARGS` with `input` on stdin; its stdout.
    fn age(args: &[&str], input: &[u8]) -> Vec<u8> {
        let mut child = Command::new("age")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "age {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    #[test]
    fn debians_age_seals_what_the_node_opens_and_opens_what_zos_seals() {
        if !zos_testkit::have("age") {
            return;
        }
        let node = Keypair::generate();
        let tmp = tempfile::tempdir().unwrap();
        // A user with only age and the node's recipient line.
        let recipients = tmp.path().join("node.pub");
        std::fs::write(&recipients, recipient(&node.public())).unwrap();
        let sealed = age(
            &["-a", "-R", recipients.to_str().unwrap()],
            b"from plain age",
        );
        let sealed = String::from_utf8(sealed).unwrap();
        assert_eq!(
            Opener::new(&node).unwrap().open(&sealed).unwrap(),
            b"from plain age"
        );
        // And the other way: age with the node's key as an OpenSSH key opens `seal`'s output.
        let key = tmp.path().join("node.key");
        let pem = ssh_key::PrivateKey::from(Ed25519Keypair::from_seed(&node.seed()))
            .to_openssh(LineEnding::LF)
            .unwrap();
        std::fs::write(&key, pem.as_bytes()).unwrap();
        let sealed = seal(&node.public(), b"from zos").unwrap();
        let opened = age(&["-d", "-i", key.to_str().unwrap()], sealed.as_bytes());
        assert_eq!(opened, b"from zos");
    }
}

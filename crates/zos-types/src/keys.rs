//! Ed25519 keys and signatures, their hex wire form, and key files on disk.

use ed25519_dalek::pkcs8::{spki::der::pem::LineEnding, DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Errors from parsing keys and signatures, verifying, and key files.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A hex field had the wrong length or characters: what, expected length, text given.
    #[error("invalid {0}: expected {1} hex characters, got {2:?}")]
    Hex(&'static str, usize, String),
    /// 32 bytes that are not an Ed25519 public key.
    #[error("invalid public key {0}: not a point on the curve")]
    NotOnCurve(String),
    /// The signature does not match the message and key.
    #[error("signature by {0} does not verify")]
    BadSignature(PublicKey),
    /// Not a PKCS#8 PEM Ed25519 private key.
    #[error("not a PKCS#8 PEM Ed25519 private key: {0}")]
    Pem(String),
    /// A key file exists already; we never overwrite a key.
    #[error("key file {0} already exists; refusing to overwrite it")]
    Exists(PathBuf),
    /// Reading, writing or decoding a key file failed.
    #[error("key file {0}: {1}")]
    File(PathBuf, Box<dyn std::error::Error + Send + Sync>),
    /// A key file others can read (path, mode): the caller decides whether to warn or refuse.
    #[error("key file {0} is readable by group or others (mode {1:o}); run chmod 600")]
    TooOpen(PathBuf, u32),
}

fn parse_hex<const N: usize>(what: &'static str, s: &str) -> Result<[u8; N], KeyError> {
    let mut out = [0u8; N];
    let shown = || s.chars().take(2 * N + 8).collect();
    hex::decode_to_slice(s, &mut out).map_err(|_| KeyError::Hex(what, 2 * N, shown()))?;
    Ok(out)
}

/// Hex text form and serde for a fixed-size byte newtype.
macro_rules! hex_bytes {
    ($name:ident) => {
        impl TryFrom<String> for $name {
            type Error = KeyError;
            fn try_from(s: String) -> Result<Self, KeyError> {
                s.parse()
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

/// An Ed25519 public key; on the wire, 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct PublicKey(pub [u8; 32]);
hex_bytes!(PublicKey);

impl PublicKey {
    /// Checks `signature` over `message` with strict rules (no small-order keys, canonical
    /// encodings), so one message has exactly one valid signature per key.
    pub fn verify(&self, message: &[u8], signature: &SignatureBytes) -> Result<(), KeyError> {
        let key = VerifyingKey::from_bytes(&self.0)
            .map_err(|_| KeyError::NotOnCurve(self.to_string()))?;
        let sig = ed25519_dalek::Signature::from_bytes(&signature.0);
        key.verify_strict(message, &sig)
            .map_err(|_| KeyError::BadSignature(*self))
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    /// Also checks the bytes are a curve point, so a bad key fails where it is written.
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let bytes = parse_hex::<32>("public key", s)?;
        VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::NotOnCurve(s.to_string()))?;
        Ok(PublicKey(bytes))
    }
}

/// A 64-byte Ed25519 signature; on the wire, 128 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct SignatureBytes(pub [u8; 64]);
hex_bytes!(SignatureBytes);

impl FromStr for SignatureBytes {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        parse_hex::<64>("signature", s).map(SignatureBytes)
    }
}

/// An Ed25519 signing key (its public half is derived). Debug shows only the public key.
#[derive(Clone)]
pub struct Keypair(SigningKey);

impl Keypair {
    /// A new random key from the operating system's generator.
    pub fn generate() -> Self {
        Keypair(SigningKey::generate(&mut rand_core::OsRng))
    }

    /// The key with this 32-byte secret seed (tests and known-answer vectors).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Keypair(SigningKey::from_bytes(seed))
    }

    /// 32 secret bytes for `context`, derived from this key's secret: SHA-256 of a domain
    /// tag, the secret and the context. Whoever lacks the secret cannot compute them, and
    /// they reveal nothing of it (a node derives its networks' WireGuard keys so).
    pub fn derive(&self, context: &[u8]) -> [u8; 32] {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(b"zos-derived-key-v1\n");
        h.update(self.0.to_bytes());
        h.update(context);
        h.finalize().into()
    }

    /// The secret seed, to use this same key in another format (a node's age identity is
    /// its ed25519 key as an OpenSSH key). As secret as the key itself.
    pub fn seed(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    /// Signs `message` (deterministic: the same message gives the same signature).
    pub fn sign(&self, message: &[u8]) -> SignatureBytes {
        use ed25519_dalek::Signer;
        SignatureBytes(self.0.sign(message).to_bytes())
    }

    /// The key as a PKCS#8 PEM document (`-----BEGIN PRIVATE KEY-----`), as OpenSSL writes it.
    pub fn to_pkcs8_pem(&self) -> Result<String, KeyError> {
        let pem = self
            .0
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| KeyError::Pem(e.to_string()))?;
        Ok(pem.to_string())
    }

    /// Reads a PKCS#8 PEM Ed25519 private key.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, KeyError> {
        SigningKey::from_pkcs8_pem(pem)
            .map(Keypair)
            .map_err(|e| KeyError::Pem(e.to_string()))
    }
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keypair(public {})", self.public())
    }
}

fn file_error(path: &Path, e: impl std::error::Error + Send + Sync + 'static) -> KeyError {
    KeyError::File(path.to_path_buf(), Box::new(e))
}

/// Generates a key and writes it to a new file `path` (mode 0600), creating missing parent
/// directories with mode 0700. Refuses to replace an existing file: losing a key loses
/// control of every deployment it owns.
pub fn write_new_key_file(path: &Path) -> Result<Keypair, KeyError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        let mut dirs = DirBuilder::new();
        dirs.recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| file_error(path, e))?;
    }
    let key = Keypair::generate();
    let pem = key.to_pkcs8_pem()?;
    // create_new is O_CREAT|O_EXCL: no race with another writer, and symlinks are not followed.
    let mut file = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(KeyError::Exists(path.into()))
        }
        other => other.map_err(|e| file_error(path, e))?,
    };
    if let Err(e) = file.write_all(pem.as_bytes()).and_then(|_| file.sync_all()) {
        // A half-written key is worse than none: the next run would refuse to overwrite it.
        let _ = fs::remove_file(path);
        return Err(file_error(path, e));
    }
    Ok(key)
}

/// Reads the PKCS#8 PEM key at `path`; errors name the path.
pub fn read_key_file(path: &Path) -> Result<Keypair, KeyError> {
    let pem = fs::read_to_string(path).map_err(|e| file_error(path, e))?;
    Keypair::from_pkcs8_pem(&pem).map_err(|e| file_error(path, e))
}

/// Returns [`KeyError::TooOpen`] when group or others may read the key file at `path`.
pub fn check_key_file_mode(path: &Path) -> Result<(), KeyError> {
    let mode = fs::metadata(path)
        .map_err(|e| file_error(path, e))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::TooOpen(path.into(), mode));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new/dir/key.pem");
        let key = write_new_key_file(&path).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        check_key_file_mode(&path).unwrap();
        assert_eq!(read_key_file(&path).unwrap().public(), key.public());
        let err = write_new_key_file(&path).unwrap_err();
        assert!(matches!(err, KeyError::Exists(_)), "{err}");
        assert_eq!(
            read_key_file(&path).unwrap().public(),
            key.public(),
            "key was replaced"
        );

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            check_key_file_mode(&path),
            Err(KeyError::TooOpen(_, 0o644))
        ));
        fs::write(&path, "not a key").unwrap();
        let err = read_key_file(&path).unwrap_err().to_string();
        assert!(err.contains("key.pem") && err.contains("PKCS#8"), "{err}");
    }

    #[test]
    fn pem_and_hex_round_trip() {
        let key = Keypair::generate();
        let pem = key.to_pkcs8_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let back = Keypair::from_pkcs8_pem(&pem).unwrap();
        assert_eq!(back.public(), key.public());
        let sig = back.sign(b"msg");
        key.public().verify(b"msg", &sig).unwrap();
        assert!(key.public().verify(b"other", &sig).is_err());
        assert_eq!(
            key.public().to_string().parse::<PublicKey>().unwrap(),
            key.public()
        );
        assert_eq!(sig.to_string().parse::<SignatureBytes>().unwrap(), sig);
        let err = "abc".parse::<PublicKey>().unwrap_err().to_string();
        assert_eq!(
            err,
            r#"invalid public key: expected 64 hex characters, got "abc""#
        );
    }
}

//! What can go wrong reading and translating manifests, each naming where: the file and
//! document, the object, and the field path inside it.

use std::fmt;
use std::path::PathBuf;

/// Where an object came from: a file (or `-` for a reader) and its YAML document, counted
/// from 0, and for an item of a `kind: List` its index there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The file's path, or the name given for a reader (`-` for stdin).
    pub file: String,
    /// The document's index in the file, from 0.
    pub document: usize,
    /// The index in `items` when the object came from a `kind: List`.
    pub item: Option<usize>,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, document {}", self.file, self.document)?;
        if let Some(item) = self.item {
            write!(f, ", items[{item}]")?;
        }
        Ok(())
    }
}

/// A field that zos does not honour (yet), named by its path in the object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Unsupported {
    /// The object, as `Kind name (file, document N)`.
    pub object: String,
    /// The field's path, e.g. `spec.template.spec.affinity`.
    pub path: String,
    /// Why it is not honoured.
    pub reason: String,
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.object, self.path, self.reason)
    }
}

/// Why manifests could not be read or translated.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A file or directory could not be read.
    #[error("reading {}: {source}", .path.display())]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// A document is not YAML (or JSON), or not an object with `apiVersion` and `kind`.
    #[error("{at}: {message}")]
    Syntax {
        /// Where.
        at: Source,
        /// What is wrong.
        message: String,
    },
    /// A kind this library does not translate.
    #[error(
        "{at}: kind {kind:?} (apiVersion {api_version:?}) is not supported: give Pod, \
         Deployment, StatefulSet, DaemonSet, Job, Service, ConfigMap, Secret, \
         PersistentVolumeClaim or List"
    )]
    UnknownKind {
        /// Where.
        at: Source,
        /// Its `apiVersion`.
        api_version: String,
        /// Its `kind`.
        kind: String,
    },
    /// A field holds something Kubernetes itself would refuse, or that names an object the
    /// application does not hold.
    #[error("{object}: {path}: {message}")]
    Invalid {
        /// The object, as `Kind name (file, document N)`.
        object: String,
        /// The field's path.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// Fields zos does not honour; `Options::ignore_unsupported` lists them as warnings
    /// instead.
    #[error("{} field(s) not supported (ignore_unsupported lists them as warnings instead):\n{}",
        .0.len(), .0.iter().map(|u| format!("  {u}")).collect::<Vec<_>>().join("\n"))]
    Unsupported(Vec<Unsupported>),
    /// A Secret's value could not be sealed to the node.
    #[error("sealing {object}'s value {key:?} to the node: {message}")]
    Seal {
        /// The Secret.
        object: String,
        /// The key whose value was sealed.
        key: String,
        /// What zos-seal said.
        message: String,
    },
    /// The translation breaks a rule of deployments (too long a name, a workload name used
    /// twice, a bad size); each problem as the node would state it.
    #[error("the translated deployment is not valid:\n  {}", .0.join("\n  "))]
    Deployment(Vec<String>),
}

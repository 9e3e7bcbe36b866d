//! The one error type of this crate. Every variant names the input it is about (the `.fl`
//! file, the path inside the flist, the block id, the store) so a message can be acted on.

use std::path::PathBuf;

/// Everything that can go wrong reading, writing or moving an flist.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file is not an flist at all: not SQLite, truncated, or missing the rfs tables.
    #[error("{}: not a usable flist: {reason}", path.display())]
    NotAnFlist {
        /// The `.fl` file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A query on the metadata file failed.
    #[error("{}: metadata error: {source}", path.display())]
    Metadata {
        /// The `.fl` file.
        path: PathBuf,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// A local file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The local path involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The content of a file in the flist could not be produced.
    #[error("{file}: block {index} ({id}): {reason}")]
    Block {
        /// Path of the file inside the flist.
        file: String,
        /// Position of the block in the file, from 0.
        index: usize,
        /// Block id in hex.
        id: String,
        /// Why every store failed, one clause per store.
        reason: String,
    },
    /// The flist describes something that must not be written (an escape from the target).
    #[error("refusing entry {entry:?}: {reason}")]
    UnsafeEntry {
        /// Path of the entry inside the flist, as far as it could be built.
        entry: String,
        /// Why it is refused.
        reason: String,
    },
    /// A store URL or store operation failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The caller asked for something that cannot be done (an absent path, a bad argument).
    #[error("{0}")]
    Invalid(String),
    /// A registry refused to serve an image: it wants credentials, or refused those given.
    #[error("{image}: {}", unauthorized_phrase(user.as_deref(), what, detail))]
    Unauthorized {
        /// The image as given.
        image: String,
        /// What was being fetched (`manifest`, `layer sha256:…`).
        what: String,
        /// The user whose credentials were refused; `None` when none were given.
        user: Option<String>,
        /// What the registry said (never the password).
        detail: String,
    },
}

/// How [`Error::Unauthorized`] reads after the image.
fn unauthorized_phrase(user: Option<&str>, what: &str, detail: &str) -> String {
    match user {
        None => format!(
            "the registry wants credentials for the {what}: the image is private (or its name \
             is wrong) ({detail})"
        ),
        Some(user) => format!(
            "the registry refused the credentials of user {user:?} for the {what}: the \
             username or password is wrong, or that user may not pull this image ({detail})"
        ),
    }
}

impl Error {
    /// Block `index` of `file` could not be read or stored, for `reason`.
    pub(crate) fn block(
        file: impl std::fmt::Display,
        index: usize,
        block: &crate::block::BlockRef,
        reason: impl std::fmt::Display,
    ) -> Error {
        Error::Block {
            file: file.to_string(),
            index,
            id: block.id_hex(),
            reason: reason.to_string(),
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches a local path to an I/O error.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io {
            path: path.into(),
            source,
        })
    }
}

impl<T> IoContext<T> for nix::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|errno| Error::Io {
            path: path.into(),
            source: errno.into(),
        })
    }
}

//! Flists: a container image format of a small SQLite metadata file plus content-addressed,
//! encrypted blocks kept in one or more stores. Reads and writes the `.fl` format of
//! ThreeFold's `rfs`, and adds what it loses (nanosecond times, xattrs, hardlinks) in extra
//! tables an older reader ignores.

pub mod block;
pub mod cache;
pub mod error;
pub mod fetch;
pub mod meta;
pub mod mount;
pub mod oci;
pub mod pack;
mod pool;
pub mod read;
pub mod store;
pub mod unpack;

pub use error::{Error, Result};
pub use meta::{Flist, FlistWriter, Inode, Kind, Route};
pub use pack::{pack, NoProgress, PackOptions, PackReport, Progress};
pub use read::{read_file, verify, Problem, VerifyReport};
pub use store::{Router, StoreSpec};
pub use unpack::{unpack, UnpackOptions, UnpackReport};

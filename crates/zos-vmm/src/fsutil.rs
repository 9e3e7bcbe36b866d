//! Small file helpers shared by the modules.

use crate::{Error, Result};
use std::ffi::OsString;
use std::io::{self, Write};
use std::path::Path;

/// A temp file in `path`'s directory (so the final rename stays on one filesystem), named
/// `.<name>.<random>.tmp` after `path` so one left by a crash is recognisable (the only way
/// one survives: a NamedTempFile removes itself on drop).
pub(crate) fn temp_next_to(path: &Path) -> io::Result<tempfile::NamedTempFile> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut prefix = OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .tempfile_in(dir)
}

/// The names in `dir`, sorted: what a test expects to be left after temp-file work.
#[cfg(test)]
pub(crate) fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Writes `bytes` to `path` through a temp file in the same dir, so readers never see half.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| Error::io(format!("creating a file in {}", dir.display()), e))?;
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_data())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    tmp.persist(path)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e.error))?;
    Ok(())
}

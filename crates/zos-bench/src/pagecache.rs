//! Dropping files from the page cache, so a "cold" read really reads the disk.

use anyhow::{Context, Result};
use rustix::fs::{fadvise, Advice};
use std::path::Path;

/// Writes back and then drops from the page cache every regular file at or under `path`;
/// returns how many files. Works without root: POSIX_FADV_DONTNEED evicts a file's clean
/// pages for any reader, and the fsync before it makes every page clean (dirty pages would
/// stay). Unlike `/proc/sys/vm/drop_caches` it leaves the rest of the host's cache alone.
pub fn drop_from_page_cache(path: &Path) -> Result<u64> {
    let meta =
        std::fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.is_file() {
        drop_file(path)?;
        return Ok(1);
    }
    let mut count = 0;
    if meta.is_dir() {
        crate::tree::walk(path, |e, kind| {
            if kind.is_file() {
                drop_file(&e.path())?;
                count += 1;
            }
            Ok(())
        })?;
    }
    Ok(count)
}

fn drop_file(path: &Path) -> Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // fsync on a read-only descriptor is allowed and flushes the whole file.
    file.sync_all()
        .with_context(|| format!("writing back {}", path.display()))?;
    fadvise(&file, 0, None, Advice::DontNeed).with_context(|| {
        format!(
            "dropping {} from the page cache (posix_fadvise DONTNEED)",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_regular_files_of_a_tree() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("a/b")).unwrap();
        std::fs::write(tmp.path().join("a/one"), b"1").unwrap();
        std::fs::write(tmp.path().join("a/b/two"), b"2").unwrap();
        std::os::unix::fs::symlink("one", tmp.path().join("a/link")).unwrap();
        assert_eq!(drop_from_page_cache(tmp.path()).unwrap(), 2);
        assert_eq!(drop_from_page_cache(&tmp.path().join("a/one")).unwrap(), 1);
        // Content is untouched: only the cached copy goes.
        assert_eq!(std::fs::read(tmp.path().join("a/b/two")).unwrap(), b"2");
    }
}

//! Reading an flist's content without unpacking it: `cat` of one file and `verify` of all.

use crate::block::BlockRef;
use crate::error::{Error, Result};
use crate::meta::{Flist, Inode, Kind};
use crate::pool::{default_workers, with_workers};
use crate::store::Router;
use std::collections::HashSet;
use std::io::Write;

/// Streams the content of a regular file to `out`, every block verified. `name` is used in
/// errors. Returns the number of bytes written.
pub fn read_file(
    flist: &Flist,
    router: &Router,
    name: &str,
    inode: &Inode,
    out: &mut dyn Write,
) -> Result<u64> {
    if inode.kind()? != Kind::File {
        return Err(Error::Invalid(format!("{name}: not a regular file")));
    }
    let mut written = 0;
    for (index, block) in flist.blocks(inode.ino)?.iter().enumerate() {
        let plain = router
            .fetch(block)
            .map_err(|e| Error::block(name, index, block, e))?;
        out.write_all(&plain).map_err(|e| Error::Io {
            path: "<output>".into(),
            source: e,
        })?;
        written += plain.len() as u64;
    }
    if written != inode.size {
        return Err(Error::Invalid(format!(
            "{name}: blocks hold {written} bytes but the flist says {}",
            inode.size
        )));
    }
    Ok(written)
}

/// One block that could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// Path of the (first) file using the block.
    pub file: String,
    /// Position of the block in that file.
    pub index: usize,
    /// Block id in hex.
    pub id: String,
    /// What every store said.
    pub reason: String,
}

/// The result of checking every block of an flist.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    /// Regular files checked.
    pub files: u64,
    /// Distinct blocks fetched and verified.
    pub blocks: u64,
    /// Blocks missing or corrupt in every store that should hold them.
    pub problems: Vec<Problem>,
}

/// Fetches and verifies every distinct block of the flist. Problems are collected, not
/// returned as an error, so the caller can list them all.
pub fn verify(flist: &Flist, router: &Router, workers: usize) -> Result<VerifyReport> {
    let workers = if workers == 0 {
        default_workers()
    } else {
        workers
    };
    with_workers(
        workers,
        |(file, index, block): (String, usize, BlockRef)| {
            router.fetch(&block).err().map(|e| Problem {
                file,
                index,
                id: block.id_hex(),
                reason: e.to_string(),
            })
        },
        |pool| {
            let mut report = VerifyReport::default();
            let mut seen = HashSet::new();
            let mut pending = 0usize;
            flist.walk(|rel, inode| {
                if inode.kind()? != Kind::File || inode.hardlink_of.is_some() {
                    return Ok(());
                }
                report.files += 1;
                for (index, block) in flist.blocks(inode.ino)?.into_iter().enumerate() {
                    if !seen.insert(block.id) {
                        continue;
                    }
                    report.blocks += 1;
                    pool.submit((rel.display().to_string(), index, block));
                    pending += 1;
                    while let Some(r) = pool.try_result() {
                        pending -= 1;
                        report.problems.extend(r);
                    }
                }
                Ok(())
            })?;
            while pending > 0 {
                match pool.result() {
                    Some(r) => report.problems.extend(r),
                    None => break,
                }
                pending -= 1;
            }
            Ok::<_, Error>(report)
        },
    )
}

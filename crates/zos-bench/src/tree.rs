//! The one tree generator: deterministic trees of text-like small files and half-random big
//! files, random files, and the walks that measure them.

use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// One mebibyte.
pub const MIB: u64 = 1024 * 1024;
/// Seed of the generated tree: fixed so every run (and every machine) packs the same bytes.
pub const SEED: u64 = 0x7a05_f115_7be4_c401;
/// Seed of the rewritten 1%: different from SEED so the new content differs from the old.
const CHANGE_SEED: u64 = 0xc4a9_6ed0_0000_0001;

/// Small English-ish vocabulary: content built from it compresses roughly like source or text.
const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "with",
    "was",
    "on",
    "be",
    "at",
    "by",
    "this",
    "had",
    "not",
    "are",
    "but",
    "from",
    "or",
    "have",
    "an",
    "they",
    "which",
    "one",
    "you",
    "were",
    "all",
    "we",
    "when",
    "your",
    "can",
    "said",
    "there",
    "use",
    "each",
    "node",
    "block",
    "store",
    "container",
    "image",
    "file",
    "directory",
    "network",
    "kernel",
    "config",
    "value",
    "return",
    "error",
    "struct",
    "function",
    "string",
    "buffer",
    "package",
    "version",
    "install",
    "service",
    "deploy",
    "mount",
    "//",
    "{",
    "}",
    "=",
    "0",
    "1",
    "#",
];

/// Shape of the generated tree, derived from `--scale`.
#[derive(Serialize, Clone, Copy)]
pub struct Shape {
    /// Text-like files of 1-16 KiB.
    pub small_files: usize,
    /// Directories the small files are spread over.
    pub dirs: usize,
    /// Half-random, half-repetitive files under big/.
    pub big_files: usize,
    /// Size of each big file.
    pub big_file_bytes: u64,
}

impl Shape {
    /// The full-size shape multiplied by `scale` (at least one of each).
    pub fn new(scale: f64) -> Result<Shape> {
        if !scale.is_finite() || scale <= 0.0 {
            bail!("--scale {scale}: must be a positive number, e.g. 0.01 or 1");
        }
        // At least one of each so a tiny scale still exercises every code path.
        let count = |n: f64| ((n * scale).round() as usize).max(1);
        Ok(Shape {
            small_files: count(20_000.0),
            dirs: count(200.0),
            big_files: 4,
            big_file_bytes: ((128.0 * MIB as f64 * scale).round() as u64).max(1),
        })
    }
}

/// Calls `f` with every entry under `dir` (not `dir` itself) and its type, descending
/// into directories without following symlinks: the one tree walk of the benchmarks.
pub fn walk(
    dir: &Path,
    mut f: impl FnMut(&std::fs::DirEntry, std::fs::FileType) -> Result<()>,
) -> Result<()> {
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let e = e.with_context(|| format!("reading {}", d.display()))?;
            let kind = e
                .file_type()
                .with_context(|| format!("reading {}", e.path().display()))?;
            if kind.is_dir() {
                stack.push(e.path());
            }
            f(&e, kind)?;
        }
    }
    Ok(())
}

/// Number of entries under `dir` (not counting `dir`), without following symlinks.
pub fn count_entries(dir: &Path) -> Result<u64> {
    let mut count = 0;
    walk(dir, |_, _| {
        count += 1;
        Ok(())
    })?;
    Ok(count)
}

/// `size` random bytes: incompressible and unlike any other file, so every block is fetched.
pub fn write_random(path: &Path, size: u64, rng: &mut fastrand::Rng) -> Result<()> {
    write_data(path, size, size, rng)
}

/// `create_dir_all` with the path in its error.
pub fn create_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))
}

/// Path of small file `i`: spread round-robin over the directories.
fn small_path(tree: &Path, shape: &Shape, i: usize) -> PathBuf {
    tree.join(format!("d{:03}", i % shape.dirs))
        .join(format!("f{i:05}.txt"))
}

/// Each file gets its own generator, so one file can be regenerated without the others.
pub fn file_rng(seed: u64, i: usize) -> fastrand::Rng {
    fastrand::Rng::with_seed(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// `size` bytes of words and spaces with a newline every ~10 words.
fn text(rng: &mut fastrand::Rng, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 16);
    while out.len() < size {
        out.extend_from_slice(WORDS[rng.usize(..WORDS.len())].as_bytes());
        out.push(if rng.usize(..10) == 0 { b'\n' } else { b' ' });
    }
    out.truncate(size);
    out
}

/// `fs::write` with the path in its error.
pub fn write_file(path: &Path, data: &[u8]) -> Result<()> {
    std::fs::write(path, data).with_context(|| format!("writing {}", path.display()))
}

/// Writes the tree and returns its total content bytes.
pub fn generate_tree(tree: &Path, shape: &Shape) -> Result<u64> {
    let mut total = 0u64;
    for d in 0..shape.dirs {
        let p = tree.join(format!("d{d:03}"));
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
    }
    for i in 0..shape.small_files {
        let mut rng = file_rng(SEED, i);
        let size = rng.usize(1024..=16 * 1024);
        write_file(&small_path(tree, shape, i), &text(&mut rng, size))?;
        total += size as u64;
    }
    let big = tree.join("big");
    std::fs::create_dir_all(&big).with_context(|| format!("creating {}", big.display()))?;
    for b in 0..shape.big_files {
        let path = big.join(format!("big{b}.bin"));
        write_big(
            &path,
            shape.big_file_bytes,
            &mut file_rng(SEED, usize::MAX - b),
        )?;
        total += shape.big_file_bytes;
    }
    Ok(total)
}

/// A big file: the first half random (incompressible, no dedup), the second half one 4 KiB
/// pattern repeated (compresses and dedups to almost nothing), so both block paths are timed.
fn write_big(path: &Path, size: u64, rng: &mut fastrand::Rng) -> Result<()> {
    write_data(path, size, size / 2, rng)
}

/// A file of `size` bytes: `random` random ones, then one random 4 KiB pattern repeated.
fn write_data(path: &Path, size: u64, random: u64, rng: &mut fastrand::Rng) -> Result<()> {
    const CHUNK: usize = MIB as usize;
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = BufWriter::with_capacity(CHUNK, file);
    let mut buf = vec![0u8; CHUNK];
    let write = |w: &mut BufWriter<std::fs::File>, buf: &[u8], n: usize| {
        w.write_all(&buf[..n])
            .with_context(|| format!("writing {}", path.display()))
    };
    let mut left = random;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        rng.fill(&mut buf[..n]);
        write(&mut w, &buf, n)?;
        left -= n as u64;
    }
    let mut pattern = [0u8; 4096];
    rng.fill(&mut pattern);
    // CHUNK is a multiple of 4 KiB, so the pattern repeats seamlessly across chunks.
    for (i, byte) in buf.iter_mut().enumerate() {
        *byte = pattern[i % pattern.len()];
    }
    let mut left = size - random;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        write(&mut w, &buf, n)?;
        left -= n as u64;
    }
    w.flush()
        .with_context(|| format!("writing {}", path.display()))
}

/// Rewrites 1% of the small files (at least one) with different text of the same size, so
/// tree bytes and throughput stay comparable; returns how many were changed.
pub fn change_small_files(tree: &Path, shape: &Shape) -> Result<usize> {
    let n = shape.small_files;
    let count = (n / 100).max(1);
    for k in 0..count {
        // Spread over the whole tree (every directory at full scale), not one corner of it.
        let i = k * n / count;
        let size = file_rng(SEED, i).usize(1024..=16 * 1024);
        let mut rng = file_rng(CHANGE_SEED, i);
        write_file(&small_path(tree, shape, i), &text(&mut rng, size))?;
    }
    Ok(count)
}

/// Total bytes and number of regular files under `dir`.
pub fn dir_usage(dir: &Path) -> Result<(u64, u64)> {
    let (mut bytes, mut files) = (0, 0);
    walk(dir, |e, kind| {
        if kind.is_file() {
            bytes += e
                .metadata()
                .with_context(|| format!("reading {}", e.path().display()))?
                .len();
            files += 1;
        }
        Ok(())
    })?;
    Ok((bytes, files))
}

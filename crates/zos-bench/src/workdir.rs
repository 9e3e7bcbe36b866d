//! The benchmark's work directory and its cleanup.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The work directory; removes what the benchmark wrote when dropped, unless kept.
pub struct WorkDir {
    /// Absolute path of the directory.
    pub root: PathBuf,
    /// Whether we created `root` (then it goes too), or it existed empty (then only its contents).
    created: bool,
    keep: bool,
}

impl WorkDir {
    /// `dir` (which must be empty or not exist, since cleanup empties it) or a fresh
    /// directory under /var/tmp; kept after the run if `keep`.
    pub fn new(dir: Option<PathBuf>, keep: bool) -> Result<WorkDir> {
        let (root, created) = match dir {
            Some(d) => {
                let created = match std::fs::read_dir(&d) {
                    Ok(mut entries) => {
                        // Refuse a non-empty directory: cleanup removes everything in it.
                        if entries.next().is_some() {
                            bail!("--dir {}: must be empty or not exist", d.display());
                        }
                        false
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        std::fs::create_dir_all(&d)
                            .with_context(|| format!("creating {}", d.display()))?;
                        true
                    }
                    Err(e) => return Err(e).with_context(|| format!("reading {}", d.display())),
                };
                (d, created)
            }
            None => (fresh_temp_dir()?, true),
        };
        // Absolute, because the store URL (dir:///…) is recorded in the flist and read back.
        let root = root
            .canonicalize()
            .with_context(|| format!("resolving {}", root.display()))?;
        Ok(WorkDir {
            root,
            created,
            keep,
        })
    }

    /// `name` inside the work directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kept work directory {}", self.root.display());
            return;
        }
        let result = if self.created {
            std::fs::remove_dir_all(&self.root)
        } else {
            std::fs::read_dir(&self.root).and_then(|entries| {
                for e in entries {
                    let p = e?.path();
                    if p.is_dir() {
                        std::fs::remove_dir_all(&p)?;
                    } else {
                        std::fs::remove_file(&p)?;
                    }
                }
                Ok(())
            })
        };
        if let Err(e) = result {
            eprintln!("warning: cleaning up {}: {e}", self.root.display());
        }
    }
}

/// A new directory under /var/tmp (not /tmp: that is often a small tmpfs, and RAM would skew
/// the numbers).
fn fresh_temp_dir() -> Result<PathBuf> {
    let base = Path::new("/var/tmp");
    let mut rng = fastrand::Rng::new();
    for _ in 0..16 {
        let p = base.join(format!(
            "zos-bench-{}-{:08x}",
            std::process::id(),
            rng.u32(..)
        ));
        match std::fs::create_dir(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", p.display())),
        }
    }
    bail!(
        "could not create a fresh directory under {}",
        base.display()
    )
}

//! Finding the `zos` binary the benchmarks measure.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// What to run to get a `zos` binary, for the error that says one is missing.
const BUILD_HINT: &str = "build it with `cargo build --release -p zos-cli` (the same target dir \
as zos-bench), or name one with --zos PATH or ZOS_BIN=PATH";

/// The `zos` binary under measurement.
#[derive(Clone, Debug)]
pub struct Zos {
    path: PathBuf,
}

impl Zos {
    /// `given` (from `--zos` or `ZOS_BIN`) if set, else the `zos` beside this executable:
    /// Cargo builds both into the same target dir, so a `zos-bench` measures the `zos` of
    /// its own build. Fails, saying how to get one, when there is no such file.
    pub fn locate(given: Option<PathBuf>) -> Result<Zos> {
        let path = match given {
            Some(p) => {
                if !p.is_file() {
                    bail!("zos binary {}: no such file; {BUILD_HINT}", p.display());
                }
                p
            }
            None => {
                let me = std::env::current_exe().context("finding the zos-bench executable")?;
                let dir = me.parent().with_context(|| {
                    format!("{} has no parent directory; {BUILD_HINT}", me.display())
                })?;
                let p = dir.join("zos");
                if !p.is_file() {
                    bail!(
                        "no zos binary next to zos-bench (looked for {}); {BUILD_HINT}",
                        p.display()
                    );
                }
                p
            }
        };
        // Absolute, because some steps run with another working directory.
        let path = path
            .canonicalize()
            .with_context(|| format!("resolving {}", path.display()))?;
        Ok(Zos { path })
    }

    /// Where the binary is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A command running this `zos`, with nothing else set.
    pub fn command(&self) -> Command {
        Command::new(&self.path)
    }
}

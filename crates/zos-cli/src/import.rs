//! `zos flist import`: Docker / OCI images to flists (in progress).

use anyhow::{bail, Result};
use clap::Args;
use std::process::ExitCode;

/// Arguments of `zos flist import`.
#[derive(Args)]
pub struct ImportArgs {
    /// The image
    image: String,
}

/// Runs `zos flist import`.
pub fn import(args: ImportArgs) -> Result<ExitCode> {
    bail!("importing {} is not implemented yet", args.image)
}

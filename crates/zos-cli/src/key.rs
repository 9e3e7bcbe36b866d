//! `zos key …`: the Ed25519 key that owns deployments and signs every request, and how the
//! client commands find it.

use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use zos_types::{check_key_file_mode, read_key_file, write_new_key_file, KeyError, Keypair};

/// `zos key new` and `zos key show`.
#[derive(Subcommand)]
pub enum KeyCommand {
    /// Make a new key (a PKCS#8 PEM file, mode 0600); never replaces an existing file
    #[command(after_help = "Example:\n  zos key new\n  zos key new -o ~/keys/team.pem")]
    New {
        /// Where to write the key [default: $XDG_CONFIG_HOME/zos/key.pem or
        /// ~/.config/zos/key.pem]
        #[arg(long, short = 'o', value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Print the public key of a key file (for another owner's `signature_requirement`)
    Show {
        /// The key file [default: $XDG_CONFIG_HOME/zos/key.pem or ~/.config/zos/key.pem]
        #[arg(long, env = "ZOS_KEY", value_name = "FILE")]
        key: Option<PathBuf>,
    },
}

/// Runs `zos key …`.
pub fn run(cmd: KeyCommand) -> Result<ExitCode> {
    match cmd {
        KeyCommand::New { out } => {
            let path = match out {
                Some(p) => p,
                None => default_key_path()?,
            };
            let key = write_new_key_file(&path).map_err(|e| match e {
                KeyError::Exists(_) => anyhow!(
                    "{e}: it may own deployments; pass -o to write the new key somewhere else"
                ),
                other => anyhow!(other),
            })?;
            println!("public key: {}", key.public());
            println!("key file:   {}", path.display());
        }
        KeyCommand::Show { key } => {
            let key = load(key.as_deref())?;
            println!("{}", key.public());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `$XDG_CONFIG_HOME/zos/key.pem`, else `~/.config/zos/key.pem`.
pub fn default_key_path() -> Result<PathBuf> {
    // The XDG spec says relative values are to be ignored.
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .map(|home| home.join(".config"))
        })
        .context("cannot find your config directory: set HOME or XDG_CONFIG_HOME, or pass --key")?;
    Ok(config.join("zos").join("key.pem"))
}

/// Reads the key at `path` (or the default path), warning on stderr when others can read it
/// and pointing at `zos key new` when there is none.
pub fn load(path: Option<&Path>) -> Result<Keypair> {
    let (path, default) = match path {
        Some(p) => (p.to_path_buf(), false),
        None => (default_key_path()?, true),
    };
    // try_exists: a directory we may not search is an error to show, not a missing key.
    if matches!(path.try_exists(), Ok(false)) {
        let make = if default {
            "zos key new".to_string()
        } else {
            format!("zos key new -o {}", path.display())
        };
        bail!("no key at {}: make one with `{make}`", path.display());
    }
    // A readable key is still usable; refusing would lock the user out for a chmod.
    if let Err(e @ KeyError::TooOpen(..)) = check_key_file_mode(&path) {
        eprintln!("warning: {e}");
    }
    read_key_file(&path).map_err(|e| anyhow!(e))
}

//! `zos seal`: a value sealed to one node, for a deployment's `secret_env`.

use crate::client::ClientArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::Read;
use std::process::ExitCode;

/// `zos seal [VALUE]`.
#[derive(Args)]
pub struct SealArgs {
    /// The value to seal; read from standard input when left out (which keeps it out of your
    /// shell's history)
    value: Option<String>,
    /// Print the node's age recipient (its key as an ssh-ed25519 line) instead, to seal with
    /// `age -a -R FILE` without zos
    #[arg(long)]
    recipient: bool,
    #[command(flatten)]
    client: ClientArgs,
}

/// Seals the value (or prints the recipient) for the node `--node-id` names, or the one at
/// `--node`.
pub fn seal(args: SealArgs) -> Result<ExitCode> {
    let node = match args.client.node_id {
        Some(id) => id,
        None => args
            .client
            .connect()?
            .node_id()
            .context("asking the node for its id (or give --node-id)")?,
    };
    if args.recipient {
        println!("{}", zos_seal::recipient(&node));
        return Ok(ExitCode::SUCCESS);
    }
    let value = match args.value {
        Some(v) => v.into_bytes(),
        None => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("reading the value from standard input")?;
            // A value typed or echoed ends with one newline that is not part of it.
            if buf.ends_with(b"\n") {
                buf.pop();
            }
            buf
        }
    };
    if value.is_empty() {
        bail!("nothing to seal: give the value as an argument or on standard input");
    }
    print!("{}", zos_seal::seal(&node, &value)?);
    Ok(ExitCode::SUCCESS)
}

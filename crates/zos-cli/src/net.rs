//! `zos net …`: the WireGuard side of networks, for wiring a network across nodes and for
//! joining it from your own machine. Each parses, asks `zos_client`, and prints.

use crate::client::ClientArgs;
use anyhow::{anyhow, Context, Result};
use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;

/// `zos net key` and `zos net access`.
#[derive(Subcommand)]
pub enum NetCommand {
    /// Print the node's WireGuard public key and port for one of your networks, deployed or
    /// not: what the network's peers on other nodes need
    #[command(
        after_help = "The key is derived from the node's identity and the names, so \
it is known before deploying: ask each node, then write every node's part of the network \
with the others as wireguard.peers, and deploy them all.\nExample:\n  zos net key app/lan \
--node https://10.0.0.5:8443"
    )]
    Key {
        /// DEPLOYMENT/NETWORK
        target: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a WireGuard config (wg-quick format) for your own machine, which you added to
    /// a network as a peer
    #[command(
        after_help = "First add your machine to the network's wireguard.peers (a \
subnet for it inside the network's ip_range, e.g. a /32, and the public key `wg pubkey` \
prints for your private key) and deploy; then:\n  zos net access app/lan --pubkey KEY \
--private-key-file ~/.wg/laptop.key > zos-lan.conf\n  wg-quick up ./zos-lan.conf"
    )]
    Access {
        /// DEPLOYMENT/NETWORK
        target: String,
        /// Your machine's WireGuard public key, as listed in the network's peers
        #[arg(long, value_name = "KEY")]
        pubkey: String,
        /// Fill in your private key from this file (else a placeholder says where it goes)
        #[arg(long, value_name = "FILE")]
        private_key_file: Option<PathBuf>,
        /// Where your machine reaches the node, ADDRESS:PORT [default: the node's
        /// wireguard_host and the network's port]
        #[arg(long, value_name = "ADDRESS:PORT")]
        endpoint: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Splits `DEPLOYMENT/NETWORK`.
fn split(target: &str) -> Result<(&str, &str)> {
    target
        .split_once('/')
        .filter(|(d, n)| !d.is_empty() && !n.is_empty())
        .ok_or_else(|| anyhow!("{target:?}: name the network as DEPLOYMENT/NETWORK, e.g. app/lan"))
}

/// Runs `zos net …`.
pub fn net(cmd: NetCommand) -> Result<ExitCode> {
    match cmd {
        NetCommand::Key { target, client } => {
            let (deployment, network) = split(&target)?;
            let end = client.connect()?.wireguard_end(deployment, network)?;
            if client.json {
                println!("{}", end.pretty());
            } else {
                println!("public_key: {}", end.value.public_key);
                println!("listen_port: {}", end.value.listen_port);
                if let Some(e) = &end.value.endpoint {
                    println!("endpoint: {e}");
                }
            }
        }
        NetCommand::Access {
            target,
            pubkey,
            private_key_file,
            endpoint,
            client,
        } => {
            let (deployment, network) = split(&target)?;
            let private_key = match &private_key_file {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?
                        .trim()
                        .to_string(),
                ),
                None => None,
            };
            let d = client.connect()?.deployment(deployment)?;
            let config = zos_client::access_config(
                &d.value,
                network,
                &pubkey,
                endpoint.as_deref(),
                private_key.as_deref(),
            )
            .map_err(|e| anyhow!(e))?;
            print!("{config}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

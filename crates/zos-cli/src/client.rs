//! The flags every command that talks to a node takes, and the client they make
//! (`zos_client` does the talking).

use crate::key;
use clap::Args;
use std::path::PathBuf;
use zos_client::DEFAULT_NODE;
use zos_client::{NodeClient, NodeUrl};
use zos_types::PublicKey;

/// The flags every command that talks to a node takes.
#[derive(Args, Clone)]
pub struct ClientArgs {
    /// The node's API: unix:///path/to.sock, https://HOST:PORT (TLS; the certificate must
    /// be for the node id), or http://HOST:PORT (a node listening with ?insecure)
    #[arg(long, env = "ZOS_NODE", value_name = "URL", default_value = DEFAULT_NODE,
          value_parser = NodeUrl::parse)]
    pub node: NodeUrl,
    /// Your key file (made by `zos key new`) [default: $XDG_CONFIG_HOME/zos/key.pem or
    /// ~/.config/zos/key.pem]
    #[arg(long, env = "ZOS_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// The node's id (its public key, as `zos node info` shows). Requests and deployments
    /// are signed for this node only, and over https only a node proving it holds this key
    /// is talked to; without it, zos asks the node at --node for its id (over https, the id
    /// must be the key of the certificate it answers over)
    #[arg(long, env = "ZOS_NODE_ID", value_name = "HEX", value_parser = parse_node_id)]
    pub node_id: Option<PublicKey>,
    /// Print the node's JSON answer (pretty-printed) instead of text
    #[arg(long)]
    pub json: bool,
}

impl ClientArgs {
    /// Loads the key and makes a client for the node.
    pub fn connect(&self) -> anyhow::Result<NodeClient> {
        let key = key::load(self.key.as_deref())?;
        let client = NodeClient::new(self.node.clone(), key)?;
        if let Some(id) = self.node_id {
            client.pin_node_id(id);
        }
        Ok(client)
    }
}

fn parse_node_id(s: &str) -> Result<PublicKey, String> {
    s.parse()
        .map_err(|e| format!("{e}; give the node's id as `zos node info` prints it"))
}

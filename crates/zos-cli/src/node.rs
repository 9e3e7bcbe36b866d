//! `zos node run` (the daemon, in this process) and `zos node info`.

use crate::client::ClientArgs;
use crate::output::{human_size, table};
use anyhow::Result;
use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;
use zos_types::api::Resources;

/// `zos node run` and `zos node info`.
#[derive(Subcommand)]
pub enum NodeCommand {
    /// Run the node: serve the API and run deployments (usually as root, from systemd)
    ///
    /// Makes its identity on first start, reattaches to the VMs it left running, restarts
    /// what should run and moves what no deployment owns into a quarantine (it refuses to
    /// start on a host full of VMs when its database holds no deployment). Stops on SIGINT or SIGTERM,
    /// leaving VMs running for the next start.
    #[command(after_help = "The config file is TOML; every key is optional:\n  \
data_dir = \"/var/lib/zos/node\"              # identity, database, VMs, disks\n  \
listen = [\"unix:///run/zos/node.sock\"]      # and/or \"tcp://IP:PORT\" (HTTPS: a certificate for the node's key,\n  \
                                            # which clients check against its id), \"tcp://IP:PORT?insecure\" (plain HTTP)\n  \
reserve_memory = \"1G\"                       # never given to workloads\n  \
reserve_disk = \"1G\"\n  \
cpu_overcommit = 4.0                        # vCPUs per host CPU (memory is never overcommitted)\n  \
disk = \"500G\"                               # default: what the filesystem has free\n  \
cache_dir = \"/var/lib/zos/node/cache\"       # flist block cache\n  \
flist_dirs = [\"/var/lib/zos/flists\"]        # the only places tenants may name flists from\n  \
allow_store_nets = [\"127.0.0.1/32\"]         # local addresses (loopback, link-local, own) stores may be on; default none\n  \
allow_store_dirs = [\"/var/lib/zos/store\"]   # dir:// stores tenants' flists may read; default none\n  \
max_restarts = 5                            # crashes in a row before a zmachine is left in error\n  \
stop_timeout_secs = 10\n  \
quarantine_days = 7                         # keeps what no deployment owns, then deletes it\n  \
header_timeout_secs = 10                    # to send a request's head (also a kept-alive connection's idle limit)\n  \
body_timeout_secs = 30                      # to send a request's body\n  \
max_connections = 1000                      # open at once per listener; more are closed at once\n  \
max_connections_per_peer = 100             # open at once from one address on a TCP listener\n  \
max_streams_per_owner = 32                  # followed logs and event streams open at once per owner (429 beyond)")]
    Run {
        /// The node's config file [default: built-in defaults]
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Show the node's identity, version and capacity
    Info {
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Runs `zos node …`.
pub fn node(cmd: NodeCommand) -> Result<ExitCode> {
    match cmd {
        NodeCommand::Run { config } => {
            zos_node::run(config.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        NodeCommand::Info { client } => node_info(&client),
    }
}

fn node_info(args: &ClientArgs) -> Result<ExitCode> {
    let info = args.connect()?.node_info()?;
    if args.json {
        println!("{}", info.pretty());
        return Ok(ExitCode::SUCCESS);
    }
    let i = &info.value;
    println!("node:    {}", i.node_id);
    println!("version: {}", i.version);
    println!("accel:   {}", i.accel);
    println!();
    let row = |name: &str, get: fn(&Resources) -> String| {
        vec![name.to_string(), get(&i.total), get(&i.used), get(&i.free)]
    };
    let rows = [
        row("cpus", |r| r.cpus.to_string()),
        row("memory", |r| human_size(r.memory)),
        row("disk", |r| human_size(r.disk)),
    ];
    print!("{}", table(&["RESOURCE", "TOTAL", "USED", "FREE"], &rows));
    Ok(ExitCode::SUCCESS)
}

//! The zos node: takes signed deployments over HTTP, admits them against capacity, runs
//! their workloads with `zos-vmm`, and keeps their state across restarts.
//!
//! - [`config`]: the operator's TOML file, read once at start;
//! - [`store`]: deployments and results in an embedded database (redb);
//! - [`engine`]: validation, signatures, admission, convergence, monitoring;
//! - [`workload`]: each workload type's side on the node (a module per type: zmachine
//!   VMs with `zos-vmm`, zmount disks), behind the one trait the engine drives;
//! - [`api`]: the HTTP/JSON API on unix sockets and TCP;
//! - [`serve`]: the listeners' limits (connections, header and body time limits);
//! - [`tls`]: the TLS certificate bound to the node's key;
//! - [`streams`]: followed logs and events: a per-owner cap, logs followed without a thread;
//! - [`limits`]: what one owner may store and ask;
//! - [`schedule`]: the convergence queue, owners taking turns;
//! - [`readers`]: who may read a deployment (its owner and co-owners);
//! - [`cgroup`]: the node's own cgroup, beside its VMs'.

pub mod api;
pub mod capacity;
pub mod cgroup;
pub mod config;
pub mod engine;
pub mod limits;
pub mod pull;
pub mod readers;
pub mod schedule;
pub mod serve;
pub mod sessions;
pub mod store;
pub mod streams;
pub mod tls;
pub mod workload;

use anyhow::{Context, Result};
use config::{Listen, NodeConfig};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// How long a stopping node waits for open requests and streams to finish.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs the node with the config file at `config` (embedded defaults without one) until
/// SIGINT or SIGTERM. VMs keep running when it stops; the next start reattaches to them.
pub fn run(config: Option<&Path>) -> Result<()> {
    let cfg = NodeConfig::load(config)?;
    // Before any thread or helper starts, so all of them are in it.
    let _group = cgroup::NodeGroup::enter();
    let listeners = cfg.listeners()?;
    let limits = cfg.serve_limits();
    let max_streams = cfg.max_streams_per_owner;
    let files = serve::raise_file_limit();
    // Each connection holds a descriptor, and the node needs more for VMs, logs, the database.
    let wanted = (cfg.max_connections * listeners.len()) as u64 + 256;
    if files < wanted {
        eprintln!(
            "zos node: warning: the file limit is {files}, under the {wanted} that max_connections = {} on {} listener(s) needs: lower max_connections or raise the limit (ulimit -n, LimitNOFILE=)",
            cfg.max_connections,
            listeners.len()
        );
    }
    let data_dir = cfg.data_dir.clone();
    let engine = engine::Engine::open(cfg)?;
    // The TLS certificate is made for the identity the engine just opened (or made).
    let key = engine::identity(&data_dir.join("identity.pem"))?;
    engine
        .reconcile()
        .context("reconciling with what runs on the host")?;
    for _ in 0..engine::WORKERS {
        let engine = engine.clone();
        std::thread::spawn(move || engine.worker());
    }
    {
        let engine = engine.clone();
        std::thread::spawn(move || engine.monitor());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        // Set once the node stops: open streams (events, followed logs) end cleanly, and the
        // servers finish the requests they have.
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let app = api::router(engine.clone(), stopping.clone(), max_streams);
        let mut servers = tokio::task::JoinSet::new();
        let mut sockets = Vec::new();
        for l in listeners {
            match l {
                Listen::Unix(path) => {
                    if let Some(dir) = path.parent() {
                        std::fs::create_dir_all(dir)?;
                    }
                    let _ = std::fs::remove_file(&path);
                    let listener = tokio::net::UnixListener::bind(&path)
                        .with_context(|| format!("listening on {}", path.display()))?;
                    // Anyone may connect: every request is authenticated by its signature.
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
                    sockets.push(path.clone());
                    eprintln!(
                        "zos node {}: listening on unix://{}",
                        engine.node_id(),
                        path.display()
                    );
                    servers.spawn(serve::serve(
                        serve::Listener::Unix(listener),
                        app.clone(),
                        limits,
                        stopping.clone(),
                    ));
                }
                Listen::Tcp { addr, tls } => {
                    let listener = tokio::net::TcpListener::bind(&addr)
                        .await
                        .with_context(|| format!("listening on {addr}"))?;
                    let (scheme, acceptor) = if tls {
                        ("https", Some(tls::acceptor(&key)?))
                    } else {
                        ("http, plain: ?insecure", None)
                    };
                    eprintln!(
                        "zos node {}: listening on tcp://{addr} ({scheme})",
                        engine.node_id()
                    );
                    servers.spawn(serve::serve(
                        serve::Listener::Tcp(listener, acceptor),
                        app.clone(),
                        limits,
                        stopping.clone(),
                    ));
                }
            }
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            r = servers.join_next() => {
                if let Some(Ok(Err(e))) = r {
                    return Err(anyhow::anyhow!("serving the API: {e}"));
                }
            }
        }
        eprintln!("zos node: stopping (VMs keep running)");
        let _ = stop.send(true);
        // A client that does not read what it asked for must not hold the node up.
        let _ = tokio::time::timeout(STOP_GRACE, async {
            while servers.join_next().await.is_some() {}
        })
        .await;
        // A socket file left behind would look like a node to whoever waits for one.
        for path in sockets {
            let _ = std::fs::remove_file(path);
        }
        Ok(())
    })
}

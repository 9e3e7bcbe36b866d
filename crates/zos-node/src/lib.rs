//! The zos node: takes signed deployments over HTTP, admits them against capacity, runs
//! their workloads with `zos-vmm`, and keeps their state across restarts.
//!
//! - [`config`]: the operator's TOML file, read once at start;
//! - [`store`]: deployments and results in an embedded database (redb);
//! - [`engine`]: validation, signatures, admission, convergence, monitoring;
//! - [`workload`]: each workload type's side on the node (a module per type: zmachine
//!   VMs with `zos-vmm`, zmount disks), behind the one trait the engine drives;
//! - [`api`]: the HTTP/JSON API on unix sockets and TCP;
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
pub mod readers;
pub mod schedule;
pub mod store;
pub mod workload;

use anyhow::{Context, Result};
use config::{Listen, NodeConfig};
use std::future::IntoFuture;
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
    let engine = engine::Engine::open(cfg)?;
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
        let app = api::router(engine.clone(), stopping.clone());
        let serve_until_stopped = |mut stopping: tokio::sync::watch::Receiver<bool>| async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        };
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
                    servers.spawn(
                        axum::serve(listener, app.clone())
                            .with_graceful_shutdown(serve_until_stopped(stopping.clone()))
                            .into_future(),
                    );
                }
                Listen::Tcp(addr) => {
                    let listener = tokio::net::TcpListener::bind(&addr)
                        .await
                        .with_context(|| format!("listening on {addr}"))?;
                    eprintln!("zos node {}: listening on tcp://{addr}", engine.node_id());
                    servers.spawn(
                        axum::serve(listener, app.clone())
                            .with_graceful_shutdown(serve_until_stopped(stopping.clone()))
                            .into_future(),
                    );
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

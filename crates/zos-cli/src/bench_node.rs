//! `zos bench node`: the node's API throughput and latency, its restart time with many
//! stored deployments, and deploy-to-running of a container next to `zos run` of the same
//! image (the floor, same run).

use crate::bench_vm::{image, median, range, remove_vms, zos_run_to_mark, MARK};
use crate::client::{NodeClient, NodeUrl};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};
use zos_types::api::API_PREFIX;
use zos_types::{Deployment, DeploymentFile, Keypair, PublicKey, ResultState};

/// Concurrent clients sending deployments.
const CLIENTS: usize = 4;

#[derive(serde::Serialize)]
struct Row {
    step: String,
    value: f64,
    unit: &'static str,
    floor: Option<f64>,
    notes: String,
}

/// Runs the node benchmark and prints its table.
pub fn bench_node(count: usize, runs: usize, keep: bool, json: bool) -> Result<ExitCode> {
    let work = tempfile::Builder::new()
        .prefix("zos-bench-node.")
        .tempdir_in("/var/tmp")?
        .keep();
    let mut node = BenchNode {
        work: work.clone(),
        child: None,
    };
    let result = measure(&mut node, count.max(1), runs.max(1));
    node.stop();
    if !keep {
        remove_vms(&work.join("node"));
        let _ = std::fs::remove_dir_all(&work);
    }
    let rows = result?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print(&rows);
    }
    Ok(ExitCode::SUCCESS)
}

/// A `zos node run` child over a work dir.
struct BenchNode {
    work: PathBuf,
    child: Option<Child>,
}

impl BenchNode {
    fn url(&self) -> NodeUrl {
        NodeUrl::Unix(self.work.join("node.sock"))
    }

    /// Starts the node; returns the seconds until its API answers.
    fn start(&mut self, key: &Keypair) -> Result<f64> {
        let config = self.work.join("node.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\nlisten = [\"unix://{}\"]\ncache_dir = {:?}\ndisk = \"100T\"\n",
                self.work.join("node"),
                self.work.join("node.sock").display(),
                self.work.join("cache"),
            ),
        )?;
        let log = std::fs::File::create(self.work.join("node.log"))?;
        let start = Instant::now();
        self.child = Some(
            Command::new(std::env::current_exe()?)
                .args(["node", "run", "--config"])
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()?,
        );
        let client = NodeClient::new(self.url(), key.clone())?;
        loop {
            if client
                .get::<serde_json::Value>(&format!("{API_PREFIX}/node"))
                .is_ok()
            {
                return Ok(start.elapsed().as_secs_f64());
            }
            if start.elapsed() > Duration::from_secs(120) {
                bail!(
                    "the node did not answer within 2 minutes; see {}/node.log",
                    self.work.display()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the node with SIGTERM, as a service manager would.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}

fn deployment(key: &Keypair, node: PublicKey, yaml: &str) -> Result<Deployment> {
    let mut d = DeploymentFile::from_yaml_str(yaml)?.into_deployment(key.public(), node);
    d.sign(key);
    Ok(d)
}

fn measure(node: &mut BenchNode, count: usize, runs: usize) -> Result<Vec<Row>> {
    let key = Keypair::generate();
    eprintln!("bench node: building the image in {}", node.work.display());
    let fl = image(&node.work, "busybox", 0)?;
    node.start(&key)?;
    let node_id = NodeClient::new(node.url(), key.clone())?.node_id()?;
    let mut rows = Vec::new();

    // Signed before the clock starts: what is timed is the node's side (signature check,
    // admission, one database transaction) plus the HTTP round trip.
    eprintln!("bench node: {count} zmount deployments through the API");
    let bodies: Vec<Deployment> = (0..count)
        .map(|i| {
            deployment(
                &key,
                node_id,
                &format!("name: d{i:05}\nworkloads:\n  - name: data\n    type: zmount\n    data: {{ size: 16M }}\n"),
            )
        })
        .collect::<Result<_>>()?;
    let start = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = bodies
            .chunks(count.div_ceil(CLIENTS))
            .map(|chunk| {
                let (url, key) = (node.url(), key.clone());
                s.spawn(move || -> Result<()> {
                    let client = NodeClient::new(url, key)?;
                    client.pin_node_id(node_id);
                    for d in chunk {
                        client
                            .post::<serde_json::Value>(&format!("{API_PREFIX}/deployments"), d)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        }
        Ok(())
    })?;
    let secs = start.elapsed().as_secs_f64();
    let rate = count as f64 / secs;
    rows.push(Row {
        step: "deployments accepted per second".into(),
        value: rate,
        unit: "/s",
        floor: None,
        notes: format!(
            "{count} zmount-only deployments, {CLIENTS} clients, {secs:.2} s; target >= 1000/s: {}",
            if rate >= 1000.0 { "met" } else { "missed" }
        ),
    });

    let client = NodeClient::new(node.url(), key.clone())?;
    let start = Instant::now();
    loop {
        let list: Vec<Deployment> = client.get(&format!("{API_PREFIX}/deployments"))?.value;
        let pending = list
            .iter()
            .filter(|d| {
                d.workloads.iter().any(|w| {
                    w.result
                        .as_ref()
                        .is_none_or(|r| r.state == ResultState::Init)
                })
            })
            .count();
        if pending == 0 {
            break;
        }
        if start.elapsed() > Duration::from_secs(600) {
            bail!("{pending} deployments still provisioning after 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    rows.push(Row {
        step: "their disks provisioned (after accept)".into(),
        value: start.elapsed().as_secs_f64(),
        unit: "s",
        floor: None,
        notes: "ext4 disks made by 2 workers in the background".into(),
    });

    eprintln!("bench node: {count} gets");
    let mut latencies: Vec<f64> = Vec::with_capacity(count);
    for i in 0..count {
        let start = Instant::now();
        client.get::<serde_json::Value>(&format!(
            "{API_PREFIX}/deployments/d{:05}",
            (i * 7919) % count
        ))?;
        latencies.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    for (name, p) in [("get latency p50", 0.5), ("get latency p99", 0.99)] {
        rows.push(Row {
            step: name.into(),
            value: pct(p),
            unit: "ms",
            floor: None,
            notes: format!("{count} signed GETs of one deployment, one client, a connection each"),
        });
    }

    eprintln!("bench node: restart with {count} deployments stored");
    node.stop();
    let restart = node.start(&key)?;
    rows.push(Row {
        step: format!("node restart, {count} deployments"),
        value: restart,
        unit: "s",
        floor: None,
        notes: "SIGTERM, start, until the API answers (reconciling goes on in the background)"
            .into(),
    });

    eprintln!("bench node: deploy to running vs zos run");
    let mut floor = Vec::new();
    let mut deployed = Vec::new();
    for i in 0..runs {
        floor.push(zos_run_to_mark(&node.work, &fl)?);
        deployed.push(deploy_to_mark(&client, &key, &fl, i)?);
    }
    let (f, d) = (median(&floor), median(&deployed));
    rows.push(Row {
        step: "zos run busybox, first output".into(),
        value: f,
        unit: "s",
        floor: Some(f),
        notes: format!("the floor; {}", range(&floor)),
    });
    rows.push(Row {
        step: "deploy busybox zmachine, first output".into(),
        value: d,
        unit: "s",
        floor: Some(f),
        notes: format!(
            "{:.2}x zos run, target 1.1x: {}; {}",
            d / f,
            if d / f <= 1.1 { "met" } else { "missed" },
            range(&deployed)
        ),
    });
    Ok(rows)
}

/// Seconds from sending a signed deployment of `fl` until its console shows the marker (read
/// through the API's log endpoint); the deployment is deleted afterwards.
fn deploy_to_mark(client: &NodeClient, key: &Keypair, fl: &Path, i: usize) -> Result<f64> {
    let name = format!("run{i}");
    let d = deployment(
        key,
        client.node_id()?,
        &format!(
            "name: {name}\nworkloads:\n  - name: vm\n    type: zmachine\n    data: {{ flist: {} }}\n",
            fl.display()
        ),
    )?;
    let start = Instant::now();
    client.post::<serde_json::Value>(&format!("{API_PREFIX}/deployments"), &d)?;
    let logs = format!("{API_PREFIX}/deployments/{name}/logs/vm");
    let secs = loop {
        let mut text = Vec::new();
        // Before its VM exists the log is a 404: keep asking.
        if client
            .stream(&logs, |chunk| {
                text.extend_from_slice(chunk);
                Ok(())
            })
            .is_ok()
            && String::from_utf8_lossy(&text).contains(MARK)
        {
            break start.elapsed().as_secs_f64();
        }
        if start.elapsed() > Duration::from_secs(300) {
            bail!("deployment {name} never printed its marker");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    client
        .delete::<serde_json::Value>(&format!("{API_PREFIX}/deployments/{name}"))
        .context("deleting the benchmark deployment")?;
    Ok(secs)
}

fn print(rows: &[Row]) {
    println!(
        "{:<42} | {:>9} | {:>4} | {:>7} | notes",
        "step", "value", "unit", "floor"
    );
    for r in rows {
        let floor = r.floor.map_or("-".to_string(), |f| format!("{f:.2}"));
        println!(
            "{:<42} | {:>9.2} | {:>4} | {:>7} | {}",
            r.step, r.value, r.unit, floor, r.notes
        );
    }
}

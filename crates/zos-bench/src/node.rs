//! `zos-bench node`: the node's API throughput and latency (on its unix socket, then on TCP
//! over TLS next to plain HTTP), its restart time with many stored deployments, and
//! deploy-to-running of a container next to `zos run` of the same image (the floor, same
//! run).

use crate::image::{image, remove_vms, zos_run_to_mark, MARK};
use crate::stats::{median, Timing};
use crate::table::{print_value_rows, ValueRow};
use crate::workdir::WorkDir;
use crate::zos_bin::Zos;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode, Stdio};
use std::time::{Duration, Instant};
use zos_client::{NodeClient, NodeUrl};
use zos_types::{Deployment, DeploymentFile, Keypair, PublicKey, ResultState};

/// Concurrent clients sending deployments.
const CLIENTS: usize = 4;

/// One line of the table.
#[derive(serde::Serialize)]
struct Row {
    step: String,
    value: f64,
    unit: &'static str,
    floor: Option<f64>,
    /// Deployments whose step failed (counted in `value` as done, if at all, never as a
    /// success); a row with failures makes the command exit non-zero.
    failed: usize,
    notes: String,
}

/// Runs the node benchmark and prints its table; exits 1 if a step failed for some
/// deployments (the table still shows what was measured).
pub fn bench_node(
    zos: &Zos,
    count: usize,
    runs: usize,
    keep: bool,
    json: bool,
) -> Result<ExitCode> {
    let work = WorkDir::new(None, keep)?;
    let mut node = BenchNode::new(zos, &work.root)?;
    let result = measure(&mut node, count.max(1), runs.max(1));
    node.stop();
    if !keep {
        remove_vms(zos, &node.data_dir());
    }
    drop(work);
    let rows = result?;
    crate::table::emit(&rows, json, |rows| print(rows))?;
    let failed: usize = rows.iter().map(|r| r.failed).sum();
    if failed > 0 {
        eprintln!("error: {failed} deployments failed; see the FAILED rows");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// A loopback address with a port free now (bound by the OS, then released for the node).
fn free_port() -> Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.to_string())
}

/// A `zos node run` child over a work dir, on a unix socket and on loopback TCP twice: TLS,
/// and plain HTTP (`?insecure`). Its flists are read from the work dir, their blocks from
/// `store` in it.
pub struct BenchNode {
    zos: Zos,
    work: PathBuf,
    /// Where its own files are: the work dir, or a dir of its own for a second node.
    home: PathBuf,
    /// The network namespace it runs in (`/run/netns/NAME`), if not the host's.
    netns: Option<String>,
    /// Lines added to its config.
    extra_config: String,
    child: Option<Child>,
    tls_addr: String,
    plain_addr: String,
}

/// Where a client reaches the node.
#[derive(Clone, Copy)]
enum Via {
    Unix,
    Tls,
    Plain,
}

impl BenchNode {
    /// A node over `work` (its data in `work/node`), not started yet.
    pub fn new(zos: &Zos, work: &Path) -> Result<BenchNode> {
        Ok(BenchNode {
            zos: zos.clone(),
            work: work.to_path_buf(),
            home: work.to_path_buf(),
            netns: None,
            extra_config: String::new(),
            child: None,
            tls_addr: free_port()?,
            plain_addr: free_port()?,
        })
    }

    /// Adds `lines` to its config (before it starts).
    pub fn add_config(&mut self, lines: &str) {
        self.extra_config.push_str(lines);
        self.extra_config.push('\n');
    }

    /// Another node reading the same flists, with its files in `home` (a fresh dir), run
    /// inside network namespace `netns` with `extra_config` added to its config.
    pub fn elsewhere(
        zos: &Zos,
        work: &Path,
        home: &Path,
        netns: &str,
        extra_config: &str,
    ) -> Result<BenchNode> {
        std::fs::create_dir_all(home).with_context(|| format!("creating {}", home.display()))?;
        Ok(BenchNode {
            home: home.to_path_buf(),
            netns: Some(netns.to_owned()),
            extra_config: extra_config.to_owned(),
            ..BenchNode::new(zos, work)?
        })
    }

    /// Its data dir (VMs under `vms/`).
    pub fn data_dir(&self) -> PathBuf {
        self.home.join("node")
    }

    fn socket(&self) -> PathBuf {
        self.home.join("node.sock")
    }

    /// A client of the node's unix socket signing with `key`.
    pub fn api(&self, key: &Keypair) -> Result<NodeClient> {
        self.api_via(Via::Unix, key)
    }

    fn api_via(&self, via: Via, key: &Keypair) -> Result<NodeClient> {
        let url = match via {
            Via::Unix => NodeUrl::Unix(self.socket()),
            Via::Tls => {
                NodeUrl::parse(&format!("https://{}", self.tls_addr)).map_err(anyhow::Error::msg)?
            }
            Via::Plain => NodeUrl::parse(&format!("http://{}", self.plain_addr))
                .map_err(anyhow::Error::msg)?,
        };
        NodeClient::new(url, key.clone()).context("making the API client")
    }

    /// Starts the node; returns the seconds until its API answers.
    pub fn start(&mut self, key: &Keypair) -> Result<f64> {
        let config = self.home.join("node.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\nlisten = [\"unix://{}\", \"tcp://{}\", \"tcp://{}?insecure\"]\n\
                 cache_dir = {:?}\ndisk = \"100T\"\nflist_dirs = [{:?}]\nallow_store_dirs = [{:?}]\n{}\n\
                 # One key sends everything here: what is measured is the node's throughput,\n\
                 # not its per-owner limits.\n\
                 [limits]\ndeployments_per_owner = 1000000\nowner_bytes = \"1T\"\n\
                 requests_per_second = 1000000.0\nrequest_burst = 1000000\n",
                self.data_dir(),
                self.socket().display(),
                self.tls_addr,
                self.plain_addr,
                self.home.join("cache"),
                self.work,
                // The image's dir:// store (image::image): a node reaches no local path
                // a flist names unless its config allows it.
                self.work.join("store"),
                self.extra_config,
            ),
        )
        .with_context(|| format!("writing {}", config.display()))?;
        let log_path = self.home.join("node.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut cmd = self.zos.command();
        if let Some(ns) = &self.netns {
            zos_net::netns::command_in(&mut cmd, ns)?;
        }
        let start = Instant::now();
        self.child = Some(
            cmd.args(["node", "run", "--config"])
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {} node run", self.zos.path().display()))?,
        );
        let api = self.api(key)?;
        loop {
            if api.node_info().is_ok() {
                return Ok(start.elapsed().as_secs_f64());
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                bail!(
                    "the node exited ({status}) before answering; its log ends:\n{}",
                    log.lines()
                        .rev()
                        .take(10)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            if start.elapsed() > Duration::from_secs(120) {
                bail!(
                    "the node did not answer within 2 minutes; see {}",
                    log_path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the node with SIGTERM, as a service manager would.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            match libc::pid_t::try_from(c.id()) {
                // SAFETY: kill has no memory-safety preconditions; the pid is our own
                // child's, not yet reaped, so it names no other process.
                Ok(pid) => unsafe {
                    libc::kill(pid, libc::SIGTERM);
                },
                Err(_) => {
                    let _ = c.kill();
                }
            }
            let _ = c.wait();
        }
    }
}

/// Runs `measure` with a bench node (not started yet) and the work dir; then, whether it
/// succeeded or not, stops the node and removes its VMs and the work dir (unless `keep`),
/// and prints the report. A missed target is reported, not an error.
pub fn with_node(
    zos: &Zos,
    dir: Option<PathBuf>,
    keep: bool,
    json: bool,
    measure: impl FnOnce(&mut BenchNode, &Path) -> Result<crate::table::Report>,
) -> Result<ExitCode> {
    let work = WorkDir::new(dir, keep)?;
    let mut node = BenchNode::new(zos, &work.root)?;
    let result = measure(&mut node, &work.root);
    node.stop();
    remove_vms(zos, &node.data_dir());
    drop(work);
    let report = result?;
    crate::table::emit(&report, json, crate::table::Report::print)?;
    Ok(ExitCode::SUCCESS)
}

/// The deployment file `yaml`, for `node`, signed by `key`.
pub fn deployment(key: &Keypair, node: PublicKey, yaml: &str) -> Result<Deployment> {
    let mut d = DeploymentFile::from_yaml_str(yaml)?.into_deployment(key.public(), node);
    d.sign(key);
    Ok(d)
}

/// How the deployments' workloads stand: still provisioning, failed (with the first
/// error's message), or done.
#[derive(Default)]
pub struct Tally {
    /// Deployments with a workload not yet settled.
    pub pending: usize,
    /// Deployments with a workload in error.
    pub failed: usize,
    /// "DEPLOYMENT: message" of the first workload in error.
    pub first_error: Option<String>,
}

impl Tally {
    /// Counts `list`.
    pub fn of(list: &[Deployment]) -> Tally {
        let mut t = Tally::default();
        for d in list {
            let states = d.workloads.iter().map(|w| w.result.as_ref());
            if let Some(r) = states
                .clone()
                .flatten()
                .find(|r| r.state == ResultState::Error)
            {
                t.failed += 1;
                t.first_error
                    .get_or_insert_with(|| format!("{}: {}", d.name, r.message));
            } else if states
                .clone()
                .any(|r| r.is_none_or(|r| r.state == ResultState::Init))
            {
                t.pending += 1;
            }
        }
        t
    }
}

fn measure(node: &mut BenchNode, count: usize, runs: usize) -> Result<Vec<Row>> {
    let key = Keypair::generate();
    eprintln!(
        "zos-bench node: building the image in {}",
        node.work.display()
    );
    let fl = image(&node.zos, &node.work, "busybox", 0)?;
    node.start(&key)?;
    let node_id = node.api(&key)?.node_id()?;
    let mut rows = Vec::new();

    // Signed before the clock starts: what is timed is the node's side (signature check,
    // admission, one database transaction) plus the HTTP round trip.
    eprintln!("zos-bench node: {count} zmount deployments through the API");
    let bodies: Vec<Deployment> = (0..count)
        .map(|i| deployment(&key, node_id, &one_zmount(&format!("d{i:05}"))))
        .collect::<Result<_>>()?;
    let secs = send_all(node, Via::Unix, &key, node_id, &bodies)?;
    let rate = count as f64 / secs;
    rows.push(Row {
        step: "deployments accepted per second".into(),
        value: rate,
        unit: "/s",
        floor: None,
        failed: 0,
        notes: format!(
            "{count} zmount-only deployments, {CLIENTS} clients, {secs:.2} s; target >= 1000/s: {}",
            if rate >= 1000.0 { "met" } else { "missed" }
        ),
    });

    let api = node.api(&key)?;
    let start = Instant::now();
    let tally = loop {
        let list = api.deployments(false)?.value;
        let tally = Tally::of(&list);
        if tally.pending == 0 {
            break tally;
        }
        if start.elapsed() > Duration::from_secs(600) {
            bail!(
                "{} deployments still provisioning after 10 minutes",
                tally.pending
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let provisioned = start.elapsed().as_secs_f64();
    rows.push(match tally.first_error {
        None => Row {
            step: "their disks provisioned (after accept)".into(),
            value: provisioned,
            unit: "s",
            floor: None,
            failed: 0,
            notes: format!("all {count} ok; ext4 disks made by 2 workers in the background"),
        },
        Some(first) => Row {
            step: "their disks provisioned: FAILED".into(),
            value: provisioned,
            unit: "s",
            floor: None,
            failed: tally.failed,
            notes: format!(
                "{} of {count} ended in error, {} ok (time until all settled); first: {first}",
                tally.failed,
                count - tally.failed
            ),
        },
    });

    eprintln!("zos-bench node: {count} gets");
    let mut latencies: Vec<f64> = Vec::with_capacity(count);
    for i in 0..count {
        let start = Instant::now();
        api.deployment(&format!("d{:05}", (i * 7919) % count))?;
        latencies.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    let p99 = latencies[((latencies.len() - 1) as f64 * 0.99).round() as usize];
    for (name, value) in [
        ("get latency p50", median(&latencies)),
        ("get latency p99", p99),
    ] {
        rows.push(Row {
            step: name.into(),
            value,
            unit: "ms",
            floor: None,
            failed: 0,
            notes: format!(
                "{count} signed GETs of one deployment, one client (its connection kept)"
            ),
        });
    }

    rows.extend(tls_rows(node, &key, node_id, count)?);

    eprintln!("zos-bench node: restart with {count} deployments stored");
    node.stop();
    let restart = node.start(&key)?;
    rows.push(Row {
        step: format!("node restart, {count} deployments"),
        value: restart,
        unit: "s",
        floor: None,
        failed: 0,
        notes: "SIGTERM, start, until the API answers (reconciling goes on in the background)"
            .into(),
    });

    eprintln!("zos-bench node: deploy to running vs zos run");
    let mut floor = Vec::new();
    let mut deployed = Vec::new();
    for i in 0..runs {
        floor.push(zos_run_to_mark(&node.zos, &node.work, &fl)?);
        deployed.push(deploy_to_mark(
            &api,
            &key,
            &format!("run{i}"),
            &format!("flist: {}", fl.display()),
        )?);
    }
    let (floor, deployed) = (
        Timing::of_seconds(floor, 0.0),
        Timing::of_seconds(deployed, 0.0),
    );
    let (f, d) = (floor.median, deployed.median);
    rows.push(Row {
        step: "zos run busybox, first output".into(),
        value: f,
        unit: "s",
        floor: Some(f),
        failed: 0,
        notes: format!("the floor; {}", floor.spread()),
    });
    rows.push(Row {
        step: "deploy busybox zmachine, first output".into(),
        value: d,
        unit: "s",
        floor: Some(f),
        failed: 0,
        notes: format!(
            "{:.2}x zos run, target 1.1x: {}; {}",
            d / f,
            if d / f <= 1.1 { "met" } else { "missed" },
            deployed.spread()
        ),
    });
    rows.extend(fair_service(&api, runs)?);
    Ok(rows)
}

/// Sends `bodies` through `via` from [`CLIENTS`] clients at once; returns the seconds taken.
fn send_all(
    node: &BenchNode,
    via: Via,
    key: &Keypair,
    node_id: PublicKey,
    bodies: &[Deployment],
) -> Result<f64> {
    let start = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = bodies
            .chunks(bodies.len().div_ceil(CLIENTS).max(1))
            .map(|chunk| {
                let api = node.api_via(via, key);
                s.spawn(move || -> Result<()> {
                    let api = api?;
                    api.pin_node_id(node_id);
                    for d in chunk {
                        api.create(d)?;
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
    Ok(start.elapsed().as_secs_f64())
}

/// Deployments/s and GET latency on TCP, TLS next to plain HTTP, interleaved in the same run.
/// Each client keeps its connection between requests (as zos-client does), so the TLS
/// handshake is paid once per client, not per request.
fn tls_rows(node: &BenchNode, key: &Keypair, node_id: PublicKey, count: usize) -> Result<Vec<Row>> {
    // Fewer than on the socket: each is one more disk for the workers to make meanwhile.
    let per_round = (count / 8).max(1);
    const ROUNDS: usize = 2;
    eprintln!(
        "zos-bench node: {} deployments and {count} gets each over TLS and plain HTTP",
        per_round * ROUNDS
    );
    let mut secs = [0.0f64; 2];
    for round in 0..ROUNDS {
        for (i, (via, prefix)) in [(Via::Plain, "p"), (Via::Tls, "t")].into_iter().enumerate() {
            let bodies: Vec<Deployment> = (0..per_round)
                .map(|j| {
                    deployment(
                        key,
                        node_id,
                        &one_zmount(&format!("{prefix}{round}x{j:05}")),
                    )
                })
                .collect::<Result<_>>()?;
            secs[i] += send_all(node, via, key, node_id, &bodies)?;
        }
    }
    let sent = (per_round * ROUNDS) as f64;
    let (plain_rate, tls_rate) = (sent / secs[0], sent / secs[1]);

    let (plain, tls) = (node.api_via(Via::Plain, key)?, node.api_via(Via::Tls, key)?);
    plain.pin_node_id(node_id);
    tls.pin_node_id(node_id);
    let mut latencies = [Vec::with_capacity(count), Vec::with_capacity(count)];
    for i in 0..count {
        let name = format!("d{:05}", (i * 7919) % count);
        for (api, times) in [&plain, &tls].into_iter().zip(latencies.iter_mut()) {
            let start = Instant::now();
            api.deployment(&name)?;
            times.push(start.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let (plain_p50, tls_p50) = (median(&latencies[0]), median(&latencies[1]));
    let verdict = |x: f64| if x >= 0.8 { "met" } else { "missed" };
    Ok(vec![
        Row {
            step: "deployments/s over TCP, plain HTTP".into(),
            value: plain_rate,
            unit: "/s",
            floor: None,
            failed: 0,
            notes: format!("{sent} zmount-only deployments, {CLIENTS} clients, each keeping its connection; the floor for TLS"),
        },
        Row {
            step: "deployments/s over TCP, TLS".into(),
            value: tls_rate,
            unit: "/s",
            floor: Some(plain_rate),
            failed: 0,
            notes: format!(
                "{:.2}x plain HTTP, target >= 0.8x: {}; interleaved with it in {ROUNDS} rounds",
                tls_rate / plain_rate,
                verdict(tls_rate / plain_rate)
            ),
        },
        Row {
            step: "get latency p50, plain HTTP".into(),
            value: plain_p50,
            unit: "ms",
            floor: None,
            failed: 0,
            notes: format!("{count} signed GETs, one client, its connection kept; the floor for TLS"),
        },
        Row {
            step: "get latency p50, TLS".into(),
            value: tls_p50,
            unit: "ms",
            floor: Some(plain_p50),
            failed: 0,
            notes: format!(
                "speed {:.2}x plain HTTP (its latency / this), target >= 0.8x: {}; alternating with plain",
                plain_p50 / tls_p50,
                verdict(plain_p50 / tls_p50)
            ),
        },
    ])
}

/// Deployments of [`FLOOD_WORKLOADS`] zmounts each that the flooding owner sends.
const FLOOD_DEPLOYMENTS: usize = 5;
/// Workloads per flooding deployment: the default `limits.workloads_per_deployment`.
const FLOOD_WORKLOADS: usize = 200;

/// A second owner's deploy-to-ok of one zmount on the idle node, then while another owner's
/// `FLOOD_DEPLOYMENTS x FLOOD_WORKLOADS` zmounts converge (target: within 1.5x); interleaved
/// over `runs`, medians. The flood is left to the node's removal at the end.
fn fair_service(api: &NodeClient, runs: usize) -> Result<Vec<Row>> {
    eprintln!("zos-bench node: a second owner's zmount, idle and during a flood");
    let (flooder, other) = (Keypair::generate(), Keypair::generate());
    let node_id = api.node_id()?;
    let (flood_api, other_api) = (
        NodeClient::new(api.url().clone(), flooder.clone())?,
        NodeClient::new(api.url().clone(), other.clone())?,
    );
    let mut idle = Vec::new();
    for i in 0..runs {
        idle.push(zmount_to_ok(
            &other_api,
            &other,
            node_id,
            &format!("idle{i}"),
        )?);
    }
    let mut flood = String::new();
    for i in 0..FLOOD_WORKLOADS {
        flood.push_str(&format!(
            "  - name: d{i}\n    type: zmount\n    data: {{ size: 16M }}\n"
        ));
    }
    for i in 0..FLOOD_DEPLOYMENTS {
        let yaml = format!("name: flood{i}\nworkloads:\n{flood}");
        flood_api.create(&deployment(&flooder, node_id, &yaml)?)?;
    }
    let mut busy = Vec::new();
    for i in 0..runs {
        busy.push(zmount_to_ok(
            &other_api,
            &other,
            node_id,
            &format!("busy{i}"),
        )?);
    }
    let pending = Tally::of(&flood_api.deployments(false)?.value).pending;
    let (idle, busy) = (Timing::of_seconds(idle, 0.0), Timing::of_seconds(busy, 0.0));
    let ratio = busy.median / idle.median;
    Ok(vec![
        Row {
            step: "second owner's zmount to ok, idle node".into(),
            value: idle.median,
            unit: "s",
            floor: Some(idle.median),
            failed: 0,
            notes: format!("the floor; {}", idle.spread()),
        },
        Row {
            step: "second owner's zmount to ok, node flooded".into(),
            value: busy.median,
            unit: "s",
            floor: Some(idle.median),
            failed: 0,
            notes: format!(
                "{ratio:.2}x idle, target 1.5x: {}; another owner's {FLOOD_DEPLOYMENTS} x \
                 {FLOOD_WORKLOADS} zmounts converging ({pending} of {FLOOD_DEPLOYMENTS} still \
                 pending after); {}",
                if ratio <= 1.5 { "met" } else { "missed" },
                busy.spread()
            ),
        },
    ])
}

/// The deployment file of `name` holding one 16M zmount, `data`: what the bench sends most.
fn one_zmount(name: &str) -> String {
    format!(
        "name: {name}\nworkloads:\n  - name: data\n    type: zmount\n    data: {{ size: 16M }}\n"
    )
}

/// Seconds from sending a one-zmount deployment `name` until its zmount is `ok`.
fn zmount_to_ok(api: &NodeClient, key: &Keypair, node: PublicKey, name: &str) -> Result<f64> {
    let d = deployment(key, node, &one_zmount(name))?;
    let start = Instant::now();
    api.create(&d)?;
    loop {
        let now = api.deployment(name)?.value;
        let tally = Tally::of(std::slice::from_ref(&now));
        if let Some(error) = tally.first_error {
            bail!("deployment {name} failed: {error}");
        }
        if tally.pending == 0 {
            return Ok(start.elapsed().as_secs_f64());
        }
        if start.elapsed() > Duration::from_secs(300) {
            bail!("deployment {name} was not ok after 5 minutes");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Seconds from sending a signed deployment `name` of one machine booting `root` (`flist:
/// PATH` or `image: REF`) until its console shows the marker (read through the API's log
/// endpoint); the deployment is deleted afterwards. Fails as soon as the workload ends in
/// error: a failed deployment has no time to report.
pub fn deploy_to_mark(api: &NodeClient, key: &Keypair, name: &str, root: &str) -> Result<f64> {
    let d = deployment(
        key,
        api.node_id()?,
        &format!(
            "name: {name}\nworkloads:\n  - name: vm\n    type: zmachine\n    data: {{ {root} }}\n"
        ),
    )?;
    let start = Instant::now();
    api.create(&d)?;
    let workload = &d.workloads[0].name;
    let mut last_check = start;
    let secs = loop {
        // Before its VM exists the log is a 404: keep asking.
        let mut text = Vec::new();
        let read = api.logs(name, workload, |chunk| {
            text.extend_from_slice(chunk);
            Ok(())
        });
        if read.is_ok() && String::from_utf8_lossy(&text).contains(MARK) {
            break start.elapsed().as_secs_f64();
        }
        // Now and then, not every pass: each extra request adds to what is timed.
        if last_check.elapsed() > Duration::from_millis(500) {
            last_check = Instant::now();
            let now = api.deployment(name)?.value;
            if let Some(error) = Tally::of(std::slice::from_ref(&now)).first_error {
                bail!("deployment {name} failed before printing its marker: {error}");
            }
        }
        if start.elapsed() > Duration::from_secs(300) {
            bail!("deployment {name} never printed its marker");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    api.remove(name)
        .context("deleting the benchmark deployment")?;
    Ok(secs)
}

fn print(rows: &[Row]) {
    print_value_rows(rows.iter().map(|r| ValueRow {
        step: &r.step,
        value: r.value,
        unit: r.unit,
        floor: r.floor,
        notes: &r.notes,
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use zos_types::WorkloadResult;

    fn with_state(key: &Keypair, name: &str, state: Option<ResultState>) -> Deployment {
        let mut d = deployment(key, key.public(), &one_zmount(name)).unwrap();
        d.workloads[0].result = state.map(|state| WorkloadResult {
            state,
            message: format!("{name} says so"),
            data: serde_json::Value::Null,
            created: 0,
        });
        d
    }

    #[test]
    fn a_deployment_in_error_counts_as_failed_not_done() {
        let key = Keypair::generate();
        let list = [
            with_state(&key, "ok", Some(ResultState::Ok)),
            with_state(&key, "bad", Some(ResultState::Error)),
            with_state(&key, "new", Some(ResultState::Init)),
            with_state(&key, "unseen", None),
        ];
        let t = Tally::of(&list);
        assert_eq!((t.pending, t.failed), (2, 1));
        assert_eq!(t.first_error.as_deref(), Some("bad: bad says so"));
        let done = Tally::of(&list[..1]);
        assert_eq!((done.pending, done.failed, done.first_error), (0, 0, None));
    }
}

//! `zos-bench kube`: a Kubernetes cluster of zmachines (`zos_client::kube`, as `zos kube
//! create` builds it) with the k3s stand-in (busybox honouring k3s's environment contract),
//! from sending it until every worker has joined the master, against deploying three plain
//! zmachines until all three print their marker (the floor, same run); then scaling its
//! workers 2 → 4 (until the new ones joined) and back to 2 (until the two are gone).

use crate::image::{image, MARK};
use crate::measure::{accel_note, progress};
use crate::node::{deployment, with_node, BenchNode};
use crate::stats::Timing;
use crate::table::{Report, Row, Target};
use crate::zos_bin::Zos;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};
use zos_client::kube::{Cluster, Root};
use zos_client::NodeClient;
use zos_types::{ByteSize, Deployment, Keypair, WorkloadName};

/// Target: create-to-all-joined within this factor of three plain machines' deploy.
const TARGET: f64 = 1.3;
/// The stand-in's scripts, as the tests use them.
const STANDIN: &str = include_str!("../k3s-standin/standin");
const JOIN: &str = include_str!("../k3s-standin/join");
/// How long any one wait may take.
const LIMIT: Duration = Duration::from_secs(300);

/// Runs the benchmark and prints its table. A missed target is reported, not an error.
pub fn bench_kube(
    zos: &Zos,
    dir: Option<PathBuf>,
    keep: bool,
    runs: usize,
    json: bool,
) -> Result<ExitCode> {
    with_node(zos, dir, keep, json, |node, work| {
        measure(node, zos, work, runs.max(1))
    })
}

fn measure(node: &mut BenchNode, zos: &Zos, work: &Path, runs: usize) -> Result<Report> {
    let key = Keypair::generate();
    node.start(&key)?;
    let api = node.api(&key)?;
    let plain = image(zos, work, "plain", 0)?;
    let standin = standin(zos, work)?;
    let (mut floor, mut create, mut up, mut down) = (vec![], vec![], vec![], vec![]);
    for i in 0..runs {
        progress(&format!(
            "zos-bench kube: run {}/{runs}: three plain machines (the floor)",
            i + 1
        ));
        floor.push(three_machines(&api, &key, &format!("plain{i}"), &plain)?);
        progress("zos-bench kube: a cluster of 1 master and 2 workers, until both joined");
        let name = format!("kube{i}");
        let mut cluster = Cluster {
            masters: 1,
            workers: 2,
            root: Root::Flist(standin.display().to_string()),
            cpu: 1,
            memory: ByteSize(128 * ByteSize::MIB),
            disk: ByteSize(100 * ByteSize::MIB),
            ssh_key: None,
            api_port: 20443 + i as u16,
            ip_range: format!("10.{}.0.0/16", 100 + i)
                .parse()
                .context("a cluster range")?,
        };
        let token = zos_seal::seal(&api.node_id()?, b"benchtoken1")?;
        create.push(send_until_joined(&api, &key, &name, &cluster, &token)?);
        progress("zos-bench kube: scale 2 -> 4 workers, until the new ones joined");
        cluster.workers = 4;
        up.push(send_until_joined(&api, &key, &name, &cluster, &token)?);
        progress("zos-bench kube: scale 4 -> 2 workers, until the two are gone");
        cluster.workers = 2;
        down.push(send_until_gone(
            &api,
            &key,
            &name,
            &cluster,
            &token,
            &node.data_dir().join("vms"),
        )?);
        api.remove(&name)
            .context("removing the benchmark cluster")?;
    }
    let accel = accel_note(zos_vmm::host::Accel::Auto.resolve());
    let (c, f) = (
        Timing::of_seconds(create, 0.0),
        Timing::of_seconds(floor, 0.0),
    );
    let ratio = c.median / f.median;
    let met = ratio <= TARGET;
    let mut rows = vec![Row {
        step: "kube create, 1 master + 2 workers, to all joined".into(),
        value: c.median,
        unit: "s",
        floor: Some(f.median),
        notes: format!(
            "{ratio:.2}x the floor (deploying three plain zmachines until each printed), \
             target <= {TARGET}x: {}; {}; {accel}",
            if met { "met" } else { "missed" },
            c.spread(),
        ),
    }];
    for (step, values) in [
        ("kube scale 2 -> 4 workers, to both joined", up),
        ("kube scale 4 -> 2 workers, to both gone", down),
    ] {
        let t = Timing::of_seconds(values, 0.0);
        rows.push(Row {
            step: step.into(),
            value: t.median,
            unit: "s",
            floor: None,
            notes: format!("no target; {}; {accel}", t.spread()),
        });
    }
    let targets = vec![Target {
        name: "kube create to all joined / floor".into(),
        value: ratio,
        target: format!("<= {TARGET}x"),
        met,
    }];
    Ok(Report { rows, targets })
}

/// The stand-in image packed in `work` (the node's flist dir), its entrypoint `/standin`.
fn standin(zos: &Zos, work: &Path) -> Result<PathBuf> {
    let root = work.join("standin-root");
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    std::fs::copy("/bin/busybox", bin.join("busybox"))
        .context("copying /bin/busybox into the image (install busybox-static: scripts/setup)")?;
    for applet in [
        "sh", "cat", "mkdir", "printf", "echo", "nc", "sleep", "grep",
    ] {
        std::os::unix::fs::symlink("busybox", bin.join(applet))
            .with_context(|| format!("linking {applet}"))?;
    }
    for (name, text) in [("standin", STANDIN), ("join", JOIN)] {
        let path = root.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .with_context(|| format!("making {} executable", path.display()))?;
    }
    let fl = crate::image::pack_root(zos, work, &root, "standin")?;
    let config = r#"zos.image={"entrypoint":["/standin"],"env":["PATH=/bin"],"os":"linux","architecture":"amd64"}"#;
    let status = crate::image::zos_in(zos, work)
        .args(["flist", "tag"])
        .arg(&fl)
        .args(["set", config])
        .stdout(Stdio::null())
        .status()
        .context("starting zos flist tag")?;
    if !status.success() {
        bail!("zos flist tag {} failed: {status}", fl.display());
    }
    Ok(fl)
}

/// Seconds from sending a deployment of three machines of `fl` until all three printed
/// the marker; the deployment is removed afterwards.
fn three_machines(api: &NodeClient, key: &Keypair, name: &str, fl: &Path) -> Result<f64> {
    let mut yaml = format!("name: {name}\nworkloads:\n");
    for i in 1..=3 {
        yaml += &format!(
            "  - name: vm{i}\n    type: zmachine\n    data: {{ flist: {}, memory: 128M }}\n",
            fl.display()
        );
    }
    let d = deployment(key, api.node_id()?, &yaml)?;
    let start = Instant::now();
    api.create(&d)?;
    for w in &d.workloads {
        while !console(api, name, &w.name).contains(MARK) {
            check_time(start, name)?;
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let secs = start.elapsed().as_secs_f64();
    api.remove(name)
        .context("removing the floor's deployment")?;
    Ok(secs)
}

/// A workload's console as it is now (empty before its VM exists).
fn console(api: &NodeClient, name: &str, workload: &WorkloadName) -> String {
    let mut text = Vec::new();
    let _ = api.logs(name, workload, |chunk| {
        text.extend_from_slice(chunk);
        Ok(())
    });
    String::from_utf8_lossy(&text).into_owned()
}

fn check_time(start: Instant, name: &str) -> Result<()> {
    if start.elapsed() > LIMIT {
        bail!("{name} was not there after {}s", LIMIT.as_secs());
    }
    Ok(())
}

/// `cluster` as `name`'s next version, signed: the kept nodes' workloads unchanged.
fn signed(
    api: &NodeClient,
    key: &Keypair,
    name: &str,
    cluster: &Cluster,
    token: &str,
) -> Result<Deployment> {
    let file = cluster.file(name, token).map_err(anyhow::Error::msg)?;
    Ok(zos_client::plan(api, file, Path::new(name))?.sign(key))
}

/// Seconds from sending `cluster` until each of its workers says on its console that the
/// master welcomed it (the master answers a join only with the right token). Consoles are
/// read through the API, cheaply enough to ask often.
fn send_until_joined(
    api: &NodeClient,
    key: &Keypair,
    name: &str,
    cluster: &Cluster,
    token: &str,
) -> Result<f64> {
    let d = signed(api, key, name, cluster, token)?;
    let start = Instant::now();
    api.send(&d)?;
    for i in 1..=cluster.workers {
        let worker = WorkloadName::try_from(format!("worker{i}")).map_err(anyhow::Error::msg)?;
        while !console(api, name, &worker).contains(&format!("worker{i} joined")) {
            check_time(start, name)?;
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Seconds from sending `cluster` (fewer workers) until the node holds exactly its
/// workloads and the VMs of the workers it dropped are gone from `vms` (the node's VM dir).
fn send_until_gone(
    api: &NodeClient,
    key: &Keypair,
    name: &str,
    cluster: &Cluster,
    token: &str,
    vms: &Path,
) -> Result<f64> {
    let d = signed(api, key, name, cluster, token)?;
    let start = Instant::now();
    api.send(&d)?;
    let dropped = |entry: &str| {
        entry
            .rsplit_once("-worker")
            .and_then(|(_, n)| n.parse::<u32>().ok())
            .is_some_and(|n| n > cluster.workers)
    };
    loop {
        let now = api.deployment(name)?.value;
        let left = std::fs::read_dir(vms)
            .with_context(|| format!("listing {}", vms.display()))?
            .filter_map(|e| e.ok())
            .any(|e| dropped(&e.file_name().to_string_lossy()));
        if now.version == d.version && !left {
            return Ok(start.elapsed().as_secs_f64());
        }
        check_time(start, name)?;
        std::thread::sleep(Duration::from_millis(50));
    }
}

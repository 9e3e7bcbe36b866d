//! `zos-bench pull`: deploying a container image by reference, the node importing it from a
//! registry, against what a user would otherwise do in the same run: `skopeo copy` of the
//! image to a local directory plus deploying a local flist of it (cold), and deploying the
//! local flist alone (warm: the node has the image already). Then `exec true` in a running
//! container of the image, p50 and p99, against a signed API request.
//!
//! The registry is Debian's `docker-registry` on loopback, filled by `skopeo` from an OCI
//! layout written here; each run pushes a new image (busybox and a random file), so every
//! cold deploy is cold. Every wait is bounded; everything is removed at the end.

use crate::image::MARK;
use crate::measure::{accel_note, measure_quiet, progress};
use crate::node::{deploy_to_mark, with_node, BenchNode};
use crate::stats::Timing;
use crate::table::{Report, Row, Target};
use crate::zos_bin::Zos;
use anyhow::{bail, Context, Result};
use sha2::Digest;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};
use zos_client::NodeClient;
use zos_types::api::ExecRequest;
use zos_types::Keypair;

/// Target: a cold deploy within this factor of copying the image plus a local deploy.
const COLD_TARGET: f64 = 1.5;
/// Target: a warm deploy within this factor of deploying a local flist.
const WARM_TARGET: f64 = 1.1;
/// Random bytes in each image, so its layer is new to the node and has content to pull.
const IMAGE_EXTRA: u64 = 16 << 20;

/// Runs the benchmark and prints its table. A missed target is reported, not an error.
pub fn bench_pull(
    zos: &Zos,
    dir: Option<PathBuf>,
    keep: bool,
    runs: usize,
    json: bool,
) -> Result<ExitCode> {
    for program in ["docker-registry", "skopeo"] {
        if !on_path(program) {
            bail!("{program} is not installed: run scripts/setup");
        }
    }
    with_node(zos, dir, keep, json, |node, work| {
        let registry = Registry::start(work)?;
        // The registry is on loopback, which a node reaches only when told.
        node.add_config("allow_store_nets = [\"127.0.0.0/8\"]");
        measure(node, zos, work, &registry, runs.max(1))
    })
}

/// Whether `program` is on `PATH`.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

fn measure(
    node: &mut BenchNode,
    zos: &Zos,
    work: &Path,
    registry: &Registry,
    runs: usize,
) -> Result<Report> {
    let key = Keypair::generate();
    node.start(&key)?;
    let api = node.api(&key)?;
    let (mut cold, mut floor_cold, mut warm, mut local) = (vec![], vec![], vec![], vec![]);
    for i in 0..runs {
        progress(&format!(
            "zos-bench pull: run {}/{runs}: pushing a new image",
            i + 1
        ));
        let reference = format!("docker://127.0.0.1:{}/bench/img{i}:1", registry.port);
        push_image(work, i, &reference)?;
        progress("zos-bench pull: skopeo copy to a local dir, a local flist deployed (the floor)");
        let copied = measure_quiet(
            Command::new("skopeo")
                .args(["--insecure-policy", "copy", "-q", "--src-tls-verify=false"])
                .arg(&reference)
                .arg(format!("dir:{}", work.join(format!("copy{i}")).display())),
            "skopeo copy",
        )?
        .seconds;
        let fl = work.join(format!("local{i}.fl"));
        let store = format!("dir://{}", work.join("store").display());
        measure_quiet(
            zos.command()
                .args(["flist", "import", "-q"])
                .arg(&reference)
                .arg("-o")
                .arg(&fl)
                .args(["--store", &store]),
            "zos flist import",
        )?;
        let flist = format!("flist: {}", fl.display());
        let deployed = deploy_to_mark(&api, &key, &format!("local{i}"), &flist)?;
        progress("zos-bench pull: the node pulls the image itself, cold then warm");
        let image = format!("image: {reference}");
        cold.push(deploy_to_mark(&api, &key, &format!("cold{i}"), &image)?);
        warm.push(deploy_to_mark(&api, &key, &format!("warm{i}"), &image)?);
        floor_cold.push(copied + deployed);
        local.push(deployed);
    }
    progress("zos-bench pull: exec true in a running container, against a signed API request");
    let last = format!(
        "docker://127.0.0.1:{}/bench/img{}:1",
        registry.port,
        runs - 1
    );
    let (exec, api_call) = exec_latency(&api, &key, &last)?;
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    let mut pair = |step: &str, value: Vec<f64>, floor: Vec<f64>, what: &str, target: f64| {
        let (v, f) = (
            Timing::of_seconds(value, 0.0),
            Timing::of_seconds(floor, 0.0),
        );
        let ratio = v.median / f.median;
        let met = ratio <= target;
        rows.push(Row {
            step: step.into(),
            value: v.median,
            unit: "s",
            floor: Some(f.median),
            notes: format!(
                "{ratio:.2}x the floor ({what}), target <= {target}x: {}; {}; {}",
                if met { "met" } else { "missed" },
                v.spread(),
                accel_note(zos_vmm::host::Accel::Auto.resolve())
            ),
        });
        targets.push(Target {
            name: format!("{step} / floor"),
            value: ratio,
            target: format!("<= {target}x"),
            met,
        });
    };
    pair(
        "deploy image by reference, cold, to running",
        cold,
        floor_cold,
        "skopeo copy of the image to a local dir + deploying a local flist of it",
        COLD_TARGET,
    );
    pair(
        "deploy image by reference, warm, to running",
        warm,
        local,
        "deploying a local flist of the image",
        WARM_TARGET,
    );
    for (p, label) in [(50.0, "p50"), (99.0, "p99")] {
        let (v, f) = (percentile(&exec, p), percentile(&api_call, p));
        rows.push(Row {
            step: format!("exec true, {label}"),
            value: v * 1000.0,
            unit: "ms",
            floor: Some(f * 1000.0),
            notes: format!(
                "{:.2}x the floor (a signed API request: GET the deployment), no target; {} \
                 execs; {}",
                v / f,
                exec.len(),
                accel_note(zos_vmm::host::Accel::Auto.resolve())
            ),
        });
    }
    Ok(Report { rows, targets })
}

/// How many `exec true` (and API requests) are timed.
const EXECS: usize = 100;

/// Seconds each of [`EXECS`] `exec true` took in a running container of `reference`, and
/// each of as many signed API requests (the floor).
fn exec_latency(api: &NodeClient, key: &Keypair, reference: &str) -> Result<(Vec<f64>, Vec<f64>)> {
    let name = "exec";
    let d = crate::node::deployment(
        key,
        api.node_id()?,
        &format!(
            "name: {name}\nworkloads:\n  - name: vm\n    type: zmachine\n    data: {{ image: \
             {reference}, cmd: ['exec sleep 900'] }}\n"
        ),
    )?;
    api.create(&d)?;
    let workload = d.workloads[0].name.clone();
    let request = ExecRequest {
        argv: vec!["true".into()],
        ..ExecRequest::default()
    };
    // The outer error: the node refused the session; the inner one: `true` failed.
    let exec_true = || -> Result<Result<f64>> {
        let (_none, input) = std::sync::mpsc::channel();
        let start = Instant::now();
        let (code, error) = api.exec(name, &workload, &request, input, |_| Ok(()))?;
        Ok(match code {
            0 => Ok(start.elapsed().as_secs_f64()),
            _ => Err(anyhow::anyhow!(
                "exec true exited {code}: {}",
                error.unwrap_or_default()
            )),
        })
    };
    // Until the machine runs, exec is refused: asked again, for at most 5 minutes.
    let start = Instant::now();
    loop {
        match exec_true() {
            Ok(ran) => {
                ran?;
                break;
            }
            Err(e) if start.elapsed() > Duration::from_secs(300) => {
                bail!("exec never worked in the benchmark's container: {e:#}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        };
    }
    let mut exec = Vec::with_capacity(EXECS);
    let mut floor = Vec::with_capacity(EXECS);
    for _ in 0..EXECS {
        exec.push(exec_true()??);
        let start = Instant::now();
        api.deployment(name)?;
        floor.push(start.elapsed().as_secs_f64());
    }
    api.remove(name)
        .context("deleting the benchmark deployment")?;
    Ok((exec, floor))
}

/// The `p`th percentile of `values` (nearest rank).
fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len().max(1)) - 1]
}

/// `sha256:<hex>` of `bytes`.
fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex_of(&sha2::Sha256::digest(bytes)))
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes an OCI layout of a new image (busybox, `sh`, and [`IMAGE_EXTRA`] random bytes;
/// it prints [`MARK`]) and pushes it to `reference` with skopeo.
fn push_image(work: &Path, i: usize, reference: &str) -> Result<()> {
    let layout = work.join(format!("layout{i}"));
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
    let blob = |media: &str, bytes: &[u8]| -> Result<serde_json::Value> {
        let d = digest(bytes);
        let path = blobs.join(&d["sha256:".len()..]);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        Ok(serde_json::json!({ "mediaType": media, "digest": d, "size": bytes.len() }))
    };
    let layer = layer_tar()?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&layer).context("compressing the layer")?;
    let gz = gz.finish().context("compressing the layer")?;
    let layer_desc = blob("application/vnd.oci.image.layer.v1.tar+gzip", &gz)?;
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": { "Entrypoint": ["/bin/sh", "-c"], "Cmd": [format!("echo {MARK}")],
                    "Env": ["PATH=/bin"] },
        "rootfs": { "type": "layers", "diff_ids": [digest(&layer)] },
    });
    let config_desc = blob(
        "application/vnd.oci.image.config.v1+json",
        config.to_string().as_bytes(),
    )?;
    let manifest_type = "application/vnd.oci.image.manifest.v1+json";
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": manifest_type,
        "config": config_desc, "layers": [layer_desc],
    });
    let mut desc = blob(manifest_type, manifest.to_string().as_bytes())?;
    desc["annotations"] = serde_json::json!({ "org.opencontainers.image.ref.name": "1" });
    let index = serde_json::json!({ "schemaVersion": 2, "manifests": [desc] });
    std::fs::write(layout.join("index.json"), index.to_string()).context("writing index.json")?;
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .context("writing oci-layout")?;
    measure_quiet(
        Command::new("skopeo")
            .args(["--insecure-policy", "copy", "-q", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:1", layout.display()))
            .arg(reference),
        "skopeo copy to the registry",
    )
    .map(|_| ())
}

/// The image's one layer: busybox as /bin/busybox, /bin/sh, /bin/sleep and /bin/true, and a
/// random file.
fn layer_tar() -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let busybox = std::fs::read("/bin/busybox")
        .context("reading /bin/busybox (install busybox-static: scripts/setup)")?;
    let mut extra = Vec::new();
    std::fs::File::open("/dev/urandom")
        .context("opening /dev/urandom")?
        .take(IMAGE_EXTRA)
        .read_to_end(&mut extra)
        .context("reading /dev/urandom")?;
    // Every numeric field set: a reader refuses a blank one.
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        h
    };
    let mut file = |path: &str, mode: u32, data: &[u8]| -> Result<()> {
        let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
        tar.append_data(&mut h, path, data)
            .with_context(|| format!("adding {path} to the layer"))
    };
    file("bin/busybox", 0o755, &busybox)?;
    file("data.bin", 0o644, &extra)?;
    // `sleep` keeps the exec benchmark's container up; `true` is what it runs.
    for applet in ["sh", "sleep", "true"] {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        let path = format!("bin/{applet}");
        tar.append_link(&mut h, &path, "busybox")
            .with_context(|| format!("adding {path} to the layer"))?;
    }
    tar.into_inner().context("finishing the layer")
}

/// Debian's docker-registry on a free loopback port, storing in the work dir; killed when
/// dropped.
struct Registry {
    child: Child,
    port: u16,
}

impl Registry {
    fn start(work: &Path) -> Result<Registry> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("finding a free port")?
            .port();
        let config = work.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                work.join("registry").display()
            ),
        )
        .with_context(|| format!("writing {}", config.display()))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting docker-registry (install it with scripts/setup)")?;
        let registry = Registry { child, port };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if start.elapsed() > Duration::from_secs(20) {
                bail!("docker-registry did not listen on 127.0.0.1:{port} within 20 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(registry)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

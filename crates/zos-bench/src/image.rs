//! What `zos-bench vm` and `zos-bench node` share: a busybox image that prints a marker,
//! `zos run` timed until that marker, and the cleanup of VMs a run left behind.

use crate::zos_bin::Zos;
use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

/// What the guest prints first; its arrival on `zos run`'s stdout ends a timing.
pub const MARK: &str = "zos-bench-ready";

/// `zos` with its data and cache dirs inside `work`, so a benchmark touches nothing else.
pub fn zos_in(zos: &Zos, work: &Path) -> Command {
    let mut cmd = zos.command();
    cmd.env("ZOS_DATA_DIR", work.join("data"))
        .env("ZOS_CACHE_DIR", work.join("cache"));
    cmd
}

/// Packs busybox (plus `extra` bytes of random data in one file) into an flist whose image
/// config runs `echo MARK`.
pub fn image(zos: &Zos, work: &Path, name: &str, extra: u64) -> Result<PathBuf> {
    let root = work.join(format!("{name}-root"));
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    std::fs::copy("/bin/busybox", bin.join("busybox"))
        .context("copying /bin/busybox into the image (install busybox: scripts/setup)")?;
    for link in ["sh", "sleep"] {
        std::os::unix::fs::symlink("busybox", bin.join(link))
            .with_context(|| format!("linking {}", bin.join(link).display()))?;
    }
    if extra > 0 {
        let path = root.join("data.bin");
        let mut data =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut urandom = std::fs::File::open("/dev/urandom").context("opening /dev/urandom")?;
        std::io::copy(&mut (&mut urandom).take(extra), &mut data)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    pack_root(zos, work, &root, name)
}

/// Packs the tree `root` into `work/NAME.fl` (blocks in `work/store`) with an image config
/// whose command is `echo MARK`, then removes `root`.
pub fn pack_root(zos: &Zos, work: &Path, root: &Path, name: &str) -> Result<PathBuf> {
    let fl = work.join(format!("{name}.fl"));
    let store = format!("dir://{}", work.join("store").display());
    let status = zos_in(zos, work)
        .args(["flist", "pack"])
        .arg(root)
        .arg("-o")
        .arg(&fl)
        .args(["--store", &store])
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("starting {}", zos.path().display()))?;
    if !status.success() {
        bail!("zos flist pack {} failed: {status}", root.display());
    }
    let config = serde_json::json!({
        "entrypoint": ["/bin/sh", "-c"], "cmd": [format!("echo {MARK}")],
        "env": ["PATH=/bin"], "os": "linux", "architecture": "amd64",
    });
    let status = zos_in(zos, work)
        .args(["flist", "tag"])
        .arg(&fl)
        .arg("set")
        .arg(format!("zos.image={config}"))
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("starting {}", zos.path().display()))?;
    if !status.success() {
        bail!("zos flist tag {} failed: {status}", fl.display());
    }
    std::fs::remove_dir_all(root).with_context(|| format!("removing {}", root.display()))?;
    Ok(fl)
}

/// Seconds from `start` until `needle` shows on the child's stdout; the child is then left
/// to finish, its further output drained.
pub fn until_output(child: &mut Child, needle: &str, start: Instant) -> Result<f64> {
    let mut out = child
        .stdout
        .take()
        .context("the child's stdout is not piped")?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = out.read(&mut buf).context("reading the child's stdout")?;
        if n == 0 {
            bail!(
                "the guest ended before printing {needle:?}; it printed:\n{}",
                String::from_utf8_lossy(&seen)
            );
        }
        seen.extend_from_slice(&buf[..n]);
        if String::from_utf8_lossy(&seen).contains(needle) {
            let t = start.elapsed().as_secs_f64();
            // Drain the rest so the child never blocks on a full pipe.
            std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
            return Ok(t);
        }
    }
}

/// Seconds of `zos run --network none fl` until the marker reaches its stdout; fails if it
/// then exits non-zero. No network: the floors it is held against (a bare QEMU boot, a node's
/// zmachine) have none either; [`zos_run_networked_to_mark`] times the default.
pub fn zos_run_to_mark(zos: &Zos, work: &Path, fl: &Path) -> Result<f64> {
    zos_run_to_mark_in(zos_in(zos, work), fl, NO_NETWORK)
}

/// [`zos_run_to_mark`] with `zos run`'s default network (a tap on the local bridge).
pub fn zos_run_networked_to_mark(zos: &Zos, work: &Path, fl: &Path) -> Result<f64> {
    zos_run_to_mark_in(zos_in(zos, work), fl, &[])
}

/// [`zos_run_to_mark`] with QEMU's jail turned off (`ZOS_JAIL=off`): what the jail costs.
pub fn zos_run_unjailed_to_mark(zos: &Zos, work: &Path, fl: &Path) -> Result<f64> {
    let mut cmd = zos_in(zos, work);
    cmd.env("ZOS_JAIL", "off");
    zos_run_to_mark_in(cmd, fl, NO_NETWORK)
}

/// `zos run`'s flags for a container without a network.
pub const NO_NETWORK: &[&str] = &["--network", "none"];

fn zos_run_to_mark_in(mut cmd: Command, fl: &Path, flags: &[&str]) -> Result<f64> {
    let start = Instant::now();
    let mut child = cmd
        .arg("run")
        .args(flags)
        .arg(fl)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {:?} run", cmd.get_program()))?;
    let t = until_output(&mut child, MARK, start)?;
    let status = child
        .wait()
        .with_context(|| format!("waiting for zos run {}", fl.display()))?;
    if !status.success() {
        bail!("zos run {} failed: {status}", fl.display());
    }
    Ok(t)
}

/// Removes, with their processes and mounts, the VMs a benchmark left under `data_dir` (an
/// error half-way), before its work dir is deleted. Best effort: this runs on the way out.
pub fn remove_vms(zos: &Zos, data_dir: &Path) {
    let run = |args: &[&str]| {
        zos.command()
            .args(args)
            .env("ZOS_DATA_DIR", data_dir)
            .output()
    };
    // Listing reconciles each VM's record with its processes first.
    let _ = run(&["vm", "ps", "--json"]);
    let names: Vec<String> = std::fs::read_dir(data_dir.join("vms"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    for name in names {
        if let Err(e) = run(&["vm", "rm", &name]) {
            eprintln!("warning: removing VM {name}: {e}");
        }
    }
}

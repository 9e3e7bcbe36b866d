//! `zos bench vm`: micro-VM start time and memory, each next to a floor measured in the
//! same run (a bare QEMU boot of the same kernel and initramfs).

use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};
use zos_vmm::bootkit::{self, BootKit};
use zos_vmm::host;

/// What the guest prints first; its arrival on `zos run`'s stdout ends a timing.
pub(crate) const MARK: &str = "zos-bench-ready";

/// Runs the VM benchmark and prints its table.
pub fn bench_vm(dir: Option<PathBuf>, keep: bool, runs: usize, json: bool) -> Result<ExitCode> {
    let work = match dir {
        Some(d) => {
            std::fs::create_dir_all(&d)?;
            d
        }
        None => tempfile::Builder::new()
            .prefix("zos-bench-vm.")
            .tempdir_in("/var/tmp")?
            .keep(),
    };
    let result = measure(&work, runs.max(1));
    if !keep {
        remove_vms(&work.join("data"));
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

#[derive(serde::Serialize)]
struct Row {
    step: String,
    seconds: Option<f64>,
    floor_seconds: Option<f64>,
    mib: Option<f64>,
    notes: String,
}

fn measure(work: &Path, runs: usize) -> Result<Vec<Row>> {
    let kit = BootKit::locate(&bootkit::default_dir())?;
    let (initramfs, _) = kit.initramfs(&bootkit::locate_init()?)?;
    eprintln!("bench vm: building the images in {}", work.display());
    let small = image(work, "busybox", 0)?;
    let big = image(work, "big", 1 << 30)?;

    let mut floor = Vec::new();
    let mut run_small = Vec::new();
    let mut run_big = Vec::new();
    // Interleaved, so a slow phase of the host hits every step alike.
    for i in 0..runs {
        eprintln!("bench vm: run {}/{runs}", i + 1);
        floor.push(bare_boot(&kit.kernel, &initramfs)?);
        run_small.push(zos_run_to_mark(work, &small)?);
        run_big.push(zos_run_to_mark(work, &big)?);
    }
    eprintln!("bench vm: ten at once");
    let ten = ten_at_once(work, &small)?;
    eprintln!("bench vm: idle memory");
    let (per_vm, parts) = idle_memory(work, &small, 3)?;

    let f = median(&floor);
    let mut rows = vec![Row {
        step: "bare qemu boot to /init".into(),
        seconds: Some(f),
        floor_seconds: Some(f),
        mib: None,
        notes: format!(
            "the floor: same kernel + initramfs, no zos; {}",
            range(&floor)
        ),
    }];
    for (name, times) in [
        ("zos run busybox, first output", &run_small),
        ("zos run 1 GiB image, first output", &run_big),
    ] {
        rows.push(Row {
            step: name.into(),
            seconds: Some(median(times)),
            floor_seconds: Some(f),
            mib: None,
            notes: format!("{:.2}x floor; {}", median(times) / f, range(times)),
        });
    }
    rows.push(Row {
        step: "ten zos run at once, all exited".into(),
        seconds: Some(ten),
        floor_seconds: Some(f),
        mib: None,
        notes: format!("{:.2}x one floor boot, {} host CPUs", ten / f, host::cpus()),
    });
    rows.push(Row {
        step: "host memory per idle 256 MiB container".into(),
        seconds: None,
        floor_seconds: None,
        mib: Some(per_vm),
        notes: parts,
    });
    Ok(rows)
}

pub(crate) fn zos(work: &Path) -> Command {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("zos"));
    let mut cmd = Command::new(exe);
    cmd.env("ZOS_DATA_DIR", work.join("data"))
        .env("ZOS_CACHE_DIR", work.join("cache"));
    cmd
}

/// Packs busybox (plus `extra` bytes of random data in one file) into an flist whose image
/// config runs `echo MARK`.
pub(crate) fn image(work: &Path, name: &str, extra: u64) -> Result<PathBuf> {
    let root = work.join(format!("{name}-root"));
    std::fs::create_dir_all(root.join("bin"))?;
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).context("copying /bin/busybox")?;
    std::os::unix::fs::symlink("busybox", root.join("bin/sh"))?;
    std::os::unix::fs::symlink("busybox", root.join("bin/sleep"))?;
    if extra > 0 {
        let mut data = std::fs::File::create(root.join("data.bin"))?;
        let mut urandom = std::fs::File::open("/dev/urandom")?;
        std::io::copy(&mut (&mut urandom).take(extra), &mut data)?;
    }
    let fl = work.join(format!("{name}.fl"));
    let store = format!("dir://{}", work.join("store").display());
    let status = zos(work)
        .args(["flist", "pack"])
        .arg(&root)
        .arg("-o")
        .arg(&fl)
        .args(["--store", &store])
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("packing {}", root.display());
    }
    let config = serde_json::json!({
        "entrypoint": ["/bin/sh", "-c"], "cmd": [format!("echo {MARK}")],
        "env": ["PATH=/bin"], "os": "linux", "architecture": "amd64",
    });
    let status = zos(work)
        .args(["flist", "tag"])
        .arg(&fl)
        .arg("set")
        .arg(format!("zos.image={config}"))
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("tagging {}", fl.display());
    }
    std::fs::remove_dir_all(&root)?;
    Ok(fl)
}

/// Seconds until `needle` shows on the child's stdout; the child is then left to finish.
fn until_output(child: &mut Child, needle: &str, start: Instant) -> Result<f64> {
    let mut out = child.stdout.take().context("no stdout")?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = out.read(&mut buf)?;
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

/// The floor: QEMU with the same kernel and base initramfs, until `zos-init` (as `/init`)
/// prints its first line (it has no config here, so it says so and powers off).
fn bare_boot(kernel: &Path, initramfs: &Path) -> Result<f64> {
    let start = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "microvm,accel=tcg",
            "-cpu",
            "max",
            "-m",
            "256M",
            "-nodefaults",
        ])
        .args([
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 panic=-1 {} quiet loglevel=3",
            host::tcg_kernel_args()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let t = until_output(&mut child, "zos-init", start);
    let _ = child.kill();
    let _ = child.wait();
    t
}

pub(crate) fn zos_run_to_mark(work: &Path, fl: &Path) -> Result<f64> {
    let start = Instant::now();
    let mut child = zos(work)
        .arg("run")
        .arg(fl)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let t = until_output(&mut child, MARK, start)?;
    let status = child.wait()?;
    if !status.success() {
        bail!("zos run {} failed: {status}", fl.display());
    }
    Ok(t)
}

fn ten_at_once(work: &Path, fl: &Path) -> Result<f64> {
    let start = Instant::now();
    let children: Vec<Child> = (0..10)
        .map(|_| {
            zos(work)
                .arg("run")
                .arg(fl)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
        })
        .collect::<std::io::Result<_>>()?;
    let mut failed = 0;
    for mut c in children {
        if !c.wait()?.success() {
            failed += 1;
        }
    }
    if failed > 0 {
        bail!("{failed} of ten concurrent zos run failed");
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Starts `n` idle containers, waits until they are up and settled, and returns the mean
/// host memory per container (PSS of QEMU + virtiofsd + the flist mount) and a breakdown.
fn idle_memory(work: &Path, fl: &Path, n: usize) -> Result<(f64, String)> {
    let mut names = Vec::new();
    for i in 0..n {
        let name = format!("idle{i}");
        let out = zos(work)
            .args(["run", "-d", "--memory", "256M", "--name", &name])
            .arg(fl)
            // The image's entrypoint is `sh -c`: this replaces its command.
            .args(["--", &format!("echo {MARK}; exec sleep 100000")])
            .output()?;
        if !out.status.success() {
            bail!(
                "starting an idle container: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        names.push(name);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    for name in &names {
        let log = work.join("data/vms").join(name).join("console.log");
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(MARK)
        {
            if Instant::now() > deadline {
                bail!("{name} did not come up");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    std::thread::sleep(Duration::from_secs(3));
    let mut total = 0.0;
    for name in &names {
        let out = zos(work).args(["vm", "status", "--json", name]).output()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        total += v["memory_bytes"].as_f64().unwrap_or(0.0) / 1048576.0;
    }
    let pss = |pattern: &str| -> f64 {
        let pids = pids_matching(pattern, &work.join("data/vms"));
        pids.iter().filter_map(|p| pss_mib(*p)).sum::<f64>() / n as f64
    };
    let parts = format!(
        "mean of {n}; qemu {:.1} + virtiofsd {:.1} + flist mount {:.1} MiB (PSS)",
        pss("qemu-system"),
        pss("virtiofsd"),
        pss("flist")
    );
    for name in &names {
        let _ = zos(work).args(["vm", "rm", name]).output();
    }
    Ok((total / n as f64, parts))
}

fn pids_matching(pattern: &str, under: &Path) -> Vec<i32> {
    let under = under.to_string_lossy();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains(pattern) && cmd.contains(under.as_ref())
        })
        .collect()
}

fn pss_mib(pid: i32) -> Option<f64> {
    zos_vmm::pss_bytes(pid).map(|b| b as f64 / (1024.0 * 1024.0))
}

/// Removes, with their processes and mounts, the VMs a benchmark left under `data_dir` (an
/// error half-way), before its work dir is deleted.
pub(crate) fn remove_vms(data_dir: &Path) {
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let zos = |args: &[&str]| {
        Command::new(&exe)
            .args(args)
            .env("ZOS_DATA_DIR", data_dir)
            .output()
    };
    let _ = zos(&["vm", "ps", "--json"]);
    let names: Vec<String> = std::fs::read_dir(data_dir.join("vms"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    for name in names {
        let _ = zos(&["vm", "rm", &name]);
    }
}

pub(crate) fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

pub(crate) fn range(v: &[f64]) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(0.0, f64::max);
    format!("median of {}, range {min:.2}-{max:.2} s", v.len())
}

fn print(rows: &[Row]) {
    println!(
        "{:<40} | {:>7} | {:>7} | {:>7} | notes",
        "step", "seconds", "floor s", "MiB"
    );
    let opt = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |v| format!("{v:.p$}"));
    for r in rows {
        println!(
            "{:<40} | {:>7} | {:>7} | {:>7} | {}",
            r.step,
            opt(r.seconds, 2),
            opt(r.floor_seconds, 2),
            opt(r.mib, 1),
            r.notes
        );
    }
    if let (Some(f), Some(z)) = (rows[0].seconds, rows[1].seconds) {
        let ratio = z / f;
        println!(
            "zos run / bare boot {ratio:.2} ({} 1.25)",
            if ratio <= 1.25 { "<= met" } else { "> missed" }
        );
    }
}

//! `zos-bench vm`: micro-VM start time and memory, each next to a floor measured in the
//! same run (a bare QEMU boot of the same kernel and initramfs, with the same accelerator
//! `zos run` picks).

use crate::image::{
    image, remove_vms, until_output, zos_in, zos_run_networked_to_mark, zos_run_to_mark,
    zos_run_unjailed_to_mark, MARK, NO_NETWORK,
};
use crate::stats::Timing;
use crate::table::{fmt, print_grid};
use crate::workdir::WorkDir;
use crate::zos_bin::Zos;
use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};
use zos_vmm::bootkit::{self, BootKit};
use zos_vmm::host::{self, Accel};

/// Target from the issue: `zos run` within this factor of the bare boot (medians).
const RUN_TARGET: f64 = 1.25;
/// Target from issue 11: the jail costs at most this factor in start time.
const JAIL_TARGET: f64 = 1.05;
/// Target from issue 12: host memory per idle 256 MiB container, MiB (PSS).
const DENSITY_TARGET_MIB: f64 = 96.0;
/// Target from issue 12: host memory per idle 256 MiB disk-image VM, MiB (PSS).
const DISK_VM_TARGET_MIB: f64 = 384.0;

/// Runs the VM benchmark and prints its table.
pub fn bench_vm(
    zos: &Zos,
    dir: Option<PathBuf>,
    keep: bool,
    runs: usize,
    json: bool,
) -> Result<ExitCode> {
    let work = WorkDir::new(dir, keep)?;
    let result = measure(zos, &work.root, runs.max(1));
    if !keep {
        remove_vms(zos, &work.path("data"));
    }
    drop(work);
    let rows = result?;
    crate::table::emit(&rows, json, |rows| print(rows))?;
    Ok(ExitCode::SUCCESS)
}

/// One line of the table.
#[derive(serde::Serialize)]
struct Row {
    step: String,
    seconds: Option<f64>,
    floor_seconds: Option<f64>,
    mib: Option<f64>,
    notes: String,
}

fn measure(zos: &Zos, work: &Path, runs: usize) -> Result<Vec<Row>> {
    let kit = BootKit::locate(&bootkit::default_dir())?;
    let (initramfs, _) = kit.initramfs(&bootkit::locate_init()?)?;
    // `zos run` is started with its default, --accel auto: the floor resolves it the same way.
    let accel = Accel::Auto.resolve();
    eprintln!("zos-bench vm: building the images in {}", work.display());
    let small = image(zos, work, "busybox", 0)?;
    let big = image(zos, work, "big", 1 << 30)?;

    let mut floor = Vec::new();
    let mut run_small = Vec::new();
    let mut run_net = Vec::new();
    let mut run_unjailed = Vec::new();
    let mut run_big = Vec::new();
    // Interleaved, so a slow phase of the host hits every step alike.
    for i in 0..runs {
        eprintln!("zos-bench vm: run {}/{runs}", i + 1);
        floor.push(bare_boot(&kit.kernel, &initramfs, accel)?);
        run_small.push(zos_run_to_mark(zos, work, &small)?);
        run_net.push(zos_run_networked_to_mark(zos, work, &small)?);
        run_unjailed.push(zos_run_unjailed_to_mark(zos, work, &small)?);
        run_big.push(zos_run_to_mark(zos, work, &big)?);
    }
    eprintln!("zos-bench vm: ten at once");
    let ten = ten_at_once(zos, work, &small)?;
    eprintln!("zos-bench vm: idle memory");
    let (per_vm, parts) = idle_memory(zos, work, &small, 3, NO_NETWORK)?;
    let (per_vm_net, parts_net) = idle_memory(zos, work, &small, 3, &[])?;
    eprintln!("zos-bench vm: idle disk-image VM");
    let disk_fl = crate::disk_image::disk_image_flist(zos, work)?;
    let disk_vm = idle_disk_vm_memory(zos, work, &disk_fl)?;
    eprintln!("zos-bench vm: noisy neighbour");
    let (_, fair) = crate::vm_fair::noisy_neighbour(zos, work, &small, runs.max(3))?;

    let floor = Timing::of_seconds(floor, 0.0);
    let f = floor.median;
    let mut rows = vec![Row {
        step: "bare qemu boot to /init".into(),
        seconds: Some(f),
        floor_seconds: Some(f),
        mib: None,
        notes: format!(
            "the floor: same kernel + initramfs, accel={} as `zos run --accel auto`, no zos; {}",
            accel.as_str(),
            floor.spread()
        ),
    }];
    for (name, times) in [
        ("zos run busybox, first output", run_small),
        ("zos run 1 GiB image, first output", run_big),
    ] {
        let t = Timing::of_seconds(times, 0.0);
        rows.push(Row {
            step: name.into(),
            seconds: Some(t.median),
            floor_seconds: Some(f),
            mib: None,
            notes: format!("{:.2}x floor; {}", t.median / f, t.spread()),
        });
    }
    let jailed = rows[1].seconds.unwrap_or(f);
    let net = Timing::of_seconds(run_net, 0.0);
    rows.push(Row {
        step: "zos run busybox with its default network".into(),
        seconds: Some(net.median),
        floor_seconds: Some(f),
        mib: None,
        notes: format!(
            "a tap on the local bridge, NAT; {:.2}x the same run with --network none (the rows \
             above); {}",
            net.median / jailed,
            net.spread()
        ),
    });
    let unjailed = Timing::of_seconds(run_unjailed, 0.0);
    let cost = jailed / unjailed.median;
    rows.push(Row {
        step: "zos run busybox, QEMU not jailed".into(),
        seconds: Some(unjailed.median),
        floor_seconds: Some(f),
        mib: None,
        notes: format!(
            "ZOS_JAIL=off; the jail costs {cost:.2}x in start time ({} {JAIL_TARGET}); {}",
            if cost <= JAIL_TARGET {
                "<= met"
            } else {
                "> missed"
            },
            unjailed.spread()
        ),
    });
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
        notes: format!("--network none; {parts}; target <= {DENSITY_TARGET_MIB} MiB"),
    });
    rows.push(Row {
        step: "host memory per idle 256 MiB container, default network".into(),
        seconds: None,
        floor_seconds: None,
        mib: Some(per_vm_net),
        notes: format!(
            "{parts_net}; the network adds {:.1} MiB",
            per_vm_net - per_vm
        ),
    });
    rows.push(fit_row(per_vm_net));
    rows.push(Row {
        step: "host memory per idle 256 MiB disk-image VM".into(),
        seconds: None,
        floor_seconds: None,
        mib: Some(disk_vm),
        notes: format!(
            "SeaBIOS + syslinux + the kit's kernel, busybox idling (a stand-in for a \
             distribution's cloud image); target <= {DISK_VM_TARGET_MIB} MiB"
        ),
    });
    rows.push(Row {
        step: "noisy neighbour: work beside a guest spinning 2 vCPUs".into(),
        seconds: None,
        floor_seconds: None,
        mib: None,
        notes: fair,
    });
    Ok(rows)
}

/// How many idle 256 MiB containers this host's memory holds: by their measured PSS, and by
/// what a node's admission counts for each (`zos_vmm::limits::memory_demand`).
fn fit_row(per_vm_mib: f64) -> Row {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let host = mib(host::memory_bytes());
    let admitted = mib(zos_vmm::limits::memory_demand(256 << 20));
    Row {
        step: "idle 256 MiB containers that fit in the host's memory".into(),
        seconds: None,
        floor_seconds: None,
        mib: Some(host),
        notes: format!(
            "{:.0} by measured PSS; a node admits {:.0} ({admitted:.0} MiB counted each: guest \
             RAM + VMM overhead, before its reserve)",
            (host / per_vm_mib).floor(),
            (host / admitted).floor()
        ),
    }
}

/// The floor: QEMU with the same kernel and base initramfs, until `zos-init` (as `/init`)
/// prints its first line (it has no config here, so it says so and powers off).
fn bare_boot(kernel: &Path, initramfs: &Path, accel: Accel) -> Result<f64> {
    let start = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(bare_qemu_args(kernel, initramfs, accel, ""))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting qemu-system-x86_64 (install it: scripts/setup)")?;
    let t = until_output(&mut child, "zos-init", start);
    let _ = child.kill();
    let _ = child.wait();
    t
}

/// The arguments of a bare QEMU boot of `kernel` and `initramfs` with 256 MiB and one vCPU,
/// the serial console on stdout, `append` added to the kernel's command line. Machine, CPU
/// model and timing arguments follow `accel` as zos-vmm's do.
pub fn bare_qemu_args(
    kernel: &Path,
    initramfs: &Path,
    accel: Accel,
    append: &str,
) -> Vec<OsString> {
    let cpu = if accel == Accel::Kvm { "host" } else { "max" };
    let timing = if accel == Accel::Tcg {
        host::tcg_kernel_args()
    } else {
        String::new()
    };
    let mut args: Vec<OsString> = Vec::new();
    args.push("-M".into());
    args.push(format!("microvm,accel={}", accel.as_str()).into());
    for a in [
        "-cpu",
        cpu,
        "-m",
        "256M",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        "stdio",
        "-kernel",
    ] {
        args.push(a.into());
    }
    args.push(kernel.into());
    args.push("-initrd".into());
    args.push(initramfs.into());
    args.push("-append".into());
    args.push(format!("console=ttyS0 panic=-1 {timing} quiet loglevel=3 {append}").into());
    args
}

/// Seconds until ten `zos run` started together have all exited; fails if any failed.
fn ten_at_once(zos: &Zos, work: &Path, fl: &Path) -> Result<f64> {
    let start = Instant::now();
    let children: Vec<Child> = (0..10)
        .map(|_| {
            zos_in(zos, work)
                .arg("run")
                .arg(fl)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
        })
        .collect::<std::io::Result<_>>()
        .context("starting ten zos run")?;
    let mut failed = 0;
    for mut c in children {
        if !c.wait().context("waiting for zos run")?.success() {
            failed += 1;
        }
    }
    if failed > 0 {
        bail!("{failed} of ten concurrent zos run failed");
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Waits until VM `name` has printed the mark on its console (two minutes at most).
fn wait_for_mark(work: &Path, name: &str) -> Result<()> {
    let log = work.join("data/vms").join(name).join("console.log");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains(MARK)
    {
        if Instant::now() > deadline {
            bail!(
                "{name} did not come up within 2 minutes; see {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// The host memory of VM `name` (PSS of its processes, as `zos vm status` reports it), MiB.
fn memory_mib(zos: &Zos, work: &Path, name: &str) -> Result<f64> {
    let out = zos_in(zos, work)
        .args(["vm", "status", "--json", name])
        .output()
        .context("starting zos vm status")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("parsing zos vm status --json {name}"))?;
    Ok(v["memory_bytes"].as_f64().unwrap_or(0.0) / 1048576.0)
}

/// Boots the disk-image VM with 256 MiB, waits until it idles, and returns its host memory
/// (PSS, MiB).
fn idle_disk_vm_memory(zos: &Zos, work: &Path, fl: &Path) -> Result<f64> {
    let name = "disk0";
    let out = zos_in(zos, work)
        .args(["run", "-d", "--memory", "256M", "--name", name])
        .arg(fl)
        .output()
        .context("starting zos run -d")?;
    if !out.status.success() {
        bail!(
            "starting the disk-image VM: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let measured = wait_for_mark(work, name).and_then(|()| {
        std::thread::sleep(Duration::from_secs(3));
        memory_mib(zos, work, name)
    });
    let _ = zos_in(zos, work).args(["vm", "rm", name]).output();
    measured
}

/// Starts `n` idle containers (`zos run -d` with `flags`), waits until they are up and settled,
/// and returns the mean host memory per container (PSS of QEMU + virtiofsd + the flist mount)
/// and a breakdown.
fn idle_memory(
    zos: &Zos,
    work: &Path,
    fl: &Path,
    n: usize,
    flags: &[&str],
) -> Result<(f64, String)> {
    let mut names = Vec::new();
    for i in 0..n {
        let name = format!("idle{i}");
        let out = zos_in(zos, work)
            .args(["run", "-d", "--memory", "256M", "--name", &name])
            .args(flags)
            .arg(fl)
            // The image's entrypoint is `sh -c`: this replaces its command.
            .args(["--", &format!("echo {MARK}; exec sleep 100000")])
            .output()
            .context("starting zos run -d")?;
        if !out.status.success() {
            bail!(
                "starting an idle container: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        names.push(name);
    }
    for name in &names {
        wait_for_mark(work, name)?;
    }
    std::thread::sleep(Duration::from_secs(3));
    let mut total = 0.0;
    for name in &names {
        total += memory_mib(zos, work, name)?;
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
        let _ = zos_in(zos, work).args(["vm", "rm", name]).output();
    }
    Ok((total / n as f64, parts))
}

/// Processes whose command line holds `pattern` and the path `under`.
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

fn print(rows: &[Row]) {
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.step.clone(),
                fmt(r.seconds, 2),
                fmt(r.floor_seconds, 2),
                fmt(r.mib, 1),
                r.notes.clone(),
            ]
        })
        .collect();
    print_grid(["step", "seconds", "floor s", "MiB", "notes"], &cells);
    let first = |i: usize| rows.get(i).and_then(|r| r.seconds);
    if let (Some(f), Some(z)) = (first(0), first(1)) {
        let ratio = z / f;
        println!(
            "zos run / bare boot {ratio:.2} ({} {RUN_TARGET})",
            if ratio <= RUN_TARGET {
                "<= met"
            } else {
                "> missed"
            }
        );
    }
}

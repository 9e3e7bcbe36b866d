//! The VM lifecycle: create, start, stop, pause, resume, delete, status, wait.
//!
//! Every operation reads the VM's record from disk and checks the real processes, so any
//! number of managers (one after another, or a CLI beside the node) see the same truth. A
//! record says what should be; [`Vmm::status`] reconciles it with what is: a QEMU that died
//! is noticed there, its exit report (or console tail) recorded, and its helpers, mounts and
//! sockets cleaned up.

use crate::bootkit::{self, BootKit};
use crate::console;
use crate::disk::{self, DiskFormat};
use crate::host::{self, Accel};
use crate::proc::{pss_bytes, ProcRef};
use crate::qmp::Qmp;
use crate::rootfs::{self, Layers, MountHelper};
use crate::spec::{Boot, VmSpec};
use crate::{cidata, fsutil, Error, Result};
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use zos_init::{Control, ExitReport, GuestConfig, GuestDisk};

/// How a manager finds its tools and keeps its VMs.
#[derive(Debug, Clone)]
pub struct VmmConfig {
    /// Each VM lives in `<root>/<name>/`.
    pub root: PathBuf,
    /// The boot kit directory (see [`bootkit::default_dir`]).
    pub bootkit: PathBuf,
    /// The static `zos-init`; located with [`bootkit::locate_init`] when `None`.
    pub init: Option<PathBuf>,
    /// The `zos` binary, whose `zos flist mount` serves flists to VMs.
    pub zos: PathBuf,
    /// The block cache shared by all flist mounts.
    pub cache_dir: PathBuf,
    /// Size limit of that cache.
    pub cache_size: u64,
    /// `qemu-system-x86_64`.
    pub qemu: PathBuf,
    /// `virtiofsd`.
    pub virtiofsd: PathBuf,
    /// A console log is rotated past this size.
    pub console_max: u64,
}

impl VmmConfig {
    /// Defaults for `root`: tools from `PATH` (virtiofsd also from `~/.cargo/bin`, where
    /// `cargo install` puts it), the boot kit from [`bootkit::default_dir`].
    pub fn new(root: PathBuf, zos: PathBuf, cache_dir: PathBuf) -> VmmConfig {
        VmmConfig {
            root,
            bootkit: bootkit::default_dir(),
            init: None,
            zos,
            cache_dir,
            cache_size: 2 << 30,
            qemu: find_tool("qemu-system-x86_64"),
            virtiofsd: find_tool("virtiofsd"),
            console_max: 1 << 20,
        }
    }
}

fn find_tool(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.extend(["/usr/libexec", "/usr/lib/qemu"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Where a VM is in its life.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum VmState {
    /// Made, never started.
    Created,
    /// QEMU is running the guest.
    Running,
    /// Frozen by `pause`.
    Paused,
    /// A container's process ended (`code` as Docker reports it); `error` when it could not
    /// be started at all.
    Exited {
        /// Exit code.
        code: i32,
        /// Why the process could not run, if so.
        error: Option<String>,
    },
    /// Stopped on request, or a VM-mode guest powered itself off.
    Stopped,
    /// QEMU or a helper died unexpectedly, or the guest panicked.
    Crashed {
        /// What happened, with the console tail.
        reason: String,
    },
}

impl VmState {
    /// Whether QEMU is (supposed to be) up.
    pub fn is_active(&self) -> bool {
        matches!(self, VmState::Running | VmState::Paused)
    }

    /// One word for tables.
    pub fn word(&self) -> &'static str {
        match self {
            VmState::Created => "created",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Exited { .. } => "exited",
            VmState::Stopped => "stopped",
            VmState::Crashed { .. } => "crashed",
        }
    }
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmState::Exited { code, .. } => write!(f, "exited ({code})"),
            other => f.write_str(other.word()),
        }
    }
}

/// What [`Vmm::status`] reports.
#[derive(Debug, Clone, Serialize)]
pub struct VmInfo {
    /// The VM's name.
    pub name: String,
    /// Its state.
    #[serde(flatten)]
    pub state: VmState,
    /// How it was created.
    pub spec: VmSpec,
    /// QEMU's pid while active.
    pub pid: Option<i32>,
    /// The console log.
    pub console: PathBuf,
    /// Host memory used while active: PSS of QEMU + virtiofsd + the flist mount, bytes.
    pub memory_bytes: Option<u64>,
    /// Unix time of creation.
    pub created: u64,
}

/// The record of a VM, kept in `<dir>/vm.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    name: String,
    spec: VmSpec,
    created: u64,
    state: VmState,
    runtime: Option<Runtime>,
}

/// The processes of an active VM.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Runtime {
    qemu: ProcRef,
    virtiofsd: Option<ProcRef>,
    mount: Option<ProcRef>,
    /// Set by stop, so the exit that follows is a stop, not a crash.
    stop_requested: bool,
    /// Length of the console log when this boot started: a panic is looked for after it, not
    /// in an earlier boot's output.
    #[serde(default)]
    console_start: u64,
}

/// The manager: runs and tracks VMs under its root.
pub struct Vmm {
    cfg: VmmConfig,
}

/// File names inside a VM's directory.
const RECORD: &str = "vm.json";
const LOCK: &str = "lock";
const CONSOLE: &str = "console.log";
const EXIT: &str = "exit.json";
const QMP: &str = "qmp.sock";
const CONTROL: &str = "control.sock";
const VIRTIOFS: &str = "virtiofs.sock";
const INITRD: &str = "initrd.cpio";
const PIDFILE: &str = "qemu.pid";
const SEED: &str = "cidata.img";
/// The copy-on-write overlay a disk-image VM boots from.
const ROOT_OVERLAY: &str = "root.qcow2";
/// SeaBIOS built for `microvm`: it boots from virtio-mmio disks (QEMU's own microvm
/// firmware, qboot, only boots a kernel given with `-kernel`).
const DISK_FIRMWARE: &str = "/usr/share/seabios/bios-microvm.bin";

impl Vmm {
    /// A manager over `cfg.root` (created if missing).
    pub fn new(cfg: VmmConfig) -> Result<Vmm> {
        fs::create_dir_all(&cfg.root)
            .map_err(|e| Error::io(format!("creating {}", cfg.root.display()), e))?;
        Ok(Vmm { cfg })
    }

    /// The configuration.
    pub fn config(&self) -> &VmmConfig {
        &self.cfg
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.cfg.root.join(name)
    }

    /// Records a new VM; checks everything that can be checked before any VM starts.
    pub fn create(&self, name: &str, spec: VmSpec) -> Result<VmInfo> {
        check_name(name)?;
        self.check_spec(&spec)?;
        let dir = self.dir(name);
        if dir.exists() {
            return Err(Error::Invalid(format!(
                "a VM named {name:?} already exists (remove it first)"
            )));
        }
        // Built in a staging dir and renamed, so a failed create leaves nothing.
        let staging = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .tempdir_in(&self.cfg.root)
            .map_err(|e| Error::io(format!("creating a dir in {}", self.cfg.root.display()), e))?;
        if !matches!(spec.boot, Boot::Disk { .. }) {
            disk::create_disk(
                &Layers::of(staging.path()).image,
                spec.boot.root_size(),
                DiskFormat::Raw,
            )?;
        }
        let record = Record {
            name: name.to_string(),
            spec,
            created: now(),
            state: VmState::Created,
            runtime: None,
        };
        save(staging.path(), &record)?;
        let staged = staging.keep();
        fs::rename(&staged, &dir).map_err(|e| {
            let _ = fs::remove_dir_all(&staged);
            Error::io(format!("creating {}", dir.display()), e)
        })?;
        Ok(self.info(&dir, &record))
    }

    fn check_spec(&self, spec: &VmSpec) -> Result<()> {
        let (cpus, mem) = (host::cpus(), host::memory_bytes());
        if spec.cpus == 0 || spec.cpus > cpus {
            return Err(Error::Invalid(format!(
                "{} CPUs asked for, the host has {cpus}: use --cpus 1..={cpus}",
                spec.cpus
            )));
        }
        if spec.memory_mib < 64 || spec.memory_mib.saturating_mul(1 << 20) > mem {
            return Err(Error::Invalid(format!(
                "{} MiB of memory asked for; the host has {} MiB and a guest needs at least 64 MiB",
                spec.memory_mib,
                mem >> 20
            )));
        }
        if spec.accel == Accel::Kvm && !Path::new("/dev/kvm").exists() {
            return Err(Error::Invalid(
                "--accel kvm asked for, but this host has no /dev/kvm: use --accel auto".into(),
            ));
        }
        let root_size = spec.boot.root_size();
        if root_size < disk::MIN_DISK_SIZE || !root_size.is_multiple_of(512) {
            return Err(Error::Invalid(format!(
                "root size {root_size} bytes: use at least 16M, in whole 512-byte sectors"
            )));
        }
        let hostname_ok = !spec.hostname.is_empty()
            && spec.hostname.len() <= 63
            && spec
                .hostname
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !spec.hostname.starts_with('-')
            && !spec.hostname.ends_with('-');
        if !hostname_ok {
            return Err(Error::Invalid(format!(
                "bad hostname {:?}: use 1-63 letters, digits and '-'",
                spec.hostname
            )));
        }
        let flist = &spec.boot.flist().path;
        if !flist.is_file() {
            return Err(Error::Invalid(format!(
                "flist {} not found",
                flist.display()
            )));
        }
        match spec.boot {
            Boot::Container { .. } => {
                BootKit::locate(&self.cfg.bootkit)?;
                self.init_path()?;
            }
            Boot::Disk { .. } if !Path::new(DISK_FIRMWARE).is_file() => {
                return Err(Error::Invalid(format!(
                    "booting a disk image needs the SeaBIOS firmware {DISK_FIRMWARE}: install the seabios package (scripts/setup)"
                )));
            }
            _ => {}
        }
        let mut serials = std::collections::HashSet::new();
        for d in &spec.disks {
            let info = disk::disk_info(&d.path).map_err(|e| {
                Error::Invalid(format!("disk {} cannot be used: {e}", d.path.display()))
            })?;
            if let Some(why) = info.external_reference() {
                return Err(Error::Invalid(format!(
                    "disk {} cannot be attached: {why}; attach a disk without one",
                    d.path.display()
                )));
            }
            if info.format != d.format {
                return Err(Error::Invalid(format!(
                    "disk {} is {}, not {}",
                    d.path.display(),
                    info.format.as_qemu(),
                    d.format.as_qemu()
                )));
            }
            if !d.mount_at.starts_with('/') || !serials.insert(d.mount_at.clone()) {
                return Err(Error::Invalid(format!(
                    "disk mount point {:?} must be an absolute path, used once",
                    d.mount_at
                )));
            }
        }
        Ok(())
    }

    fn init_path(&self) -> Result<PathBuf> {
        match &self.cfg.init {
            Some(p) => Ok(p.clone()),
            None => bootkit::locate_init(),
        }
    }

    /// Starts a created or stopped VM. Returns once QEMU runs; the guest boots on its own.
    pub fn start(&self, name: &str) -> Result<VmInfo> {
        let dir = self.existing(name)?;
        let _lock = lock(&dir)?;
        let mut record = self.refresh(&dir)?;
        if record.state.is_active() {
            return Err(Error::State {
                name: name.into(),
                state: record.state.to_string(),
                what: "it is already running".into(),
            });
        }
        // A start cut short (the manager killed half-way) can leave QEMU or virtiofsd
        // running unrecorded, and mounts in place: end them before starting afresh.
        kill_strays(&dir);
        teardown(&dir, None, None);
        for stale in [EXIT, QMP, CONTROL, VIRTIOFS, PIDFILE] {
            let _ = fs::remove_file(dir.join(stale));
        }
        let mut started = Started::default();
        let console_start = fs::metadata(dir.join(CONSOLE)).map_or(0, |m| m.len());
        match self.launch(&dir, &record.spec, &mut started) {
            Ok(qemu) => {
                record.runtime = Some(Runtime {
                    qemu,
                    virtiofsd: started.virtiofsd,
                    mount: started.mount,
                    stop_requested: false,
                    console_start,
                });
                record.state = VmState::Running;
                save(&dir, &record)?;
                Ok(self.info(&dir, &record))
            }
            Err(e) => {
                teardown(&dir, started.virtiofsd, started.mount);
                Err(e)
            }
        }
    }

    /// Brings up the helpers and QEMU; what got started is left in `started` for cleanup.
    fn launch(&self, dir: &Path, spec: &VmSpec, started: &mut Started) -> Result<ProcRef> {
        let helper = MountHelper {
            zos: &self.cfg.zos,
            cache_dir: &self.cfg.cache_dir,
            cache_size: self.cfg.cache_size,
            log: dir.join("mount.log"),
        };
        let layers = Layers::of(dir);
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
        let mem = format!("{}M", spec.memory_mib);
        let accel = spec.accel.resolve();
        let machine = format!("microvm,accel={},memory-backend=mem", accel.as_str());
        let cpu = if accel == Accel::Kvm { "host" } else { "max" };
        let timing = if accel == Accel::Tcg {
            host::tcg_kernel_args()
        } else {
            String::new()
        };
        push(&[
            "-M",
            &machine,
            "-cpu",
            cpu,
            "-smp",
            &spec.cpus.to_string(),
            "-m",
            &mem,
        ]);
        // virtio-fs needs the guest RAM shareable with virtiofsd.
        push(&[
            "-object",
            &format!("memory-backend-memfd,id=mem,size={mem},share=on"),
        ]);
        push(&[
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ]);
        let sock = |file: &str| socket_path(dir, file);
        push(&[
            "-chardev",
            &format!(
                "file,id=con,path={},append=on",
                path_arg(&dir.join(CONSOLE))?
            ),
        ]);
        push(&["-serial", "chardev:con"]);
        push(&["-qmp", &format!("unix:{},server=on,wait=off", sock(QMP)?)]);
        let blk = "virtio-blk-device";
        match &spec.boot {
            Boot::Container { flist, process, .. } => {
                started.mount = Some(rootfs::mount_root(flist, &layers, &helper)?);
                started.virtiofsd = Some(self.start_virtiofsd(dir, &layers.merged)?);
                let kit = BootKit::locate(&self.cfg.bootkit)?;
                let (base, mut modules) = kit.initramfs(&self.init_path()?)?;
                // Each module costs boot time under TCG: load only what this VM has devices
                // for (no network devices yet; block only with disks).
                modules.retain(|m| {
                    let unused_net = m.contains("failover") || m.ends_with("virtio_net.ko");
                    let unused_blk = spec.disks.is_empty() && m.ends_with("virtio_blk.ko");
                    !unused_net && !unused_blk
                });
                let config = GuestConfig {
                    modules,
                    hostname: spec.hostname.clone(),
                    disks: spec
                        .disks
                        .iter()
                        .enumerate()
                        .map(|(i, d)| GuestDisk {
                            serial: disk_serial(i),
                            mount_at: d.mount_at.clone(),
                            fstype: "ext4".into(),
                        })
                        .collect(),
                    process: process.clone(),
                };
                bootkit::write_vm_initrd(&base, &config, &dir.join(INITRD))?;
                push(&[
                    "-kernel",
                    &path_arg(&kit.kernel)?,
                    "-initrd",
                    &path_arg(&dir.join(INITRD))?,
                ]);
                // ZOS_KERNEL_ARGS (e.g. "loglevel=7") shows the kernel's boot messages.
                let verbosity =
                    std::env::var("ZOS_KERNEL_ARGS").unwrap_or_else(|_| "quiet loglevel=3".into());
                push(&[
                    "-append",
                    // reboot=t: after a panic a triple fault resets at once (microvm has no
                    // keyboard controller to try first), and -no-reboot makes that an exit.
                    &format!("console=ttyS0 panic=-1 reboot=t {timing} {verbosity}"),
                ]);
                push_virtiofs(&mut args, &sock(VIRTIOFS)?);
                let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
                push(&["-device", "virtio-serial-device"]);
                push(&[
                    "-chardev",
                    &format!("file,id=exit,path={}", path_arg(&dir.join(EXIT))?),
                ]);
                push(&[
                    "-device",
                    &format!("virtserialport,chardev=exit,name={}", zos_init::STATUS_PORT),
                ]);
                push(&[
                    "-chardev",
                    &format!("socket,id=ctl,path={},server=on,wait=off", sock(CONTROL)?),
                ]);
                push(&[
                    "-device",
                    &format!("virtserialport,chardev=ctl,name={}", zos_init::CONTROL_PORT),
                ]);
            }
            Boot::Kernel {
                flist,
                kernel,
                initrd,
                cmdline,
                seed,
                ..
            } => {
                started.mount = Some(rootfs::mount_root(flist, &layers, &helper)?);
                started.virtiofsd = Some(self.start_virtiofsd(dir, &layers.merged)?);
                let inside = |p: &str| layers.lower.join(p.trim_start_matches('/'));
                let kernel_path = inside(kernel);
                if !kernel_path.is_file() {
                    return Err(Error::Invalid(format!(
                        "the flist has no kernel at {kernel}"
                    )));
                }
                push(&["-kernel", &path_arg(&kernel_path)?]);
                if let Some(initrd) = initrd {
                    push(&["-initrd", &path_arg(&inside(initrd))?]);
                }
                let line = format!(
                    "console=ttyS0 panic=-1 {timing} rootfstype=virtiofs root={} rw {cmdline}",
                    zos_init::ROOT_TAG
                );
                push(&["-append", line.trim_end()]);
                push_virtiofs(&mut args, &sock(VIRTIOFS)?);
                self.attach_seed(&mut args, blk, dir, spec, seed)?;
            }
            Boot::Disk {
                flist,
                image,
                format,
                root_size,
                seed,
            } => {
                started.mount = Some(rootfs::mount_flist(flist, &layers.lower, &helper)?);
                let base = layers.lower.join(image.trim_start_matches('/'));
                let overlay = dir.join(ROOT_OVERLAY);
                if !overlay.exists() {
                    let info = disk::disk_info(&base).map_err(|e| {
                        Error::Invalid(format!("the flist's disk image {image}: {e}"))
                    })?;
                    if info.format != *format {
                        return Err(Error::Invalid(format!(
                            "the flist's disk image {image} is {}, not {format}",
                            info.format
                        )));
                    }
                    if let Some(why) = info.external_reference() {
                        return Err(Error::Invalid(format!(
                            "the flist's disk image {image} cannot be booted: {why}"
                        )));
                    }
                    if info.virtual_size > *root_size {
                        return Err(Error::Invalid(format!(
                            "the flist's disk image {image} is {} bytes, more than the root size of {root_size}: give a larger root size",
                            info.virtual_size
                        )));
                    }
                    // The overlay lives as long as the VM: writes survive stop and start.
                    disk::create_overlay(&base, *format, &overlay, Some(*root_size))?;
                }
                push(&["-bios", DISK_FIRMWARE]);
                // SeaBIOS would boot the first virtio disk it finds (the last one created):
                // bootindex makes it this one.
                push_disk(
                    &mut args,
                    blk,
                    "root",
                    &overlay,
                    "qcow2",
                    "zos-root",
                    DiskRole::Boot,
                )?;
                self.attach_seed(&mut args, blk, dir, spec, seed)?;
            }
        }
        for (i, d) in spec.disks.iter().enumerate() {
            push_disk(
                &mut args,
                blk,
                &format!("d{i}"),
                &d.path,
                d.format.as_qemu(),
                &disk_serial(i),
                DiskRole::Data,
            )?;
        }
        self.run_qemu(dir, args)
    }

    /// Writes the NoCloud seed and attaches it read-only (serial `zos-seed`).
    fn attach_seed(
        &self,
        args: &mut Vec<OsString>,
        device: &str,
        dir: &Path,
        spec: &VmSpec,
        seed: &crate::spec::SeedSpec,
    ) -> Result<()> {
        self.write_seed(dir, spec, seed)?;
        push_disk(
            args,
            device,
            "seed",
            &dir.join(SEED),
            "raw",
            "zos-seed",
            DiskRole::ReadOnly,
        )
    }

    fn write_seed(&self, dir: &Path, spec: &VmSpec, seed: &crate::spec::SeedSpec) -> Result<()> {
        let path = dir.join(SEED);
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        cidata::write_seed(
            &cidata::Seed {
                instance_id: name,
                hostname: spec.hostname.clone(),
                ssh_keys: seed.ssh_keys.clone(),
                user_data: seed.user_data.clone(),
                network_config: seed.network_config.clone(),
            },
            &path,
        )?;
        Ok(())
    }

    fn start_virtiofsd(&self, dir: &Path, shared: &Path) -> Result<ProcRef> {
        let socket = dir.join(VIRTIOFS);
        let log_path = dir.join("virtiofsd.log");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| Error::io(format!("opening {}", log_path.display()), e))?;
        let child = Command::new(&self.cfg.virtiofsd)
            .arg(format!("--socket-path={}", socket.display()))
            .arg(format!("--shared-dir={}", shared.display()))
            .args(["--cache=auto", "--log-level=error", "--xattr"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| {
                Error::io(
                    format!(
                        "starting {} (install it with scripts/setup)",
                        self.cfg.virtiofsd.display()
                    ),
                    e,
                )
            })?;
        let pid = child.id() as i32;
        let proc = ProcRef::of(pid);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if proc.is_none_or(|p| !p.alive()) || Instant::now() > deadline {
                if let Some(p) = proc {
                    p.terminate(Duration::from_secs(1));
                }
                return Err(Error::Process {
                    what: "starting virtiofsd".into(),
                    detail: console::tail(&log_path, 5),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        proc.ok_or_else(|| Error::Process {
            what: "starting virtiofsd".into(),
            detail: "it exited at once".into(),
        })
    }

    fn run_qemu(&self, dir: &Path, mut args: Vec<OsString>) -> Result<ProcRef> {
        let pidfile = dir.join(PIDFILE);
        args.extend(["-daemonize", "-pidfile"].map(OsString::from));
        args.push(pidfile.clone().into_os_string());
        let out = Command::new(&self.cfg.qemu)
            .args(&args)
            .stdin(Stdio::null())
            .current_dir(dir)
            .process_group(0)
            .output()
            .map_err(|e| {
                Error::io(
                    format!(
                        "starting {} (install qemu-system-x86 with scripts/setup)",
                        self.cfg.qemu.display()
                    ),
                    e,
                )
            })?;
        if !out.status.success() {
            return Err(Error::Process {
                what: "starting QEMU".into(),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        let pid: i32 = fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| Error::Process {
                what: "starting QEMU".into(),
                detail: format!("no pid in {}", pidfile.display()),
            })?;
        ProcRef::of(pid).ok_or_else(|| Error::Guest {
            message: "QEMU exited right after starting".into(),
            console_tail: console::tail(&dir.join(CONSOLE), 20),
        })
    }

    /// Clean power-down: a container's process gets SIGTERM (a VM-mode guest an ACPI power
    /// button press); after `timeout` QEMU is killed. Returns the final state.
    pub fn stop(&self, name: &str, timeout: Duration) -> Result<VmInfo> {
        let dir = self.existing(name)?;
        {
            let _lock = lock(&dir)?;
            let mut record = self.refresh(&dir)?;
            let Some(runtime) = record.runtime.as_mut() else {
                return Ok(self.info(&dir, &record));
            };
            runtime.stop_requested = true;
            let qemu = runtime.qemu;
            save(&dir, &record)?;
            if record.state == VmState::Paused {
                // A frozen guest cannot act on a stop request.
                let _ = Qmp::connect(&dir.join(QMP)).and_then(|mut q| q.execute("cont", None));
            }
            // The request is repeated every second until the deadline: a guest that is still
            // booting has not opened its control port (or ACPI) yet, and would miss just one.
            let deadline = Instant::now() + timeout;
            let mut gone = false;
            while !gone && Instant::now() < deadline {
                let _ = match record.spec.boot {
                    Boot::Container { .. } => send_control(&dir, &Control::Stop),
                    Boot::Kernel { .. } | Boot::Disk { .. } => Qmp::connect(&dir.join(QMP))
                        .and_then(|mut q| q.execute("system_powerdown", None))
                        .map(drop),
                };
                let left = deadline.saturating_duration_since(Instant::now());
                gone = qemu.wait_gone(left.min(Duration::from_secs(1)));
            }
            if !gone {
                tracing::info!(vm = name, "guest did not power off in time; killing QEMU");
                let _ = Qmp::connect(&dir.join(QMP)).and_then(|mut q| q.execute("quit", None));
                if !qemu.wait_gone(Duration::from_secs(2)) {
                    qemu.signal(libc::SIGKILL);
                    qemu.wait_gone(Duration::from_secs(5));
                }
            }
        }
        self.status(name)
    }

    /// Freezes the guest's CPUs.
    pub fn pause(&self, name: &str) -> Result<VmInfo> {
        self.qmp_state_change(name, "stop", VmState::Running, VmState::Paused)
    }

    /// Thaws a paused guest.
    pub fn resume(&self, name: &str) -> Result<VmInfo> {
        self.qmp_state_change(name, "cont", VmState::Paused, VmState::Running)
    }

    fn qmp_state_change(
        &self,
        name: &str,
        cmd: &str,
        from: VmState,
        to: VmState,
    ) -> Result<VmInfo> {
        let dir = self.existing(name)?;
        let _lock = lock(&dir)?;
        let mut record = self.refresh(&dir)?;
        if record.state != from {
            return Err(Error::State {
                name: name.into(),
                state: record.state.to_string(),
                what: format!("{cmd} needs a {} VM", from.word()),
            });
        }
        Qmp::connect(&dir.join(QMP))?.execute(cmd, None)?;
        record.state = to;
        save(&dir, &record)?;
        Ok(self.info(&dir, &record))
    }

    /// Delivers a signal to a running container's process.
    pub fn signal(&self, name: &str, signal: i32) -> Result<()> {
        let dir = self.existing(name)?;
        send_control(&dir, &Control::Signal(signal))
    }

    /// Stops the VM if needed and removes everything it had: processes, mounts, sockets, its
    /// writable layer and its directory. Disks attached from outside are left alone.
    pub fn delete(&self, name: &str) -> Result<()> {
        let dir = self.existing(name)?;
        let info = self.status(name)?;
        if info.state.is_active() {
            self.stop(name, Duration::from_secs(5))?;
        }
        let _lock = lock(&dir)?;
        let record = load(&dir)?;
        if let Some(rt) = record.runtime {
            rt.qemu.signal(libc::SIGKILL);
            rt.qemu.wait_gone(Duration::from_secs(5));
            teardown(&dir, rt.virtiofsd, rt.mount);
        } else {
            teardown(&dir, None, None);
        }
        // Renamed first, so a crash half-way never leaves a VM that looks whole.
        let doomed = self
            .cfg
            .root
            .join(format!(".deleted.{name}.{}", std::process::id()));
        fs::rename(&dir, &doomed)
            .map_err(|e| Error::io(format!("removing {}", dir.display()), e))?;
        fs::remove_dir_all(&doomed)
            .map_err(|e| Error::io(format!("removing {}", doomed.display()), e))
    }

    /// The VM's state, reconciled with its processes.
    pub fn status(&self, name: &str) -> Result<VmInfo> {
        let dir = self.existing(name)?;
        let _lock = lock(&dir)?;
        let record = self.refresh(&dir)?;
        Ok(self.info(&dir, &record))
    }

    /// Every VM under the root.
    pub fn list(&self) -> Result<Vec<VmInfo>> {
        let mut out = Vec::new();
        let entries = fs::read_dir(&self.cfg.root)
            .map_err(|e| Error::io(format!("listing {}", self.cfg.root.display()), e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !entry.path().join(RECORD).exists() {
                continue;
            }
            match self.status(&name) {
                Ok(info) => out.push(info),
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Waits until the VM is no longer active (or `timeout` passes) and returns its state.
    pub fn wait(&self, name: &str, timeout: Option<Duration>) -> Result<VmInfo> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let info = self.status(name)?;
            if !info.state.is_active() || deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(info);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Removes leftovers of interrupted creates and deletes under the root.
    pub fn sweep(&self) -> Result<()> {
        let entries = fs::read_dir(&self.cfg.root)
            .map_err(|e| Error::io(format!("listing {}", self.cfg.root.display()), e))?;
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with('.') {
                teardown(&entry.path(), None, None);
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        Ok(())
    }

    fn existing(&self, name: &str) -> Result<PathBuf> {
        check_name(name)?;
        let dir = self.dir(name);
        if !dir.join(RECORD).exists() {
            return Err(Error::NotFound(name.to_string()));
        }
        Ok(dir)
    }

    /// Loads the record and brings it in line with the processes (caller holds the lock).
    fn refresh(&self, dir: &Path) -> Result<Record> {
        let mut record = load(dir)?;
        let _ = console::rotate_if_large(&dir.join(CONSOLE), self.cfg.console_max);
        let Some(rt) = record.runtime.clone() else {
            return Ok(record);
        };
        let helper_died = [("virtiofsd", rt.virtiofsd), ("the flist mount", rt.mount)]
            .into_iter()
            .find(|(_, p)| p.is_some_and(|p| !p.alive()))
            .map(|(name, _)| name);
        let mut lost_helper = None;
        if rt.qemu.alive() {
            let Some(helper) = helper_died else {
                return Ok(record);
            };
            // virtiofsd also exits when a powering-off guest drops its connection, a moment
            // before QEMU itself is gone: that is an ordinary exit, not a crash.
            if !rt.qemu.wait_gone(Duration::from_secs(2)) {
                // The guest has lost its root filesystem: it cannot go on.
                rt.qemu.signal(libc::SIGKILL);
                rt.qemu.wait_gone(Duration::from_secs(5));
                lost_helper = Some(VmState::Crashed {
                    reason: format!(
                        "{helper} exited while the VM ran; the VM was stopped\n--- last console lines ---\n{}",
                        console::tail(&dir.join(CONSOLE), 20)
                    ),
                });
            }
        }
        record.state = lost_helper.unwrap_or_else(|| self.exit_state(dir, &record.spec, &rt));
        teardown(dir, rt.virtiofsd, rt.mount);
        record.runtime = None;
        save(dir, &record)?;
        Ok(record)
    }

    /// Why QEMU is gone: the container's exit report, a stop, a power-off, or a crash.
    fn exit_state(&self, dir: &Path, spec: &VmSpec, rt: &Runtime) -> VmState {
        let stop_requested = rt.stop_requested;
        let report = fs::read_to_string(dir.join(EXIT)).ok().and_then(|text| {
            text.lines()
                .find_map(|l| serde_json::from_str::<ExitReport>(l.trim()).ok())
        });
        if let Some(report) = report {
            return VmState::Exited {
                code: report.code,
                error: report.error,
            };
        }
        // The panic line comes before a long call trace: look through this boot's output,
        // and show the lines around it rather than the end of the trace.
        let panic =
            console::panic_excerpt(&console::since(&dir.join(CONSOLE), rt.console_start), 30);
        let panicked = panic.is_some();
        if stop_requested && !panicked {
            return VmState::Stopped;
        }
        if !panicked && !matches!(spec.boot, Boot::Container { .. }) {
            // A VM-mode guest powering off is its own business.
            return VmState::Stopped;
        }
        let what = if panicked {
            "the guest kernel panicked"
        } else {
            "QEMU exited without an exit report from the guest (killed, or the guest died)"
        };
        let console = match panic {
            Some(excerpt) => format!("--- console around the panic ---\n{excerpt}"),
            None => format!(
                "--- last console lines ---\n{}",
                console::tail(&dir.join(CONSOLE), 30)
            ),
        };
        VmState::Crashed {
            reason: format!("{what}\n{console}"),
        }
    }

    fn info(&self, dir: &Path, record: &Record) -> VmInfo {
        let rt = record.runtime.as_ref();
        let memory_bytes = rt.map(|rt| {
            [Some(rt.qemu), rt.virtiofsd, rt.mount]
                .into_iter()
                .flatten()
                .filter_map(|p| pss_bytes(p.pid))
                .sum()
        });
        VmInfo {
            name: record.name.clone(),
            state: record.state.clone(),
            spec: record.spec.clone(),
            pid: rt.map(|r| r.qemu.pid),
            console: dir.join(CONSOLE),
            memory_bytes,
            created: record.created,
        }
    }

    /// The console log of a VM.
    pub fn console_path(&self, name: &str) -> Result<PathBuf> {
        Ok(self.existing(name)?.join(CONSOLE))
    }
}

/// Helpers started so far by one start, for cleanup if a later step fails.
#[derive(Default)]
struct Started {
    virtiofsd: Option<ProcRef>,
    mount: Option<ProcRef>,
}

/// Kills a QEMU or virtiofsd of this VM that its record does not know of, found through
/// their pid files (and checked to be about this VM's dir, in case the pid was reused).
fn kill_strays(dir: &Path) {
    let virtiofsd_pidfile = dir.join(format!("{VIRTIOFS}.pid"));
    for pidfile in [dir.join(PIDFILE), virtiofsd_pidfile] {
        let Some(pid) = fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        else {
            continue;
        };
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let ours = String::from_utf8_lossy(&cmdline).contains(&*dir.to_string_lossy());
        if let (true, Some(p)) = (ours, ProcRef::of(pid)) {
            tracing::info!(pid, dir = %dir.display(), "ending a process left by an interrupted start");
            p.signal(libc::SIGKILL);
            p.wait_gone(Duration::from_secs(5));
        }
    }
}

/// Stops the helpers and removes the runtime leftovers of a VM whose QEMU is gone.
fn teardown(dir: &Path, virtiofsd: Option<ProcRef>, mount: Option<ProcRef>) {
    if let Some(v) = virtiofsd {
        v.terminate(Duration::from_secs(2));
    }
    rootfs::unmount_root(&Layers::of(dir), mount);
    for file in [QMP, CONTROL, VIRTIOFS, INITRD, PIDFILE] {
        let _ = fs::remove_file(dir.join(file));
    }
}

fn push_virtiofs(args: &mut Vec<OsString>, socket: &str) {
    for a in [
        "-chardev".to_string(),
        format!("socket,id=vfs,path={socket}"),
        "-device".to_string(),
        format!(
            "vhost-user-fs-device,chardev=vfs,tag={}",
            zos_init::ROOT_TAG
        ),
    ] {
        args.push(a.into());
    }
}

fn push_disk(
    args: &mut Vec<OsString>,
    device: &str,
    id: &str,
    path: &Path,
    format: &str,
    serial: &str,
    role: DiskRole,
) -> Result<()> {
    let ro = if role == DiskRole::ReadOnly {
        ",readonly=on"
    } else {
        ""
    };
    let boot = if role == DiskRole::Boot {
        ",bootindex=0"
    } else {
        ""
    };
    let drive = format!(
        "id={id},file={},format={format},if=none,cache=unsafe{ro}",
        path_arg(path)?
    );
    for a in [
        "-drive".to_string(),
        drive,
        "-device".to_string(),
        format!("{device},drive={id},serial={serial}{boot}"),
    ] {
        args.push(a.into());
    }
    Ok(())
}

/// What a disk is to the guest.
#[derive(PartialEq)]
enum DiskRole {
    /// Read-write data.
    Data,
    /// Read-only (the seed).
    ReadOnly,
    /// The disk the firmware boots.
    Boot,
}

/// The virtio serial of the n-th extra disk, matched by `zos-init` in `/sys/block/*/serial`.
fn disk_serial(i: usize) -> String {
    format!("zos-disk{i}")
}

/// A path for a QEMU option value: commas would split the option, so they are refused.
fn path_arg(p: &Path) -> Result<String> {
    let s = p.to_str().ok_or_else(|| {
        Error::Invalid(format!("{} is not UTF-8; QEMU cannot take it", p.display()))
    })?;
    if s.contains(',') {
        return Err(Error::Invalid(format!(
            "{s} contains a comma, which QEMU options cannot carry: use another data dir"
        )));
    }
    Ok(s.to_string())
}

/// A unix socket path, which the kernel limits to 107 bytes.
fn socket_path(dir: &Path, file: &str) -> Result<String> {
    let s = path_arg(&dir.join(file))?;
    if s.len() > 107 {
        return Err(Error::Invalid(format!(
            "socket path {s} is longer than the 107 bytes unix sockets allow: use a shorter data dir"
        )));
    }
    Ok(s)
}

fn send_control(dir: &Path, control: &Control) -> Result<()> {
    let path = dir.join(CONTROL);
    let line = serde_json::to_string(control).map_err(|e| Error::Invalid(e.to_string()))? + "\n";
    let mut stream = UnixStream::connect(&path).map_err(|e| {
        Error::io(
            format!(
                "connecting to the guest's control channel {}",
                path.display()
            ),
            e,
        )
    })?;
    stream
        .write_all(line.as_bytes())
        .map_err(|e| Error::io("sending to the guest".into(), e))
}

/// VM names: used as directory names and hostnames by default.
fn check_name(name: &str) -> Result<()> {
    if crate::is_valid_name(name) {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "bad VM name {name:?}: use 1-64 letters, digits, '-' and '_', starting with a letter or digit"
        )))
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn load(dir: &Path) -> Result<Record> {
    let path = dir.join(RECORD);
    let text = fs::read(&path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    serde_json::from_slice(&text)
        .map_err(|e| Error::Invalid(format!("{} is damaged: {e}", path.display())))
}

fn save(dir: &Path, record: &Record) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(record).map_err(|e| Error::Invalid(e.to_string()))?;
    fsutil::write_atomic(&dir.join(RECORD), &bytes)
}

/// An exclusive lock on a VM's directory for the length of one operation, so a node and a
/// CLI (or two threads) never act on the same VM at once.
struct DirLock(fs::File);

fn lock(dir: &Path) -> Result<DirLock> {
    let path = dir.join(LOCK);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    // SAFETY: flock on a descriptor we own; it is released when the file is closed.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    if r != 0 {
        return Err(Error::io(
            format!("locking {}", path.display()),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(DirLock(file))
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Closing the file releases the lock; nothing else to do.
        let _ = &self.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths_are_checked() {
        assert!(check_name("web-1").is_ok());
        for bad in ["", "-x", "a/b", "..", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(path_arg(Path::new("/a,b")).is_err());
        let long = PathBuf::from("/".to_string() + &"d".repeat(110));
        assert!(socket_path(&long, QMP).is_err());
        assert!(socket_path(Path::new("/run/zos/vm"), QMP).is_ok());
    }
}

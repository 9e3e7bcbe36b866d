//! Starting a VM: the root layers (flist mount, overlay), virtiofsd, then QEMU, detached.
//! Whatever a failed start brought up is ended again; a start cut short by the manager's
//! death is cleaned up by the next one.

use super::cgroup;
use super::jail::{self, Access, Jail, Prepared};
use super::qemu_args::{
    self, disk_serial, path_arg, push_disk, push_virtiofs, socket_path, DiskRole, DISK_FIRMWARE,
};
use super::reconcile::teardown;
use super::record::{
    lock, save, Runtime, VmInfo, VmState, CONSOLE, CONTROL, EXIT, INITRD, MOUNT_LOG, PIDFILE,
    QEMU_LOG, QMP, ROOT_OVERLAY, SEED, VIRTIOFS, VIRTIOFSD_LOG,
};
use super::Vmm;
use crate::bootkit::{self, BootKit};
use crate::disk::{self, DiskFormat};
use crate::host::{self, Accel};
use crate::proc::ProcRef;
use crate::qmp::Qmp;
use crate::rootfs::{self, Layers, MountHelper};
use crate::spec::{Boot, SeedSpec, VmSpec};
use crate::{cidata, console, fsutil, logs, Error, Result};
use std::ffi::OsString;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use zos_init::{GuestConfig, GuestDisk};

impl Vmm {
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
        let uid = jail::uid_for(&self.cfg.root, &dir, &mut record)?;
        cgroup::create(&dir, &record.spec)?;
        let mut started = Started::default();
        let console_start = fs::metadata(dir.join(CONSOLE)).map_or(0, |m| m.len());
        match self.launch(&dir, &record.spec, uid, &mut started) {
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

    /// Brings up the helpers and QEMU (jailed as `uid`); what got started is left in
    /// `started` for cleanup.
    fn launch(
        &self,
        dir: &Path,
        spec: &VmSpec,
        uid: u32,
        started: &mut Started,
    ) -> Result<ProcRef> {
        let helper = MountHelper {
            zos: &self.cfg.zos,
            cache_dir: &self.cfg.cache_dir,
            cache_size: self.cfg.cache_size,
            log: dir.join(MOUNT_LOG),
            policy: self.cfg.store_policy.as_ref(),
        };
        let layers = Layers::of(dir);
        let accel = spec.accel.resolve();
        let timing = if accel == Accel::Tcg {
            host::tcg_kernel_args()
        } else {
            String::new()
        };
        let mut jail = Jail::new(dir, uid);
        let sock = |file: &str| socket_path(dir, file).map(PathBuf::from);
        let qmp = jail.listen(&sock(QMP)?)?;
        let console = dir.join(CONSOLE);
        logs::open_for_writer(&console)?;
        jail.add(&console, Access::Writable);
        if accel == Accel::Kvm {
            jail.allow_kvm()?;
        }
        let mut args = qemu_args::base(dir, spec, accel, qmp)?;
        let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
        match &spec.boot {
            Boot::Container { flist, .. } => {
                started.mount = Some(rootfs::mount_root(flist, &layers, &helper)?);
                started.virtiofsd = Some(self.start_virtiofsd(dir, &layers.merged)?);
                let (kernel, kit_disk) = self.write_initrd(dir, spec)?;
                jail.add(&kernel, Access::Shared);
                push_disk(
                    &mut args,
                    &mut jail,
                    "kit",
                    &kit_disk,
                    "raw",
                    zos_init::KIT_SERIAL,
                    DiskRole::Shared,
                )?;
                let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
                jail.add(&dir.join(INITRD), Access::ReadOnly);
                push(&[
                    "-kernel",
                    &path_arg(&kernel)?,
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
                    &format!("console=ttyS0 panic=-1 reboot=t {NO_TRACEFS} {timing} {verbosity}"),
                ]);
                push_virtiofs(&mut args, jail.connect(&sock(VIRTIOFS)?)?);
                let exit = dir.join(EXIT);
                logs::open_for_writer(&exit)?;
                jail.add(&exit, Access::Writable);
                let control = jail.listen(&sock(CONTROL)?)?;
                qemu_args::push_guest_ports(&mut args, dir, control)?;
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
                jail.add(&layers.lower, Access::Shared);
                push_virtiofs(&mut args, jail.connect(&sock(VIRTIOFS)?)?);
                self.attach_seed(&mut args, &mut jail, dir, spec, seed)?;
            }
            Boot::Disk {
                flist,
                image,
                format,
                root_size,
                seed,
                ..
            } => {
                started.mount = Some(rootfs::mount_flist(flist, &layers.lower, &helper)?);
                let overlay = root_overlay(dir, &layers, image, *format, *root_size)?;
                // The overlay's backing image is read through the flist mount.
                jail.add(&layers.lower, Access::Shared);
                push(&["-bios", DISK_FIRMWARE]);
                // SeaBIOS would boot the first virtio disk it finds (the last one created):
                // bootindex makes it this one.
                push_disk(
                    &mut args,
                    &mut jail,
                    "root",
                    &overlay,
                    "qcow2",
                    "zos-root",
                    DiskRole::Boot,
                )?;
                self.attach_seed(&mut args, &mut jail, dir, spec, seed)?;
            }
        }
        super::net::push_network(&mut args, &mut jail, spec)?;
        for (i, d) in spec.disks.iter().enumerate() {
            push_disk(
                &mut args,
                &mut jail,
                &format!("d{i}"),
                &d.path,
                d.format.as_qemu(),
                &disk_serial(i),
                DiskRole::Data,
            )?;
        }
        jail.add(&self.cfg.qemu, Access::Shared);
        self.run_qemu(dir, args, jail.prepare(self.cfg.jail)?)
    }

    /// Writes a container VM's initramfs (the base one plus its `GuestConfig`) to
    /// `initrd.cpio`; returns the kernel to boot it with and its kit disk.
    fn write_initrd(&self, dir: &Path, spec: &VmSpec) -> Result<(PathBuf, PathBuf)> {
        let Boot::Container {
            process,
            files,
            healthcheck,
            attach,
            ..
        } = &spec.boot
        else {
            return Err(Error::Invalid("only a container VM boots zos-init".into()));
        };
        let kit = BootKit::locate(&self.cfg.bootkit)?;
        let (base, mut modules) = kit.initramfs(&self.init_path()?)?;
        let kit_disk = kit.kit_disk()?;
        // Each module costs boot time under TCG: load only what this VM has devices
        // for (network only with a network; every VM has the kit disk, so virtio_blk).
        let has_net = spec.network().is_some();
        modules.retain(|m| has_net || !(m.contains("failover") || m.ends_with("virtio_net.ko")));
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
            network: super::net::guest_network(spec),
            files: files.clone(),
            healthcheck: healthcheck.clone(),
            attach: *attach,
            kit_release: Some(kit.version.clone()),
        };
        bootkit::write_vm_initrd(&base, &config, &dir.join(INITRD))?;
        Ok((kit.kernel, kit_disk))
    }

    /// Writes the NoCloud seed and attaches it read-only (serial `zos-seed`).
    fn attach_seed(
        &self,
        args: &mut Vec<OsString>,
        jail: &mut Jail,
        dir: &Path,
        spec: &VmSpec,
        seed: &SeedSpec,
    ) -> Result<()> {
        self.write_seed(dir, spec, seed)?;
        push_disk(
            args,
            jail,
            "seed",
            &dir.join(SEED),
            "raw",
            "zos-seed",
            DiskRole::ReadOnly,
        )
    }

    /// Writes the NoCloud seed (`cidata.img`) for this VM.
    fn write_seed(&self, dir: &Path, spec: &VmSpec, seed: &SeedSpec) -> Result<()> {
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
                // The caller's own, or one for the VM's interfaces.
                network_config: seed
                    .network_config
                    .clone()
                    .or_else(|| super::net::seed_network_config(spec)),
            },
            &path,
        )?;
        Ok(())
    }

    /// Starts virtiofsd exporting `shared` on `virtiofs.sock`; returns once the socket is up.
    fn start_virtiofsd(&self, dir: &Path, shared: &Path) -> Result<ProcRef> {
        let socket = dir.join(VIRTIOFS);
        let log_path = dir.join(VIRTIOFSD_LOG);
        let log = logs::open_for_writer(&log_path)?;
        let mut cmd = Command::new(&self.cfg.virtiofsd);
        cmd.arg(format!("--socket-path={}", socket.display()))
            .arg(format!("--shared-dir={}", shared.display()))
            .args(["--cache=auto", "--log-level=error", "--xattr"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0);
        cgroup::join_on_spawn(&mut cmd, dir)?;
        let child = cmd.spawn().map_err(|e| {
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

    /// Runs QEMU detached from this process, in a session of its own and in its jail: it
    /// outlives this process. Not `-daemonize`: QEMU forks for that after its seccomp
    /// sandbox is in place, and the sandbox forbids forking and `setsid`. Returns its pid
    /// once QMP answers.
    fn run_qemu(&self, dir: &Path, args: Vec<OsString>, jail: Prepared) -> Result<ProcRef> {
        // This start's messages alone: they are the error if QEMU does not come up.
        let log_path = dir.join(QEMU_LOG);
        let _ = fs::remove_file(&log_path);
        let log = logs::open_for_writer(&log_path)?;
        let stdout = log
            .try_clone()
            .map_err(|e| Error::io(format!("opening {}", log_path.display()), e))?;
        let mut cmd = Command::new(&self.cfg.qemu);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log)
            .current_dir(dir);
        // Joined first, while the child is still root in the host's mount namespace.
        cgroup::join_on_spawn(&mut cmd, dir)?;
        // SAFETY: setsid(2) is async-signal-safe, and `Prepared::enter` makes only system
        // calls on memory prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                jail.enter()
            });
        }
        let spawned = cmd.spawn();
        // The descriptors QEMU was handed are closed here: QEMU holds its own copies.
        drop(cmd);
        let mut child = spawned.map_err(|e| {
            Error::io(
                format!(
                    "starting {} (install qemu-system-x86 with scripts/setup)",
                    self.cfg.qemu.display()
                ),
                e,
            )
        })?;
        let pid = child.id() as i32;
        // Written here, not by QEMU's -pidfile: the jailed QEMU has nowhere to write it.
        let pidfile = dir.join(PIDFILE);
        fsutil::write_atomic(&pidfile, pid.to_string().as_bytes())?;
        let qmp = dir.join(QMP);
        let deadline = Instant::now() + Duration::from_secs(60);
        let up = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break Err(status);
            }
            // Up once its monitor answers: QEMU serves QMP only after the machine is built
            // (devices connected to virtiofsd), which is when `-daemonize` returned.
            if Qmp::connect(&qmp)
                .and_then(|mut q| q.execute("query-status", None))
                .is_ok()
            {
                break Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Process {
                    what: "starting QEMU".into(),
                    detail: "its monitor did not come up within 60 s".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        if let Err(status) = up {
            let said = fs::read_to_string(&log_path).unwrap_or_default();
            return Err(if said.trim().is_empty() {
                Error::Guest {
                    message: format!("QEMU exited right after starting ({status})"),
                    console_tail: console::tail(&dir.join(CONSOLE), 20),
                }
            } else {
                Error::Process {
                    what: "starting QEMU".into(),
                    detail: said.trim().to_string(),
                }
            });
        }
        let proc = ProcRef::of(pid).ok_or_else(|| Error::Guest {
            message: "QEMU exited right after starting".into(),
            console_tail: console::tail(&dir.join(CONSOLE), 20),
        })?;
        // Someone must reap it when it ends; a process that outlives this one is reaped by
        // init, as a daemon is.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        Ok(proc)
    }
}

/// Keeps the container kernel from populating tracefs: at boot it makes a file, inode and
/// dentry for each of its ~2,000 trace events, 9 MiB of slab per VM that nothing in a
/// container uses (the guest's tracefs then has no event files).
const NO_TRACEFS: &str = "initcall_blacklist=tracer_init_tracefs";

/// The copy-on-write overlay a disk-image VM boots from, over the image in the flist mount;
/// made (once the image is checked) at the first start and kept until delete.
fn root_overlay(
    dir: &Path,
    layers: &Layers,
    image: &str,
    format: DiskFormat,
    root_size: u64,
) -> Result<PathBuf> {
    let base = layers.lower.join(image.trim_start_matches('/'));
    let overlay = dir.join(ROOT_OVERLAY);
    if !overlay.exists() {
        let info = disk::disk_info(&base)
            .map_err(|e| Error::Invalid(format!("the flist's disk image {image}: {e}")))?;
        if info.format != format {
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
        if info.virtual_size > root_size {
            return Err(Error::Invalid(format!(
                "the flist's disk image {image} is {} bytes, more than the root size of {root_size}: give a larger root size",
                info.virtual_size
            )));
        }
        // The overlay lives as long as the VM: writes survive stop and start.
        disk::create_overlay(&base, format, &overlay, Some(root_size))?;
    }
    Ok(overlay)
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

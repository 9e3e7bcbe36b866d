//! Pieces of QEMU's command line, and the rules for the paths that go into it.

use super::jail::{Access, Jail};
use super::record::{CONSOLE, EXIT};
use crate::host::Accel;
use crate::spec::VmSpec;
use crate::{Error, Result};
use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::Path;

/// SeaBIOS built for `microvm`: it boots from virtio-mmio disks (QEMU's own microvm
/// firmware, qboot, only boots a kernel given with `-kernel`).
pub(super) const DISK_FIRMWARE: &str = "/usr/share/seabios/bios-microvm.bin";

/// What every VM has: the machine, CPUs and shared RAM, no default devices, the serial
/// console appended to `console.log`, and QMP on the listening socket `qmp`.
pub(super) fn base(dir: &Path, spec: &VmSpec, accel: Accel, qmp: RawFd) -> Result<Vec<OsString>> {
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
    let mem = format!("{}M", spec.memory_mib);
    let cpu = if accel == Accel::Kvm { "host" } else { "max" };
    push(&[
        "-M",
        "microvm,memory-backend=mem",
        "-accel",
        &accel_arg(accel),
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
    // QEMU's own seccomp sandbox: a guest that breaks into QEMU cannot spawn programs, gain
    // privileges, change scheduling or reach obsolete system calls.
    push(&[
        "-sandbox",
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    ]);
    push(&[
        "-chardev",
        &format!(
            "file,id=con,path={},append=on",
            path_arg(&dir.join(CONSOLE))?
        ),
    ]);
    push(&["-serial", "chardev:con"]);
    push(&[
        "-chardev",
        &format!("socket,id=qmp,fd={qmp},server=on,wait=off"),
        "-mon",
        "chardev=qmp,mode=control",
    ]);
    Ok(args)
}

/// The accelerator; TCG with its translation cache bounded, so a VM's memory overhead holds
/// (see [`crate::limits::TCG_TB_MIB`]).
fn accel_arg(accel: Accel) -> String {
    match accel {
        Accel::Tcg => format!("tcg,tb-size={}", crate::limits::TCG_TB_MIB),
        other => other.as_str().to_string(),
    }
}

/// A container VM's channels to `zos-init`: its exit report comes out of the second UART
/// into `exit.json`, and stop / signal lines go in through a virtio console on the listening
/// socket `control`.
pub(super) fn push_guest_ports(args: &mut Vec<OsString>, dir: &Path, control: RawFd) -> Result<()> {
    let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
    push(&[
        "-chardev",
        &format!("file,id=exit,path={}", path_arg(&dir.join(EXIT))?),
    ]);
    push(&[
        "-device",
        &format!("isa-serial,chardev=exit,index={}", zos_init::STATUS_UART),
    ]);
    // One console port and no more: with a single port the guest sets up no control queue,
    // and QEMU's default of 31 ports would have it set up queues for all 31.
    push(&["-device", "virtio-serial-device,max_ports=1"]);
    push(&[
        "-chardev",
        &format!("socket,id=ctl,fd={control},server=on,wait=off"),
    ]);
    push(&["-device", "virtconsole,chardev=ctl"]);
    Ok(())
}

/// The vhost-user-fs device exporting the root (tag `rootfs`) through `virtiofsd`, a socket
/// connected to virtiofsd.
pub(super) fn push_virtiofs(args: &mut Vec<OsString>, virtiofsd: RawFd) {
    for a in [
        "-chardev".to_string(),
        format!("socket,id=vfs,fd={virtiofsd}"),
        "-device".to_string(),
        format!(
            "vhost-user-fs-device,chardev=vfs,tag={}",
            zos_init::ROOT_TAG
        ),
    ] {
        args.push(a.into());
    }
}

/// A virtio-blk disk: `-drive` (host side) and `-device` (what the guest sees, with the
/// `serial` it is found by); its file is bound into the VM's jail.
pub(super) fn push_disk(
    args: &mut Vec<OsString>,
    jail: &mut Jail,
    id: &str,
    path: &Path,
    format: &str,
    serial: &str,
    role: DiskRole,
) -> Result<()> {
    let ro = if matches!(role, DiskRole::ReadOnly | DiskRole::Shared) {
        ",readonly=on"
    } else {
        ""
    };
    let boot = if role == DiskRole::Boot {
        ",bootindex=0"
    } else {
        ""
    };
    // cache=writeback: QEMU writes through the host page cache and turns the guest's flushes
    // into fdatasync on the file, so what a guest fsync'd survives a host crash (cache=unsafe
    // dropped them). Not cache=none: O_DIRECT fails on tmpfs and some other host filesystems.
    // The read-only seed takes the same mode: it is never written, so nothing changes for it.
    let drive = format!(
        "id={id},file={},format={format},if=none,cache=writeback{ro}",
        path_arg(path)?
    );
    for a in [
        "-drive".to_string(),
        drive,
        "-device".to_string(),
        format!("virtio-blk-device,drive={id},serial={serial}{boot}"),
    ] {
        args.push(a.into());
    }
    // Every drive QEMU opens is in its jail, and only those.
    let access = match role {
        DiskRole::ReadOnly => Access::ReadOnly,
        DiskRole::Shared => Access::Shared,
        DiskRole::Data | DiskRole::Boot => Access::Writable,
    };
    jail.add(path, access);
    Ok(())
}

/// What a disk is to the guest.
#[derive(PartialEq)]
pub(super) enum DiskRole {
    /// Read-write data.
    Data,
    /// Read-only, this VM's own (the seed): given to the VM's uid.
    ReadOnly,
    /// Read-only and shared by every VM (the kit disk): left as it is, readable by all.
    Shared,
    /// The disk the firmware boots.
    Boot,
}

/// The virtio serial of the n-th extra disk, matched by `zos-init` in `/sys/block/*/serial`.
pub(super) fn disk_serial(i: usize) -> String {
    format!("zos-disk{i}")
}

/// A path for a QEMU option value: commas would split the option, so they are refused.
pub(super) fn path_arg(p: &Path) -> Result<String> {
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
pub(super) fn socket_path(dir: &Path, file: &str) -> Result<String> {
    let s = path_arg(&dir.join(file))?;
    if s.len() > 107 {
        return Err(Error::Invalid(format!(
            "socket path {s} is longer than the 107 bytes unix sockets allow: use a shorter data dir"
        )));
    }
    Ok(s)
}

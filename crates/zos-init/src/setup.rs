//! Bringing the guest up: early mounts, modules, the virtio-fs root, switching into it, the
//! container's mounts, hostname and disks.

use crate::sys::{self, mount};
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};
use zos_init::{GuestConfig, GuestDisk, CONFIG_PATH, KIT_SERIAL, ROOT_TAG};

const NEWROOT: &str = "/newroot";
/// How long devices get to show up after their driver loads.
const DEVICE_WAIT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(10);

fn mount_at(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), String> {
    mkdir(target)?;
    mount(source, target, Some(fstype), flags, data)
        .map_err(|e| format!("mounting {fstype} on {target}: {e}"))
}

fn mkdir(path: impl AsRef<Path>) -> Result<(), String> {
    let path = path.as_ref();
    std::fs::create_dir_all(path).map_err(|e| format!("creating {}: {e}", path.display()))
}

/// Brings the guest from the bare initramfs to the container's root, everything mounted.
pub fn setup() -> Result<GuestConfig, String> {
    early_mounts()?;
    let text =
        std::fs::read_to_string(CONFIG_PATH).map_err(|e| format!("reading {CONFIG_PATH}: {e}"))?;
    let config: GuestConfig =
        serde_json::from_str(&text).map_err(|e| format!("parsing {CONFIG_PATH}: {e}"))?;
    for module in &config.modules {
        sys::load_module(module).map_err(|e| format!("loading module {module}: {e}"))?;
    }
    mount_root()?;
    // The initramfs stays in RAM for the VM's life: drop what is no longer needed.
    for file in config
        .modules
        .iter()
        .map(String::as_str)
        .chain([CONFIG_PATH, "/init"])
    {
        let _ = std::fs::remove_file(file);
    }
    switch_root()?;
    container_mounts()?;
    if let Some(release) = &config.kit_release {
        // Not fatal: an image that cannot take the mounts (say, a dangling /lib) still
        // runs, only without the kernel's modules.
        if let Err(e) = mount_kit(release) {
            crate::shutdown::console_error(&format!("the kernel's modules are not shown: {e}"));
        }
    }
    if !config.hostname.is_empty() {
        sys::sethostname(&config.hostname)
            .map_err(|e| format!("setting hostname {:?}: {e}", config.hostname))?;
    }
    // Best effort: without it only localhost networking is missing, not worth failing for.
    let _ = sys::loopback_up();
    match &config.network {
        Some(net) => crate::net::configure(net, &config.hostname)?,
        None => write_hosts(&config.hostname)?,
    }
    for disk in &config.disks {
        mount_disk(disk)?;
    }
    for file in &config.files {
        write_file(file)?;
    }
    Ok(config)
}

/// Writes one of the config's files, replacing whatever is at its path unless that is a
/// directory; parents are made as needed.
fn write_file(file: &zos_init::GuestFile) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let path = Path::new(&file.path);
    if let Some(parent) = path.parent() {
        mkdir(parent)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => return Err(format!("writing {}: it is a directory", file.path)),
        // A symlink is replaced, not followed.
        Ok(_) => std::fs::remove_file(path).map_err(|e| format!("replacing {}: {e}", file.path))?,
        Err(_) => {}
    }
    std::fs::write(path, &file.content).map_err(|e| format!("writing {}: {e}", file.path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(file.mode))
        .map_err(|e| format!("setting the mode of {}: {e}", file.path))
}

/// /proc, /sys and /dev in the initramfs, and the console on stdin, stdout and stderr.
fn early_mounts() -> Result<(), String> {
    let nosuid = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    for (fstype, target, flags) in [
        ("proc", "/proc", nosuid),
        ("sysfs", "/sys", nosuid),
        ("devtmpfs", "/dev", libc::MS_NOSUID),
    ] {
        match mount_at(fstype, target, fstype, flags, None) {
            Err(_) if is_mountpoint(target) => {}
            other => other?,
        }
    }
    console_stdio();
    Ok(())
}

/// Whether something is mounted on `path` (its device differs from its parent's).
fn is_mountpoint(path: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev());
    let path = Path::new(path);
    matches!((dev(path), path.parent().map(dev)), (Ok(a), Some(Ok(b))) if a != b)
}

/// Points fds 0-2 at /dev/console, whatever the kernel managed to open for us.
fn console_stdio() {
    // SAFETY: opening a constant path; no close-on-exec because it is duplicated onto 0-2 for
    // the container's process to inherit.
    let fd = unsafe { libc::open(c"/dev/console".as_ptr(), libc::O_RDWR | libc::O_NOCTTY) };
    if fd < 0 {
        return;
    }
    for target in 0..3 {
        if fd != target {
            // SAFETY: `fd` is open; dup2 replaces `target` atomically.
            unsafe { libc::dup2(fd, target) };
        }
    }
    if fd > 2 {
        // SAFETY: `fd` is ours and no longer needed.
        unsafe { libc::close(fd) };
    }
}

/// Mounts the virtio-fs root, waiting for the device to appear after its driver loads.
fn mount_root() -> Result<(), String> {
    mkdir(NEWROOT)?;
    let start = Instant::now();
    loop {
        match mount(ROOT_TAG, NEWROOT, Some("virtiofs"), 0, None) {
            Ok(()) => return Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOENT | libc::ENODEV | libc::EINVAL)
                ) && start.elapsed() < DEVICE_WAIT =>
            {
                std::thread::sleep(POLL)
            }
            Err(e) => {
                return Err(format!(
                    "mounting the virtio-fs root (tag {ROOT_TAG:?}) on {NEWROOT}: {e}"
                ))
            }
        }
    }
}

/// Moves /dev, /proc and /sys into the new root and makes it `/`.
fn switch_root() -> Result<(), String> {
    for dir in ["/dev", "/proc", "/sys"] {
        let target = format!("{NEWROOT}{dir}");
        mkdir(&target)?;
        mount(dir, &target, None, libc::MS_MOVE, None)
            .map_err(|e| format!("moving {dir} to {target}: {e}"))?;
    }
    std::env::set_current_dir(NEWROOT).map_err(|e| format!("chdir {NEWROOT}: {e}"))?;
    mount(".", "/", None, libc::MS_MOVE, None)
        .map_err(|e| format!("moving {NEWROOT} to /: {e}"))?;
    sys::chroot(".").map_err(|e| format!("chroot {NEWROOT}: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))
}

/// The mounts a container expects on top of /dev, /proc and /sys.
fn container_mounts() -> Result<(), String> {
    let data = Some("newinstance,ptmxmode=0666,mode=0620,gid=5");
    mount_at(
        "devpts",
        "/dev/pts",
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        data,
    )?;
    let tmpfs_flags = libc::MS_NOSUID | libc::MS_NODEV;
    mount_at("shm", "/dev/shm", "tmpfs", tmpfs_flags, Some("mode=1777"))?;
    mount_at("tmpfs", "/tmp", "tmpfs", tmpfs_flags, Some("mode=1777"))?;
    cgroup2()?;
    // What Docker's /dev has and devtmpfs lacks; ptmx is a device node there on most kernels.
    for (link, target) in [
        ("/dev/ptmx", "pts/ptmx"),
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        if std::fs::symlink_metadata(link).is_err() {
            std::os::unix::fs::symlink(target, link)
                .map_err(|e| format!("creating {link}: {e}"))?;
        }
    }
    Ok(())
}

/// The unified cgroup hierarchy at /sys/fs/cgroup, every controller the kernel has enabled
/// for child groups, so a runtime in the container (containerd, podman, k3s) can make groups
/// with limits. The root group is exempt from the no-internal-processes rule, so the
/// container's process may stay in it.
fn cgroup2() -> Result<(), String> {
    let root = "/sys/fs/cgroup";
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount_at("cgroup2", root, "cgroup2", flags, Some("nsdelegate"))?;
    let controllers = std::fs::read_to_string(format!("{root}/cgroup.controllers"))
        .map_err(|e| format!("reading {root}/cgroup.controllers: {e}"))?;
    // One at a time: a controller the kernel refuses leaves the others enabled.
    for controller in controllers.split_whitespace() {
        if let Err(e) = std::fs::write(
            format!("{root}/cgroup.subtree_control"),
            format!("+{controller}"),
        ) {
            crate::shutdown::console_error(&format!("enabling the {controller} controller: {e}"));
        }
    }
    Ok(())
}

/// Where the kit disk is mounted on its way in: devtmpfs, so nothing is written to the
/// container's root.
const KIT_STAGING: &str = "/dev/.zos-kit";

/// Shows the kit disk read-only in the container: its `modules/` over
/// `/lib/modules/<release>` (hiding the image's own, if any) and its `config` at
/// `/boot/config-<release>`, each a bind mount of one read-only mount of the disk, which
/// is then detached from its staging point.
fn mount_kit(release: &str) -> Result<(), String> {
    let device = wait_for_disk(KIT_SERIAL)?;
    let ro = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
    mount_at(&device, KIT_STAGING, "ext4", ro, None)
        .map_err(|e| format!("kit disk ({device}): {e}"))?;
    let modules = format!("/lib/modules/{release}");
    mkdir(&modules)?;
    bind_read_only(&format!("{KIT_STAGING}/modules"), &modules)?;
    let config = format!("/boot/config-{release}");
    mkdir("/boot")?;
    if std::fs::symlink_metadata(&config).is_err() {
        std::fs::write(&config, "").map_err(|e| format!("creating {config}: {e}"))?;
    }
    bind_read_only(&format!("{KIT_STAGING}/config"), &config)?;
    sys::umount(KIT_STAGING, libc::MNT_DETACH)
        .map_err(|e| format!("detaching {KIT_STAGING}: {e}"))?;
    let _ = std::fs::remove_dir(KIT_STAGING);
    Ok(())
}

/// Bind-mounts `source` on `target`, read-only (a bind takes its flags only on a remount).
fn bind_read_only(source: &str, target: &str) -> Result<(), String> {
    mount(source, target, None, libc::MS_BIND, None)
        .map_err(|e| format!("binding {source} on {target}: {e}"))?;
    let flags =
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
    mount("", target, None, flags, None).map_err(|e| format!("making {target} read-only: {e}"))
}

/// Writes a minimal /etc/hosts when the image has none.
fn write_hosts(hostname: &str) -> Result<(), String> {
    if std::fs::symlink_metadata("/etc/hosts").is_ok() {
        return Ok(());
    }
    mkdir("/etc")?;
    let line = format!("127.0.0.1\tlocalhost {hostname}")
        .trim_end()
        .to_string()
        + "\n";
    std::fs::write("/etc/hosts", line).map_err(|e| format!("writing /etc/hosts: {e}"))
}

/// The block device (e.g. `vdb`) whose virtio serial is `serial`.
fn find_disk(serial: &str) -> io::Result<Option<String>> {
    for entry in std::fs::read_dir("/sys/block")? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if !name.starts_with("vd") {
            continue;
        }
        let found = std::fs::read_to_string(format!("/sys/block/{name}/serial"))
            .is_ok_and(|s| s.trim() == serial);
        // The device node follows the sysfs entry: wait for both.
        if found && Path::new("/dev").join(&name).exists() {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

/// The device node (`/dev/vdX`) of the disk with virtio serial `serial`, waiting for it to
/// appear after its driver loads.
fn wait_for_disk(serial: &str) -> Result<String, String> {
    let start = Instant::now();
    loop {
        match find_disk(serial) {
            Ok(Some(name)) => return Ok(format!("/dev/{name}")),
            Ok(None) if start.elapsed() < DEVICE_WAIT => std::thread::sleep(POLL),
            Ok(None) => return Err(format!("no disk with serial {serial:?} appeared")),
            Err(e) => return Err(format!("listing /sys/block: {e}")),
        }
    }
}

fn mount_disk(disk: &GuestDisk) -> Result<(), String> {
    let device = wait_for_disk(&disk.serial)?;
    let target = Path::new("/").join(&disk.mount_at);
    let target = target.to_string_lossy();
    mount_at(&device, &target, &disk.fstype, 0, None)
        .map_err(|e| format!("disk {:?} ({device}): {e}", disk.serial))?;
    crate::shutdown::remember_mount(&target);
    Ok(())
}

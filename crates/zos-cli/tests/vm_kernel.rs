//! VM mode end to end: an flist that carries its own kernel and initrd boots them, with the
//! flist as its root over virtio-fs and a NoCloud seed disk attached.

mod common;

use common::{is_root, ok, zos};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn bootkit() -> PathBuf {
    let dir = std::env::var_os("ZOS_BOOTKIT").map_or_else(
        || PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/zos/bootkit"),
        PathBuf::from,
    );
    dir.join("current")
}

fn write_exec(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// An initrd of its own, made from busybox and the kit's modules: it mounts the virtio-fs
/// root named on the kernel command line and switches to it, as a distribution initrd would.
fn initrd(dir: &Path, out: &Path) {
    for sub in ["bin", "proc", "dev", "newroot", "lib/modules"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).unwrap();
    let modules = bootkit().join("modules/kernel");
    let wanted = [
        "drivers/virtio/virtio_ring",
        "drivers/virtio/virtio",
        "drivers/virtio/virtio_mmio",
        "fs/fuse/fuse",
        "fs/fuse/virtiofs",
        "drivers/block/virtio_blk",
    ];
    for m in wanted {
        let src = modules.join(format!("{m}.ko"));
        let name = src.file_name().unwrap().to_owned();
        std::fs::copy(&src, dir.join("lib/modules").join(name)).unwrap();
    }
    write_exec(
        &dir.join("init"),
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s /bin\n\
         mount -t proc proc /proc\n\
         mount -t devtmpfs dev /dev\n\
         for m in virtio_ring virtio virtio_mmio fuse virtiofs virtio_blk; do insmod /lib/modules/$m.ko; done\n\
         root=$(sed -n 's/.* root=\\([^ ]*\\).*/\\1/p' /proc/cmdline)\n\
         mount -t virtiofs \"$root\" /newroot || { echo \"initrd: cannot mount $root\"; poweroff -f; }\n\
         umount /proc\n\
         exec switch_root /newroot /sbin/init\n",
    );
    let list = Command::new("find")
        .arg(".")
        .current_dir(dir)
        .output()
        .unwrap()
        .stdout;
    let mut cpio = Command::new("busybox")
        .args(["cpio", "-o", "-H", "newc"])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    cpio.stdin.take().unwrap().write_all(&list).unwrap();
    assert!(cpio.wait().unwrap().success());
}

#[test]
fn an_flist_with_a_kernel_boots_it_with_the_flist_as_root_and_a_seed_disk() {
    if !is_root() || !common::have("qemu-system-x86_64") {
        return;
    }
    let tmp = tempfile::tempdir_in("/tmp").unwrap();
    let root = tmp.path().join("root");
    for sub in ["bin", "sbin", "boot", "proc", "sys", "dev"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    std::fs::copy(bootkit().join("vmlinuz"), root.join("boot/vmlinuz")).unwrap();
    initrd(&tmp.path().join("initrd"), &root.join("boot/initrd.img"));
    // The guest's own init: proves it runs from the flist, sees its seed disk, and can write.
    write_exec(
        &root.join("sbin/init"),
        "#!/bin/busybox sh\n\
         /bin/busybox mount -t proc proc /proc\n\
         /bin/busybox mount -t sysfs sys /sys\n\
         echo \"vm-mode up: $(/bin/busybox cat /proc/cmdline)\"\n\
         for s in /sys/block/*/serial; do echo \"disk serial $(/bin/busybox cat $s)\"; done\n\
         echo written > /written && echo \"wrote $(/bin/busybox cat /written)\"\n\
         /bin/busybox poweroff -f\n",
    );
    let fl = tmp.path().join("k.fl");
    let store = format!("dir://{}", tmp.path().join("store").display());
    ok(zos()
        .args(["flist", "pack"])
        .arg(&root)
        .arg("-o")
        .arg(&fl)
        .args(["--store", &store]));
    let data = tmp.path().join("data");
    let cache = tmp.path().join("cache");
    let out = ok(zos()
        .arg("run")
        .arg(&fl)
        .arg("--data-dir")
        .arg(&data)
        .arg("--cache")
        .arg(&cache));
    assert!(
        out.contains("vm-mode up:"),
        "the flist's init did not run:\n{out}"
    );
    assert!(
        out.contains("rootfstype=virtiofs root=rootfs"),
        "root over virtio-fs expected:\n{out}"
    );
    assert!(
        out.contains("disk serial zos-seed"),
        "no NoCloud seed disk:\n{out}"
    );
    assert!(
        out.contains("wrote written"),
        "the root is not writable:\n{out}"
    );
    // `zos run` removes the VM afterwards.
    let left: Vec<_> = std::fs::read_dir(data.join("vms")).unwrap().collect();
    assert!(left.is_empty(), "VM dirs left behind: {left:?}");
}

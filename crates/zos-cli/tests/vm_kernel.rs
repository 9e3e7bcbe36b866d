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

/// An initrd made from busybox, the kit's `modules` (paths under `kernel/`, no `.ko`) and
/// `init`, packed with busybox's cpio.
fn initrd(dir: &Path, modules: &[&str], init: &str, out: &Path) {
    for sub in ["bin", "proc", "sys", "dev", "newroot", "mnt", "lib/modules"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).unwrap();
    let kit = bootkit().join("modules/kernel");
    for m in modules {
        let src = kit.join(format!("{m}.ko"));
        let name = src.file_name().unwrap().to_owned();
        std::fs::copy(&src, dir.join("lib/modules").join(name)).unwrap();
    }
    write_exec(&dir.join("init"), init);
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

/// The virtio modules every test initrd loads, in dependency order.
const VIRTIO: [&str; 4] = [
    "drivers/virtio/virtio_ring",
    "drivers/virtio/virtio",
    "drivers/virtio/virtio_mmio",
    "drivers/block/virtio_blk",
];

/// An initrd's `/init`: busybox set up, /proc, /sys and /dev mounted, `modules` loaded in
/// order, then `body`.
fn init_script(modules: &[&str], body: &str) -> String {
    let mut script = String::from(
        "#!/bin/busybox sh\n/bin/busybox --install -s /bin\n\
         mount -t proc proc /proc\nmount -t sysfs sys /sys\nmount -t devtmpfs dev /dev\n",
    );
    for m in modules {
        let name = Path::new(m).file_name().unwrap().to_str().unwrap();
        script.push_str(&format!("insmod /lib/modules/{name}.ko\n"));
    }
    script + body
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
    // Like a distribution's initrd: mount the virtio-fs root named on the command line and
    // switch to it.
    let modules = [&VIRTIO[..], &["fs/fuse/fuse", "fs/fuse/virtiofs"]].concat();
    let init = init_script(
        &modules,
        "root=$(sed -n 's/.* root=\\([^ ]*\\).*/\\1/p' /proc/cmdline)\n\
         mount -t virtiofs \"$root\" /newroot || { echo \"initrd: cannot mount $root\"; poweroff -f; }\n\
         umount /sys /dev /proc\n\
         exec switch_root /newroot /sbin/init\n",
    );
    initrd(
        &tmp.path().join("initrd"),
        &modules,
        &init,
        &root.join("boot/initrd.img"),
    );
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
    let fl = common::pack(&root, tmp.path(), "k.fl");
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

/// A bootable raw disk: a FAT filesystem with syslinux, the kit's kernel and `initrd`, over
/// the first 48 MiB of a 64 MiB disk (the guest writes its marks past the filesystem).
fn disk_image(initrd: &Path, out: &Path) {
    let cfg = out.with_extension("cfg");
    std::fs::write(
        &cfg,
        format!(
            "DEFAULT linux\nLABEL linux\n  KERNEL /vmlinuz\n  INITRD /initrd.img\n  \
             APPEND console=ttyS0 panic=-1 quiet zos_test=disk-image {}\n",
            zos_vmm::host::tcg_kernel_args()
        ),
    )
    .unwrap();
    std::fs::File::create(out)
        .unwrap()
        .set_len(48 << 20)
        .unwrap();
    ok(Command::new("mkfs.vfat").args(["-n", "BOOT"]).arg(out));
    ok(Command::new("syslinux").arg("--install").arg(out));
    for (src, name) in [
        (bootkit().join("vmlinuz"), "vmlinuz"),
        (initrd.to_path_buf(), "initrd.img"),
        (cfg, "syslinux.cfg"),
    ] {
        ok(Command::new("mcopy")
            .arg("-i")
            .arg(out)
            .arg(&src)
            .arg(format!("::/{name}")));
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(out)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
}

#[test]
fn an_flist_with_a_disk_image_boots_it_copy_on_write_with_a_seed_disk() {
    if !is_root() || !common::have("qemu-system-x86_64") {
        return;
    }
    if !common::have("syslinux") || !common::have("mcopy") {
        assert!(
            std::env::var("CI").is_err(),
            "syslinux and mtools are missing: run scripts/setup"
        );
        return;
    }
    let tmp = tempfile::tempdir_in("/tmp").unwrap();
    let modules = [
        &VIRTIO[..],
        &[
            "fs/fat/fat",
            "fs/fat/vfat",
            "fs/nls/nls_cp437",
            "fs/nls/nls_ascii",
            "fs/nls/nls_utf8",
        ],
    ]
    .concat();
    // The guest reports its disks and seed, then reads the mark a previous boot left past the
    // filesystem and writes the next one.
    let init = init_script(
        &modules,
        "echo \"disk-image up: $(cat /proc/cmdline)\"\n\
         for b in /sys/block/vd*; do s=$(cat $b/serial); echo \"disk serial $s\"\n\
           [ \"$s\" = zos-root ] && root=${b##*/}; [ \"$s\" = zos-seed ] && seed=${b##*/}; done\n\
         mount -t vfat -o ro /dev/$seed /mnt && echo \"seed: $(grep hostname /mnt/meta-data)\"\n\
         prev=$(dd if=/dev/$root bs=1M skip=60 count=1 2>/dev/null | head -c 16 | tr -d '\\000')\n\
         echo \"previous mark: [$prev]\"\n\
         if [ -z \"$prev\" ]; then next=mark-one; else next=mark-two; fi\n\
         printf %s $next | dd of=/dev/$root bs=1M seek=60 conv=notrunc 2>/dev/null && sync\n\
         echo \"wrote $next\"\n\
         poweroff -f\n",
    );
    let initrd_img = tmp.path().join("initrd.img");
    initrd(&tmp.path().join("initrd"), &modules, &init, &initrd_img);
    let root = tmp.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    disk_image(&initrd_img, &root.join("image.raw"));
    let original = std::fs::read(root.join("image.raw")).unwrap();

    let fl = common::pack(&root, tmp.path(), "d.fl");
    let data = tmp.path().join("data");
    let vm = |args: &[&str]| {
        let mut cmd = zos();
        cmd.arg("vm")
            .args(args)
            .env("ZOS_DATA_DIR", &data)
            .env("ZOS_CACHE_DIR", tmp.path().join("cache"));
        cmd
    };
    for name in ["a", "b"] {
        ok(vm(&[
            "create",
            "--name",
            name,
            "--hostname",
            &format!("host-{name}"),
        ])
        .arg(&fl));
    }
    for _ in 0..2 {
        ok(&mut vm(&["start", "a"]));
        ok(&mut vm(&["wait", "a", "--timeout", "5m"]));
    }
    let logs = ok(&mut vm(&["logs", "a"]));
    assert!(
        logs.contains("zos_test=disk-image"),
        "the image's bootloader did not boot its kernel:\n{logs}"
    );
    assert!(
        logs.contains("disk serial zos-root"),
        "no root disk:\n{logs}"
    );
    assert!(
        logs.contains("seed: local-hostname: \"host-a\""),
        "no NoCloud seed:\n{logs}"
    );
    assert!(logs.contains("previous mark: []"), "first boot:\n{logs}");
    assert!(
        logs.contains("previous mark: [mark-one]") && logs.contains("wrote mark-two"),
        "the second boot does not see the first one's write:\n{logs}"
    );
    // Copy-on-write: the overlay holds the writes, its backing is the flist's image.
    let overlay = data.join("vms/a/root.qcow2");
    let info = zos_vmm::disk::disk_info(&overlay).unwrap();
    assert!(
        info.backing_filename
            .as_deref()
            .is_some_and(|b| b.ends_with("/lower/image.raw")),
        "{info:?}"
    );
    assert!(
        info.actual_size < 16 << 20,
        "the overlay looks like a full copy: {info:?}"
    );
    // The disk the guest sees is the root size (`zos vm create`'s default, 2G).
    assert_eq!(info.virtual_size, 2 << 30, "{info:?}");

    // Another VM of the same flist starts from the pristine image.
    ok(&mut vm(&["start", "b"]));
    ok(&mut vm(&["wait", "b", "--timeout", "5m"]));
    let logs = ok(&mut vm(&["logs", "b"]));
    assert!(
        logs.contains("previous mark: []") && logs.contains("seed: local-hostname: \"host-b\""),
        "b sees a's writes or a's seed:\n{logs}"
    );
    for name in ["a", "b"] {
        ok(&mut vm(&["rm", name]));
    }
    let left: Vec<_> = std::fs::read_dir(data.join("vms")).unwrap().collect();
    assert!(left.is_empty(), "VM dirs left behind: {left:?}");
    // The flist's image itself never changed.
    ok(zos()
        .args(["flist", "unpack"])
        .arg(&fl)
        .arg(tmp.path().join("out")));
    assert!(
        std::fs::read(tmp.path().join("out/image.raw")).unwrap() == original,
        "the flist's image was written to"
    );
}

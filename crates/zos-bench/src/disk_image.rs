//! A bootable disk image for the VM-mode row of `zos-bench vm`: a FAT disk with syslinux, the
//! boot kit's kernel and a busybox initramfs whose `/init` loads the virtio modules (the
//! balloon among them, as a distribution's kernel would), prints the mark and idles. It stands
//! in for a distribution's cloud image, which cannot be downloaded here: the VMM's side of the
//! cost (firmware, QEMU, code cache, disk layer) is the same, the guest's own is smaller.

use crate::image::{zos_in, MARK};
use crate::zos_bin::Zos;
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use zos_vmm::bootkit::{self, BootKit};

/// The modules the initramfs loads, in dependency order (paths under the kit's `kernel/`).
const MODULES: [&str; 4] = [
    "drivers/virtio/virtio_ring",
    "drivers/virtio/virtio",
    "drivers/virtio/virtio_mmio",
    "drivers/virtio/virtio_balloon",
];

/// Builds the disk image in `work` and packs it as `/image.raw` of an flist; returns the flist.
pub fn disk_image_flist(zos: &Zos, work: &Path) -> Result<PathBuf> {
    let kit = BootKit::locate(&bootkit::default_dir())?;
    let dir = work.join("disk-image");
    let initrd = dir.join("initrd.img");
    busybox_initrd(
        &kit,
        &dir.join("initrd"),
        &initrd,
        &MODULES,
        &format!("echo {MARK}\nexec sleep 1000000\n"),
    )?;
    let root = dir.join("root");
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    make_disk(
        &kit.bzimage,
        &initrd,
        &dir.join("syslinux.cfg"),
        &root.join("image.raw"),
    )?;
    let fl = work.join("disk-image.fl");
    let store = format!("dir://{}", work.join("store").display());
    run(zos_in(zos, work)
        .args(["flist", "pack"])
        .arg(&root)
        .arg("-o")
        .arg(&fl)
        .args(["--store", &store]))?;
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(fl)
}

/// Runs `cmd`, failing with what it printed.
fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.stdout(Stdio::null()).output().with_context(|| {
        format!(
            "starting {:?} (install it with scripts/setup)",
            cmd.get_program()
        )
    })?;
    if !out.status.success() {
        bail!(
            "{:?} failed: {}",
            cmd.get_program(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A busybox initramfs (newc cpio) at `out`, staged in `dir` (which may already hold more
/// files to pack): its `/init` mounts proc, sys and dev, loads `modules` (paths under the
/// kit's `kernel/`, without `.ko`, in dependency order), then runs `script`.
pub fn busybox_initrd(
    kit: &BootKit,
    dir: &Path,
    out: &Path,
    modules: &[&str],
    script: &str,
) -> Result<()> {
    for sub in ["bin", "proc", "sys", "dev", "lib/modules"] {
        std::fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("creating {}", dir.join(sub).display()))?;
    }
    std::fs::copy("/bin/busybox", dir.join("bin/busybox"))
        .context("copying /bin/busybox (install busybox-static with scripts/setup)")?;
    let mut init = String::from(
        "#!/bin/busybox sh\n/bin/busybox --install -s /bin\n\
         mount -t proc proc /proc\nmount -t sysfs sys /sys\nmount -t devtmpfs dev /dev\n",
    );
    for m in modules {
        let src = kit.modules.join("kernel").join(format!("{m}.ko"));
        let name = src
            .file_name()
            .context("a module path without a file name")?
            .to_owned();
        std::fs::copy(&src, dir.join("lib/modules").join(&name))
            .with_context(|| format!("copying {}", src.display()))?;
        init.push_str(&format!("insmod /lib/modules/{}\n", name.to_string_lossy()));
    }
    init.push_str(script);
    let init_path = dir.join("init");
    std::fs::write(&init_path, init).with_context(|| format!("writing {}", init_path.display()))?;
    std::fs::set_permissions(&init_path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", init_path.display()))?;
    let list = Command::new("find")
        .arg(".")
        .current_dir(dir)
        .output()
        .context("starting find")?
        .stdout;
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut cpio = Command::new("busybox")
        .args(["cpio", "-o", "-H", "newc"])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(file)
        .stderr(Stdio::null())
        .spawn()
        .context("starting busybox cpio")?;
    cpio.stdin
        .take()
        .context("busybox cpio has no stdin")?
        .write_all(&list)
        .context("writing the file list to busybox cpio")?;
    if !cpio.wait().context("waiting for busybox cpio")?.success() {
        bail!("busybox cpio failed making {}", out.display());
    }
    Ok(())
}

/// A 64 MiB raw disk at `out` whose first 48 MiB are a FAT filesystem with syslinux booting
/// `kernel` and `initrd` on the serial console.
fn make_disk(kernel: &Path, initrd: &Path, cfg: &Path, out: &Path) -> Result<()> {
    std::fs::write(
        cfg,
        format!(
            "DEFAULT linux\nLABEL linux\n  KERNEL /vmlinuz\n  INITRD /initrd.img\n  \
             APPEND console=ttyS0 panic=-1 quiet {}\n",
            zos_vmm::host::tcg_kernel_args()
        ),
    )
    .with_context(|| format!("writing {}", cfg.display()))?;
    let disk = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    disk.set_len(48 << 20)
        .with_context(|| format!("sizing {}", out.display()))?;
    run(Command::new("mkfs.vfat").args(["-n", "BOOT"]).arg(out))?;
    run(Command::new("syslinux").arg("--install").arg(out))?;
    for (src, name) in [
        (kernel, "vmlinuz"),
        (initrd, "initrd.img"),
        (cfg, "syslinux.cfg"),
    ] {
        run(Command::new("mcopy")
            .arg("-i")
            .arg(out)
            .arg(src)
            .arg(format!("::/{name}")))?;
    }
    disk.set_len(64 << 20)
        .with_context(|| format!("sizing {}", out.display()))?;
    Ok(())
}

//! The boot kit: the guest kernel fetched by `scripts/bootkit` (Debian's cloud kernel) and the
//! initramfs zos builds from its modules and `zos-init`.
//!
//! The initramfs is cached under the kit by kernel version and a hash of `zos-init`, so it is
//! rebuilt exactly when either changes. Each VM then gets that base image with a tiny second
//! cpio archive appended that holds its [`GuestConfig`]: Linux unpacks concatenated archives as
//! one, so a VM's configuration costs a few hundred bytes, not a rebuilt image.

use crate::{Error, Result};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use zos_init::GuestConfig;

/// Modules the guest needs, by name; their dependencies are added from `modules.dep`.
/// virtio-mmio is the bus of QEMU's microvm; ext4 is built into Debian's cloud kernel.
const WANTED_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtiofs",
    "virtio_console",
    "virtio_blk",
    "virtio_net",
];

/// Where modules are placed inside the initramfs.
const MODULE_DIR: &str = "lib/modules";

/// The kit disk's file, beside the kernel it belongs to.
const KIT_DISK: &str = "kit.ext4";

/// A located boot kit: one kernel and its modules.
#[derive(Debug, Clone)]
pub struct BootKit {
    /// The kit directory (`$ZOS_BOOTKIT`, default `~/.cache/zos/bootkit`).
    pub dir: PathBuf,
    /// Kernel release, e.g. `6.1.0-56-cloud-amd64`.
    pub version: String,
    /// The kernel VMs boot: the uncompressed PVH ELF when this kernel has one (see
    /// [`crate::vmlinux`]), else the bzImage.
    pub kernel: PathBuf,
    /// The package's bzImage, for what needs one (a bootloader on a disk image).
    pub bzimage: PathBuf,
    /// `lib/modules/<version>` of the kernel package.
    pub modules: PathBuf,
    /// `boot/config-<version>` of the kernel package (absent in kits fetched before it was
    /// kept: [`BootKit::kit_disk`] then says to run scripts/bootkit again).
    pub config: PathBuf,
}

/// The default kit directory: `$ZOS_BOOTKIT`, else `~/.cache/zos/bootkit`.
pub fn default_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ZOS_BOOTKIT") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/zos/bootkit")
}

impl BootKit {
    /// Finds the current kernel of the kit in `dir`.
    pub fn locate(dir: &Path) -> Result<BootKit> {
        let current = dir.join("current");
        let target = fs::canonicalize(&current).map_err(|_| {
            Error::Invalid(format!(
                "no guest kernel in {}: run scripts/bootkit to fetch it (or set ZOS_BOOTKIT)",
                dir.display()
            ))
        })?;
        let version = target
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::Invalid(format!("{} has no version name", target.display())))?
            .to_string();
        let bzimage = target.join("vmlinuz");
        let modules = target.join("modules");
        for needed in [&bzimage, &modules.join("modules.dep")] {
            if !needed.exists() {
                return Err(Error::Invalid(format!(
                    "the boot kit in {} is incomplete ({} is missing): run scripts/bootkit again",
                    target.display(),
                    needed.display()
                )));
            }
        }
        Ok(BootKit {
            dir: dir.to_path_buf(),
            version,
            kernel: crate::vmlinux::pvh_kernel(&bzimage).unwrap_or_else(|| bzimage.clone()),
            bzimage,
            modules,
            config: target.join("config"),
        })
    }

    /// The kit disk: a read-only ext4 image holding this kernel's `modules/` and `config`,
    /// attached to every container VM (serial [`zos_init::KIT_SERIAL`]) so the guest can load
    /// any module and checks can read the config. Built on first use (`mke2fs -d`, a few
    /// seconds), then one file all VMs share: read-only, so the host caches its pages once.
    pub fn kit_disk(&self) -> Result<PathBuf> {
        let kernel_dir = self
            .modules
            .parent()
            .ok_or_else(|| Error::Invalid(format!("{} has no parent", self.modules.display())))?;
        let out = kernel_dir.join(KIT_DISK);
        if out.exists() {
            return Ok(out);
        }
        if !self.config.is_file() {
            return Err(Error::Invalid(format!(
                "the boot kit in {} has no kernel config ({} is missing): run scripts/bootkit \
                 again",
                kernel_dir.display(),
                self.config.display()
            )));
        }
        // The image's tree, hard-linked from the kit rather than copied.
        let stage = tempfile::tempdir_in(kernel_dir)
            .map_err(|e| Error::io(format!("creating a dir in {}", kernel_dir.display()), e))?;
        link_tree(&self.modules, &stage.path().join("modules"))?;
        let config = stage.path().join("config");
        fs::hard_link(&self.config, &config)
            .map_err(|e| Error::io(format!("linking {}", config.display()), e))?;
        crate::disk::ext4_image_of(stage.path(), &out, "zos-kit")?;
        tracing::info!(path = %out.display(), "built the kit disk");
        Ok(out)
    }

    /// The base initramfs for this kernel and `init` (the static `zos-init`): built on first
    /// use, then reused until either changes. Returns its path and the modules' load order
    /// (paths inside the image, as [`GuestConfig::modules`] wants them).
    pub fn initramfs(&self, init: &Path) -> Result<(PathBuf, Vec<String>)> {
        let init_bytes =
            fs::read(init).map_err(|e| Error::io(format!("reading {}", init.display()), e))?;
        check_static(init, &init_bytes)?;
        let order = self.module_order()?;
        let mut hash = Sha256::new();
        hash.update(&init_bytes);
        for m in &order {
            hash.update(m.as_bytes());
        }
        let key = hex::encode(&hash.finalize()[..12]);
        let out_dir = self.dir.join("initramfs");
        let out = out_dir.join(format!("{}-{key}.cpio", self.version));
        let inside: Vec<String> = order.iter().map(|m| module_path_inside(m)).collect();
        if out.exists() {
            return Ok((out, inside));
        }
        fs::create_dir_all(&out_dir)
            .map_err(|e| Error::io(format!("creating {}", out_dir.display()), e))?;
        let tmp = tempfile::NamedTempFile::new_in(&out_dir)
            .map_err(|e| Error::io(format!("creating a file in {}", out_dir.display()), e))?;
        let mut w = std::io::BufWriter::new(tmp);
        let mut archive = Archive::new(&mut w);
        for dir in ["dev", "proc", "sys", "newroot", "zos", "lib", MODULE_DIR] {
            archive.dir(dir)?;
        }
        // The kernel opens /dev/console for PID 1's stdio before init can mount devtmpfs.
        archive.char_device("dev/console", 5, 1)?;
        archive.file("init", 0o755, &init_bytes)?;
        for (module, path) in order.iter().zip(&inside) {
            let src = self.modules.join(module);
            let bytes =
                fs::read(&src).map_err(|e| Error::io(format!("reading {}", src.display()), e))?;
            archive.file(path, 0o644, &bytes)?;
        }
        archive.finish()?;
        let tmp = w
            .into_inner()
            .map_err(|e| Error::io("writing the initramfs".into(), e.into_error()))?;
        tmp.persist(&out)
            .map_err(|e| Error::io(format!("writing {}", out.display()), e.error))?;
        tracing::info!(path = %out.display(), "built initramfs");
        Ok((out, inside))
    }

    /// Module files (relative to `modules`) in load order: every wanted module after all of
    /// its dependencies, each once.
    fn module_order(&self) -> Result<Vec<String>> {
        let dep_file = self.modules.join("modules.dep");
        let text = fs::read_to_string(&dep_file)
            .map_err(|e| Error::io(format!("reading {}", dep_file.display()), e))?;
        let deps = parse_modules_dep(&text);
        let by_name: HashMap<String, &String> =
            deps.keys().map(|path| (module_name(path), path)).collect();
        let mut order = Vec::new();
        for wanted in WANTED_MODULES {
            let path = by_name.get(*wanted).ok_or_else(|| {
                Error::Invalid(format!(
                    "kernel {} has no module {wanted} (modules.dep in {})",
                    self.version,
                    self.modules.display()
                ))
            })?;
            visit(path, &deps, &mut order, 0)?;
        }
        Ok(order)
    }
}

/// Recreates the tree at `from` under `to`: directories made, files hard-linked, symlinks
/// copied as symlinks.
fn link_tree(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir(to).map_err(|e| Error::io(format!("creating {}", to.display()), e))?;
    let listing =
        fs::read_dir(from).map_err(|e| Error::io(format!("listing {}", from.display()), e))?;
    for entry in listing {
        let entry = entry.map_err(|e| Error::io(format!("listing {}", from.display()), e))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry
            .file_type()
            .map_err(|e| Error::io(format!("reading {}", src.display()), e))?;
        let done = if kind.is_dir() {
            link_tree(&src, &dst).map(|_| ())
        } else if kind.is_symlink() {
            fs::read_link(&src)
                .and_then(|target| std::os::unix::fs::symlink(target, &dst))
                .map_err(|e| Error::io(format!("copying the symlink {}", src.display()), e))
        } else {
            fs::hard_link(&src, &dst)
                .map_err(|e| Error::io(format!("linking {}", src.display()), e))
        };
        done?;
    }
    Ok(())
}

/// Appends `module` after its dependencies (depth-first).
fn visit(
    module: &str,
    deps: &HashMap<String, Vec<String>>,
    order: &mut Vec<String>,
    depth: usize,
) -> Result<()> {
    if depth > 64 {
        return Err(Error::Invalid(format!(
            "modules.dep has a dependency cycle through {module}"
        )));
    }
    if order.iter().any(|m| m == module) {
        return Ok(());
    }
    for dep in deps.get(module).map(Vec::as_slice).unwrap_or_default() {
        visit(dep, deps, order, depth + 1)?;
    }
    order.push(module.to_string());
    Ok(())
}

/// `path: dep dep …` lines → map of module path to its dependency paths.
fn parse_modules_dep(text: &str) -> HashMap<String, Vec<String>> {
    text.lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(module, deps)| {
            (
                module.trim().to_string(),
                deps.split_whitespace().map(str::to_string).collect(),
            )
        })
        .collect()
}

/// `kernel/fs/fuse/virtiofs.ko` → `virtiofs` (modules.dep names are file names; `-` and `_`
/// are the same to the kernel).
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

fn module_path_inside(module: &str) -> String {
    let file = module.rsplit('/').next().unwrap_or(module);
    format!("{MODULE_DIR}/{file}")
}

/// Refuses a dynamically linked `zos-init`: it would die in the initramfs, which has no libc,
/// and the VM would panic with a confusing console message.
fn check_static(path: &Path, elf: &[u8]) -> Result<()> {
    let not_static = || {
        Error::Invalid(format!(
            "{} is not a static x86-64 executable; build it with scripts/build-init",
            path.display()
        ))
    };
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 {
        return Err(not_static());
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes([elf[o], elf[o + 1], elf[o + 2], elf[o + 3]]);
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&elf[o..o + 8]);
        u64::from_le_bytes(b)
    };
    let phoff = usize::try_from(u64_at(0x20)).map_err(|_| not_static())?;
    let phentsize = usize::from(u16_at(0x36));
    let phnum = usize::from(u16_at(0x38));
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        if at + 4 > elf.len() {
            return Err(not_static());
        }
        const PT_INTERP: u32 = 3;
        if u32_at(at) == PT_INTERP {
            return Err(not_static());
        }
    }
    Ok(())
}

/// Writes the per-VM initrd: the base image followed by a small archive holding `config`.
pub fn write_vm_initrd(base: &Path, config: &GuestConfig, out: &Path) -> Result<()> {
    let json = serde_json::to_vec(config)
        .map_err(|e| Error::Invalid(format!("encoding the guest config: {e}")))?;
    let mut buf = Vec::new();
    fs::File::open(base)
        .and_then(|mut f| f.read_to_end(&mut buf))
        .map_err(|e| Error::io(format!("reading {}", base.display()), e))?;
    {
        let mut archive = Archive::new(&mut buf);
        archive.file(zos_init::CONFIG_PATH.trim_start_matches('/'), 0o600, &json)?;
        archive.finish()?;
    }
    crate::fsutil::write_atomic(out, &buf)
}

/// A newc cpio writer over the `cpio` crate, with inode numbers handed out in order.
struct Archive<W: Write> {
    w: Option<W>,
    ino: u32,
}

impl<W: Write> Archive<W> {
    fn new(w: W) -> Self {
        Archive { w: Some(w), ino: 1 }
    }

    fn entry(&mut self, builder: cpio::newc::Builder, data: &[u8]) -> Result<()> {
        let w = self
            .w
            .take()
            .ok_or_else(|| Error::Invalid("archive finished".into()))?;
        let size = u32::try_from(data.len())
            .map_err(|_| Error::Invalid("an initramfs file is over 4 GiB".into()))?;
        self.ino += 1;
        let mut writer = builder.ino(self.ino).nlink(1).write(w, size);
        writer
            .write_all(data)
            .map_err(|e| Error::io("writing the initramfs".into(), e))?;
        self.w = Some(
            writer
                .finish()
                .map_err(|e| Error::io("writing the initramfs".into(), e))?,
        );
        Ok(())
    }

    fn dir(&mut self, name: &str) -> Result<()> {
        self.entry(cpio::newc::Builder::new(name).mode(0o040755), &[])
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> Result<()> {
        self.entry(cpio::newc::Builder::new(name).mode(0o100000 | perm), data)
    }

    fn char_device(&mut self, name: &str, major: u32, minor: u32) -> Result<()> {
        let b = cpio::newc::Builder::new(name)
            .mode(0o020600)
            .rdev_major(major)
            .rdev_minor(minor);
        self.entry(b, &[])
    }

    fn finish(&mut self) -> Result<()> {
        let w = self
            .w
            .take()
            .ok_or_else(|| Error::Invalid("archive finished".into()))?;
        cpio::newc::trailer(w).map_err(|e| Error::io("writing the initramfs".into(), e))?;
        Ok(())
    }
}

/// Finds the static `zos-init`: `$ZOS_INIT`, else beside the running binary, else where
/// `scripts/build-init` puts it in the build directory.
pub fn locate_init() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("ZOS_INIT") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| Error::io("finding the zos binary".into(), e))?;
    let mut candidates = Vec::new();
    if let Some(dir) = exe.parent() {
        // target/<profile>/zos (or target/<profile>/deps/… for tests) → target/<triple>/release,
        // before target/<profile>/zos-init, which a plain `cargo build` leaves dynamic.
        for up in dir.ancestors().take(3) {
            candidates.push(up.join("x86_64-unknown-linux-gnu/release/zos-init"));
        }
        candidates.push(dir.join("zos-init"));
    }
    candidates.push(PathBuf::from("/usr/lib/zos/zos-init"));
    candidates
        .into_iter()
        .find(|p| fs::read(p).is_ok_and(|elf| check_static(p, &elf).is_ok()))
        .ok_or_else(|| {
            Error::Invalid(
                "no static zos-init (the guest's PID 1) found: build it with scripts/build-init, \
                 or set ZOS_INIT"
                    .into(),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_come_after_their_dependencies() {
        let deps = parse_modules_dep(
            "kernel/fs/fuse/virtiofs.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko kernel/fs/fuse/fuse.ko\n\
             kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n\
             kernel/drivers/virtio/virtio_ring.ko:\n\
             kernel/fs/fuse/fuse.ko:\n",
        );
        let mut order = Vec::new();
        visit("kernel/fs/fuse/virtiofs.ko", &deps, &mut order, 0).unwrap();
        let pos = |m: &str| order.iter().position(|x| x.ends_with(m)).unwrap();
        assert_eq!(order.len(), 4);
        assert!(pos("virtio_ring.ko") < pos("/virtio.ko"));
        assert!(pos("/virtio.ko") < pos("virtiofs.ko"));
        assert!(pos("fuse.ko") < pos("virtiofs.ko"));
        assert_eq!(
            module_name("kernel/drivers/char/hw_random/virtio-rng.ko"),
            "virtio_rng"
        );
    }

    #[test]
    fn a_dynamic_binary_is_refused() {
        let me = std::env::current_exe().unwrap();
        let bytes = fs::read(&me).unwrap();
        // Test binaries are dynamically linked (they have an interpreter).
        assert!(matches!(check_static(&me, &bytes), Err(Error::Invalid(_))));
        assert!(check_static(Path::new("x"), b"#!/bin/sh\n").is_err());
    }

    #[test]
    fn the_vm_archive_is_appended_to_the_base() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.cpio");
        let mut bytes = Vec::new();
        let mut a = Archive::new(&mut bytes);
        a.file("init", 0o755, b"x").unwrap();
        a.finish().unwrap();
        fs::write(&base, &bytes).unwrap();
        let config = GuestConfig {
            modules: vec![],
            hostname: "h".into(),
            disks: vec![],
            network: None,
            files: vec![],
            healthcheck: None,
            attach: None,
            kit_release: None,
            process: zos_init::Process {
                argv: vec!["/bin/true".into()],
                env: vec![],
                cwd: "/".into(),
                user: String::new(),
            },
        };
        let out = dir.path().join("vm.cpio");
        write_vm_initrd(&base, &config, &out).unwrap();
        let all = fs::read(&out).unwrap();
        assert!(all.starts_with(&bytes));
        let rest = &all[bytes.len()..];
        let reader = cpio::NewcReader::new(rest).unwrap();
        assert_eq!(reader.entry().name(), "zos/config.json");
        let mut json = Vec::new();
        let mut reader = reader;
        reader.read_to_end(&mut json).unwrap();
        let back: GuestConfig = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, config);
    }
}

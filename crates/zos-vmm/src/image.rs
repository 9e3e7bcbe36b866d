//! From an flist and a user's flags to a [`Boot`]: which mode the flist runs in, and for a
//! container, the process Docker would run (entrypoint, cmd, env, working dir, user), checked
//! against the flist's files before any VM starts.

use crate::disk::DiskFormat;
use crate::spec::{Boot, FlistSource, SeedSpec};
use crate::{Error, Result};
use zos_flist::oci::ImageConfig;
use zos_flist::{Flist, Inode, Kind};

/// `PATH` when neither the image nor the user sets one (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the user asked for on top of the image.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Replaces the image's entrypoint (`--entrypoint`).
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's cmd when not empty (arguments after `--`).
    pub cmd: Vec<String>,
    /// Added to (or replacing, by key) the image's environment.
    pub env: Vec<(String, String)>,
    /// Replaces the working directory.
    pub workdir: Option<String>,
    /// Replaces the user.
    pub user: Option<String>,
    /// Size of the container's writable layer in bytes.
    pub root_size: u64,
    /// The cloud-init seed of a VM-mode flist.
    pub seed: SeedSpec,
    /// Files written into a container's root before its process starts (container mode
    /// only: a VM-mode flist refuses them).
    pub files: Vec<zos_init::GuestFile>,
    /// The container's healthcheck (container mode only).
    pub healthcheck: Option<zos_init::GuestHealthcheck>,
}

/// Kernel paths a VM-mode flist may carry, and its optional initrds.
const KERNELS: &[&str] = &["/boot/vmlinuz", "/vmlinuz"];
const INITRDS: &[&str] = &["/boot/initrd.img", "/initrd.img"];
/// Disk images a VM-mode flist may carry instead of a kernel.
const DISK_IMAGES: &[(&str, DiskFormat)] = &[
    ("/image.raw", DiskFormat::Raw),
    ("/image.qcow2", DiskFormat::Qcow2),
];

/// Decides how `source` boots. An imported image (one with an image config) is a container;
/// otherwise a kernel in the flist makes it a kernel VM, a disk image a disk VM, and anything
/// else a container whose command the user must give.
///
/// Paths inside the flist are stored with their symlinks resolved inside the flist: the host
/// later opens them through the flist mount, where an absolute symlink would point into the
/// host's own filesystem.
pub fn plan(source: FlistSource, overrides: &Overrides) -> Result<Boot> {
    let flist = Flist::open(&source.path)?;
    let config = zos_flist::oci::image_config(&flist)?;
    let vm_mode = |what: &str| -> Result<()> {
        let field = if !overrides.files.is_empty() {
            "files"
        } else if overrides.healthcheck.is_some() {
            "healthcheck"
        } else if overrides.workdir.is_some() {
            "workdir"
        } else if overrides.user.is_some() {
            "user"
        } else {
            return Ok(());
        };
        Err(Error::Invalid(format!(
            "{field}: {} boots its own {what}, which zos does not set up; only container \
             machines take {field} (a VM's users set theirs up with cloud-init's user-data)",
            source.path.display()
        )))
    };
    if config.is_none() {
        if let Some(kernel) = KERNELS.iter().find_map(|p| real_file(&flist, p)) {
            let initrd = INITRDS.iter().find_map(|p| real_file(&flist, p));
            vm_mode("kernel")?;
            return Ok(Boot::Kernel {
                flist: source,
                root_size: overrides.root_size,
                kernel,
                initrd,
                cmdline: String::new(),
                seed: overrides.seed.clone(),
                network: None,
            });
        }
        if let Some((image, format)) = DISK_IMAGES
            .iter()
            .find_map(|(p, f)| Some((real_file(&flist, p)?, *f)))
        {
            vm_mode("disk image")?;
            return Ok(Boot::Disk {
                flist: source,
                image,
                format,
                root_size: overrides.root_size,
                seed: overrides.seed.clone(),
                network: None,
            });
        }
    }
    let config = config.unwrap_or_default();
    check_platform(&flist, &config)?;
    let process = process(&flist, &config, overrides)?;
    Ok(Boot::Container {
        flist: source,
        root_size: overrides.root_size,
        process,
        files: overrides.files.clone(),
        // The deployment's, else the image's (Docker's HEALTHCHECK).
        healthcheck: overrides.healthcheck.clone().or_else(|| {
            config
                .healthcheck
                .as_ref()
                .map(|h| zos_init::GuestHealthcheck {
                    argv: h.test.clone(),
                    interval_secs: h.interval_secs,
                    timeout_secs: h.timeout_secs,
                    retries: h.retries,
                    start_period_secs: h.start_period_secs,
                })
        }),
        // Set by the caller (VmRequest::plan): the network is no part of the image.
        network: None,
        // Set by the caller that attaches (`zos run` in the foreground).
        attach: None,
    })
}

fn check_platform(flist: &Flist, config: &ImageConfig) -> Result<()> {
    let ok_os = config.os.is_empty() || config.os == "linux";
    let ok_arch = config.architecture.is_empty() || config.architecture == "amd64";
    if ok_os && ok_arch {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "{} is an image for {}/{}; this node runs linux/amd64: import the image with --platform linux/amd64",
        flist.path().display(),
        config.os,
        config.architecture
    )))
}

/// The container's process, as Docker composes it, with its program found in the flist.
fn process(flist: &Flist, config: &ImageConfig, o: &Overrides) -> Result<zos_init::Process> {
    let entrypoint = o
        .entrypoint
        .clone()
        .unwrap_or_else(|| config.entrypoint.clone());
    let cmd = if o.cmd.is_empty() {
        config.cmd.clone()
    } else {
        o.cmd.clone()
    };
    let argv: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    let Some(program) = argv.first() else {
        return Err(Error::Invalid(format!(
            "{} has no entrypoint or command: give one after `--`, e.g. `zos run {} -- /bin/sh -c 'echo hi'`",
            flist.path().display(),
            flist.path().display()
        )));
    };
    let mut env = config.env.clone();
    for (k, v) in &o.env {
        env.retain(|e| e.split_once('=').map_or(e.as_str(), |(key, _)| key) != k);
        env.push(format!("{k}={v}"));
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    let path_var = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    if find_program(flist, program, path_var)?.is_none() {
        return Err(Error::Invalid(format!(
            "{}: {program:?} not found in the image{}",
            flist.path().display(),
            if program.contains('/') {
                String::new()
            } else {
                format!(" (searched PATH={path_var})")
            }
        )));
    }
    let cwd = o
        .workdir
        .clone()
        .unwrap_or_else(|| config.working_dir.clone());
    Ok(zos_init::Process {
        argv,
        env,
        cwd: if cwd.is_empty() { "/".into() } else { cwd },
        user: o.user.clone().unwrap_or_else(|| config.user.clone()),
    })
}

/// Where `program` is in the flist: as given if it has a `/`, else the first `PATH` dir
/// holding it. Symlinks are followed inside the flist, as the guest will follow them.
fn find_program(flist: &Flist, program: &str, path_var: &str) -> Result<Option<String>> {
    if program.contains('/') {
        return Ok(is_file(flist, program).then(|| program.to_string()));
    }
    for dir in path_var.split(':').filter(|d| d.starts_with('/')) {
        let candidate = format!("{}/{program}", dir.trim_end_matches('/'));
        if is_file(flist, &candidate) {
            return Ok(Some(candidate));
        }
    }
    Ok(None)
}

fn is_file(flist: &Flist, path: &str) -> bool {
    real_file(flist, path).is_some()
}

/// The symlink-free path of the regular file `path` names inside the flist.
fn real_file(flist: &Flist, path: &str) -> Option<String> {
    let (real, node) = resolve(flist, path)?;
    (node.kind().ok() == Some(Kind::File)).then_some(real)
}

/// Resolves `path` inside the flist, following symlinks (absolute ones from the flist's
/// root, as the guest sees them), at most 40 of them like the kernel.
pub fn follow(flist: &Flist, path: &str) -> Option<Inode> {
    resolve(flist, path).map(|(_, node)| node)
}

/// Like [`follow`], also giving the path with every symlink resolved.
fn resolve(flist: &Flist, path: &str) -> Option<(String, Inode)> {
    let mut pending: Vec<String> = components(path).rev().collect();
    let mut stack: Vec<(String, Inode)> = vec![(String::new(), flist.resolve("/").ok()?)];
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "." => continue,
            ".." => {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            _ => {}
        }
        let (_, dir) = stack.last()?;
        if dir.kind().ok()? != Kind::Dir {
            return None;
        }
        let node = flist.lookup(dir.ino, part.as_bytes()).ok()??;
        if node.kind().ok()? == Kind::Symlink {
            hops += 1;
            if hops > 40 {
                return None;
            }
            let target = String::from_utf8_lossy(node.link_target.as_deref()?).into_owned();
            if target.starts_with('/') {
                stack.truncate(1);
            }
            pending.extend(components(&target).rev());
            continue;
        }
        stack.push((part, node));
    }
    let real = stack
        .iter()
        .skip(1)
        .map(|(name, _)| format!("/{name}"))
        .collect::<String>();
    let (_, node) = stack.pop()?;
    Some((if real.is_empty() { "/".into() } else { real }, node))
}

fn components(path: &str) -> impl DoubleEndedIterator<Item = String> + '_ {
    path.split('/')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
}

//! Groups under `<own cgroup>/zos/`: made with their limits, joined by processes, removed
//! once empty.

use crate::hierarchy::{Hierarchy, CONTROLLERS};
use crate::limits::{settings, Limits};
use crate::{Controller, Error, Result};
use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The directory under the caller's own cgroup that holds every group zos makes.
pub const PARENT: &str = "zos";
/// The node's own group, beside its VMs' (see [`enter_node_group`]).
pub const NODE: &str = "node";

/// A group made by [`Group::create`]: one directory (v2) or one per controller tree (v1).
#[derive(Debug, Clone)]
pub struct Group {
    dirs: Vec<PathBuf>,
    warnings: Vec<String>,
}

impl Group {
    /// Makes (or reuses, after a crash) `<own>/zos/<name>` and sets `limits` in it. A
    /// controller the host lacks, a limit file it does not offer, or a CPU or I/O value it
    /// refuses (a parent's smaller quota, say) is a warning ([`Group::warnings`], also
    /// logged), not an error: the group still works for what it can limit. Memory and pids
    /// limits that cannot be set are errors.
    pub fn create(h: &Hierarchy, name: &str, limits: &Limits) -> Result<Group> {
        check_name(name)?;
        let mut warnings = Vec::new();
        let mut dirs: Vec<PathBuf> = Vec::new();
        match h {
            Hierarchy::V1 { own } => {
                for c in CONTROLLERS {
                    let Some((_, own)) = own.iter().find(|(x, _)| *x == c) else {
                        warnings.push(format!(
                            "no {} limit: the host mounts no cgroup v1 {} controller",
                            c.what(),
                            c.v1_name()
                        ));
                        continue;
                    };
                    let dir = parent_dir(own).join(name);
                    make_dir(&dir)?;
                    if c == Controller::Cpu {
                        apply(&parent_dir(own), &parent_limits(), c, false, &mut warnings)?;
                    }
                    apply(&dir, limits, c, false, &mut warnings)?;
                    if !dirs.contains(&dir) {
                        dirs.push(dir);
                    }
                }
            }
            Hierarchy::V2 { own } => {
                let parent = parent_dir(own);
                let base = parent.parent().unwrap_or(&parent).to_path_buf();
                // The group first: while it exists no other process's `remove` takes zos/
                // away between here and the controllers being handed down to it.
                let dir = parent.join(name);
                make_dir(&dir)?;
                let enabled = enable_controllers(&base, &parent, &mut warnings);
                if enabled.contains(&Controller::Cpu) {
                    apply(
                        &parent,
                        &parent_limits(),
                        Controller::Cpu,
                        true,
                        &mut warnings,
                    )?;
                }
                for c in CONTROLLERS {
                    if enabled.contains(&c) {
                        apply(&dir, limits, c, true, &mut warnings)?;
                    }
                }
                dirs.push(dir);
            }
        }
        for w in &warnings {
            tracing::warn!(group = name, "{w}");
        }
        Ok(Group { dirs, warnings })
    }

    /// A group made earlier, from the directories [`Group::dirs`] gave then.
    pub fn at(dirs: Vec<PathBuf>) -> Group {
        Group {
            dirs,
            warnings: Vec::new(),
        }
    }

    /// The group's directories (to keep, for [`remove`] and [`procs`] later).
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// What could not be limited, and why.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The group's `cgroup.procs` files opened for writing, so a child can join it between
    /// fork and exec without touching the file system (see [`Joiner::join_current`]).
    pub fn joiner(&self) -> Result<Joiner> {
        let files = self
            .dirs
            .iter()
            .map(|d| {
                let path = d.join("cgroup.procs");
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| Error::io(format!("opening {}", path.display()), e))
            })
            .collect::<Result<_>>()?;
        Ok(Joiner { files })
    }

    /// Moves process `pid` (all its threads) into the group.
    pub fn add(&self, pid: u32) -> Result<()> {
        for d in &self.dirs {
            let path = d.join("cgroup.procs");
            fs::write(&path, pid.to_string()).map_err(|e| {
                Error::io(format!("moving process {pid} into {}", path.display()), e)
            })?;
        }
        Ok(())
    }
}

/// Open `cgroup.procs` files of a group; see [`Group::joiner`].
#[derive(Debug)]
pub struct Joiner {
    files: Vec<File>,
}

impl Joiner {
    /// Moves the calling process into the group. Only `write(2)` on descriptors opened
    /// earlier: async-signal-safe, so fit for `CommandExt::pre_exec`; and since the files were
    /// opened by the parent, it works after the child dropped privileges or changed its mount
    /// namespace (the kernel checks the opener's credentials).
    pub fn join_current(&self) -> std::io::Result<()> {
        for f in &self.files {
            // "0" is the writing process itself.
            // SAFETY: the pointer and length describe a live 1-byte static buffer; the fd is
            // owned by `f`, open for this call's duration.
            let n = unsafe { libc::write(f.as_raw_fd(), b"0".as_ptr().cast(), 1) };
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// Moves this process into `<own>/zos/node`, with `limits`, so the node (and the helpers it
/// starts, such as flist mounts) is a group beside its VMs rather than above them: on v2 its
/// own cgroup must hold no process for its children to get controllers. Groups made later by
/// this process still go to `<own>/zos/` (see [`Hierarchy`] detection, which steps out of
/// `zos/node`).
pub fn enter_node_group(h: &Hierarchy, limits: &Limits) -> Result<Group> {
    // v2: in a leaf first, so that the cgroup we leave can hand its controllers down.
    let leaves: Vec<PathBuf> = match h {
        Hierarchy::V1 { own } => own.iter().map(|(_, d)| parent_dir(d).join(NODE)).collect(),
        Hierarchy::V2 { own } => vec![parent_dir(own).join(NODE)],
    };
    for leaf in &leaves {
        let procs = leaf.join("cgroup.procs");
        // Another process's `remove` may take the empty group away in between: make it again.
        let mut tries = 0;
        loop {
            make_dir(leaf)?;
            match fs::write(&procs, std::process::id().to_string()) {
                Ok(()) => break,
                Err(e) if e.kind() == ErrorKind::NotFound && tries < 3 => tries += 1,
                Err(e) => {
                    return Err(Error::io(
                        format!("moving the node into {}", procs.display()),
                        e,
                    ))
                }
            }
        }
    }
    Group::create(h, NODE, limits)
}

/// Moves this process back to its own cgroup in `h` (as detected before
/// [`enter_node_group`]) and removes the node's group if nothing else is in it (helpers the
/// node started, such as flist mounts, may still be: then it stays until a later
/// [`remove`]).
pub fn leave_node_group(h: &Hierarchy, group: &Group) -> Result<()> {
    let own: Vec<&PathBuf> = match h {
        Hierarchy::V1 { own } => own.iter().map(|(_, d)| d).collect(),
        Hierarchy::V2 { own } => vec![own],
    };
    for dir in own {
        let procs = dir.join("cgroup.procs");
        fs::write(&procs, std::process::id().to_string())
            .map_err(|e| Error::io(format!("moving the node back into {}", procs.display()), e))?;
    }
    remove(group.dirs())
}

/// Removes a group's directories (as [`Group::dirs`] gave them), then `zos/` if that is
/// empty now. Missing directories are fine; a group that still holds processes is an error
/// naming them (waited for a moment first: an exiting process leaves its cgroup last).
pub fn remove(dirs: &[PathBuf]) -> Result<()> {
    for dir in dirs {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match fs::remove_dir(dir) {
                Ok(()) => break,
                Err(e) if e.kind() == ErrorKind::NotFound => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    let left = procs(dir).unwrap_or_default();
                    return Err(Error::io(
                        format!(
                            "removing cgroup {} (processes still in it: {left:?}; it is removed once they are gone)",
                            dir.display()
                        ),
                        e,
                    ));
                }
            }
        }
        // Another VM may be using it, or be making it right now (create retries then); the
        // node's group may be left by a node that was killed (it is removed only if empty).
        if let Some(parent) = dir.parent().filter(|p| p.ends_with(PARENT)) {
            let _ = fs::remove_dir(parent.join(NODE));
            let _ = fs::remove_dir(parent);
        }
    }
    Ok(())
}

/// The processes in the group at `dir`.
pub fn procs(dir: &Path) -> Result<Vec<i32>> {
    let path = dir.join("cgroup.procs");
    let text = fs::read_to_string(&path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// The limits of `zos/` itself: a CPU weight of all the host's CPUs (as Kubernetes' kubelet
/// gives its pods' group), so the groups in it, together, are not squeezed to the share of
/// one busy thread by the processes beside them.
fn parent_limits() -> Limits {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    Limits {
        cpu_weight: Some(100 * cpus),
        ..Limits::default()
    }
}

/// `<own>/zos`, where `own` is this process's cgroup; the node's own group
/// (`<base>/zos/node`) counts as being at `<base>`.
fn parent_dir(own: &Path) -> PathBuf {
    let base = if own.ends_with(Path::new(PARENT).join(NODE)) {
        own.parent().and_then(Path::parent).unwrap_or(own)
    } else {
        own
    };
    base.join(PARENT)
}

/// A name for one path component that is not a cgroup's own file.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0', '\n'])
        && !name.starts_with("cgroup.");
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{name:?} cannot name a cgroup: use 1-200 characters, no '/', not cgroup.*"
        )))
    }
}

/// Makes `dir` and its parents; tolerates `zos/` being removed by another process between
/// the two steps (its last group gone), by trying again.
fn make_dir(dir: &Path) -> Result<()> {
    let mut tries = 0;
    loop {
        match fs::create_dir_all(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound && tries < 3 => tries += 1,
            Err(e) => {
                return Err(Error::io(
                    format!("creating cgroup {} (run as root)", dir.display()),
                    e,
                ))
            }
        }
    }
}

/// Writes `c`'s limits into `dir`; see [`Group::create`] for what only warns.
fn apply(
    dir: &Path,
    limits: &Limits,
    c: Controller,
    v2: bool,
    warnings: &mut Vec<String>,
) -> Result<()> {
    let soft = matches!(c, Controller::Cpu | Controller::Io);
    for s in settings(limits, c, v2) {
        let Some((file, value)) = s.choices.iter().find(|(f, _)| dir.join(f).exists()) else {
            let names: Vec<&str> = s.choices.iter().map(|(f, _)| *f).collect();
            warnings.push(format!(
                "no {}: {} has none of {names:?}",
                s.what,
                dir.display()
            ));
            continue;
        };
        let path = dir.join(file);
        if let Err(e) = fs::write(&path, value) {
            let what = format!("setting {} to {value:?} in {}", s.what, path.display());
            if soft {
                warnings.push(format!("{what}: {e}"));
            } else {
                return Err(Error::io(what, e));
            }
        }
    }
    Ok(())
}

/// cgroup v2: hands our controllers down from `base` (our own cgroup) to `parent` (`zos/`)
/// and from there to the groups in it; returns those that reach the groups.
fn enable_controllers(base: &Path, parent: &Path, warnings: &mut Vec<String>) -> Vec<Controller> {
    let mut enabled: Vec<Controller> = CONTROLLERS.to_vec();
    for dir in [base, parent] {
        let available = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
        let subtree = dir.join("cgroup.subtree_control");
        let on = fs::read_to_string(&subtree).unwrap_or_default();
        enabled.retain(|c| {
            let name = c.v2_name();
            let has = |list: &str| list.split_whitespace().any(|n| n == name);
            if has(&on) {
                return true;
            }
            if !has(&available) {
                warnings.push(format!(
                    "no {} limit: the {name} controller is not available in {}",
                    c.what(),
                    dir.display()
                ));
                return false;
            }
            match fs::write(&subtree, format!("+{name}")) {
                Ok(()) => true,
                Err(e) => {
                    let why = if e.raw_os_error() == Some(libc::EBUSY) {
                        " (the cgroup holds processes, which cgroup v2 forbids for a cgroup whose children have controllers: run the node in a cgroup of its own)"
                    } else {
                        ""
                    };
                    warnings.push(format!(
                        "no {} limit: enabling {name} in {}: {e}{why}",
                        c.what(),
                        subtree.display()
                    ));
                    false
                }
            }
        });
    }
    enabled
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::CpuMax;

    fn limits() -> Limits {
        Limits {
            cpu_max: Some(CpuMax::cpus(1)),
            cpu_weight: Some(100),
            memory_max: Some(300 << 20),
            pids_max: Some(64),
            io_weight: Some(100),
        }
    }

    /// A fake v1 tree: a plain directory stands in for each controller's own cgroup, with
    /// the limit files the kernel would make pre-created by `files`.
    fn fake_v1(tmp: &Path, files: &[(&str, &[&str])]) -> Hierarchy {
        let mut own = Vec::new();
        for c in CONTROLLERS {
            let dir = tmp.join(c.v1_name()).join("own");
            fs::create_dir_all(dir.join("zos/vm")).unwrap();
            for (ctl, names) in files {
                if *ctl == c.v1_name() {
                    for n in *names {
                        fs::write(dir.join("zos/vm").join(n), "").unwrap();
                        fs::write(dir.join("zos").join(n), "").unwrap();
                    }
                }
            }
            own.push((c, dir));
        }
        Hierarchy::V1 { own }
    }

    #[test]
    fn v1_limits_go_to_each_controllers_tree_and_a_missing_file_only_warns() {
        let tmp = tempfile::tempdir().unwrap();
        let h = fake_v1(
            tmp.path(),
            &[
                (
                    "cpu",
                    &["cpu.shares", "cpu.cfs_period_us", "cpu.cfs_quota_us"],
                ),
                ("memory", &["memory.limit_in_bytes"]),
                ("pids", &["pids.max"]),
                ("blkio", &[]),
            ],
        );
        let g = Group::create(&h, "vm", &limits()).unwrap();
        let read = |ctl: &str, f: &str| {
            fs::read_to_string(tmp.path().join(ctl).join("own/zos/vm").join(f)).unwrap()
        };
        assert_eq!(read("cpu", "cpu.cfs_quota_us"), "100000");
        assert_eq!(read("cpu", "cpu.shares"), "1024");
        let cpus = std::thread::available_parallelism().unwrap().get();
        let parent = tmp.path().join("cpu/own/zos/cpu.shares");
        assert_eq!(
            fs::read_to_string(parent).unwrap(),
            (1024 * cpus).to_string(),
            "zos/ weighs as much as all CPUs"
        );
        let untouched = tmp.path().join("memory/own/zos/memory.limit_in_bytes");
        assert_eq!(
            fs::read_to_string(untouched).unwrap(),
            "",
            "zos/ has no memory limit"
        );
        assert_eq!(
            read("memory", "memory.limit_in_bytes"),
            (300u64 << 20).to_string()
        );
        assert_eq!(read("pids", "pids.max"), "64");
        assert_eq!(g.dirs().len(), 4);
        assert!(
            g.warnings().iter().any(|w| w.contains("I/O weight")),
            "{:?}",
            g.warnings()
        );
    }

    #[test]
    fn v2_hands_controllers_down_and_writes_one_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let own = tmp.path().join("own");
        let vm = own.join("zos/vm");
        fs::create_dir_all(&vm).unwrap();
        // What the kernel would show: controllers offered to `own` and, once enabled, to zos/;
        // the limit files of the group. The memory controller is missing from zos/.
        fs::write(
            own.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        fs::write(own.join("zos/cgroup.controllers"), "cpu io pids\n").unwrap();
        for f in ["cpu.weight", "cpu.max", "pids.max", "io.weight"] {
            fs::write(vm.join(f), "").unwrap();
        }
        fs::write(own.join("zos/cpu.weight"), "").unwrap();
        let g = Group::create(&Hierarchy::V2 { own: own.clone() }, "vm", &limits()).unwrap();
        assert_eq!(g.dirs(), std::slice::from_ref(&vm));
        let read = |p: PathBuf| fs::read_to_string(p).unwrap();
        assert_eq!(read(vm.join("cpu.max")), "100000 100000");
        assert_eq!(read(vm.join("cpu.weight")), "100");
        assert_eq!(read(vm.join("pids.max")), "64");
        assert_eq!(read(vm.join("io.weight")), "default 100");
        assert!(!vm.join("memory.max").exists(), "memory never reached zos/");
        assert!(
            g.warnings()
                .iter()
                .any(|w| w.contains("memory") && w.contains("not available")),
            "{:?}",
            g.warnings()
        );
        // Each controller was enabled with its own write (a fake file keeps the last one).
        assert_eq!(read(own.join("zos/cgroup.subtree_control")), "+io");
    }

    #[test]
    fn a_memory_limit_that_cannot_be_set_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let h = fake_v1(tmp.path(), &[("memory", &["memory.limit_in_bytes"])]);
        // A directory where the file should be: the write fails.
        let file = tmp.path().join("memory/own/zos/vm/memory.limit_in_bytes");
        fs::remove_file(&file).unwrap();
        fs::create_dir(&file).unwrap();
        let err = Group::create(&h, "vm", &limits()).unwrap_err();
        assert!(err.to_string().contains("memory limit"), "{err}");
    }

    #[test]
    fn the_nodes_own_group_counts_as_its_parent() {
        let own = Path::new("/sys/fs/cgroup/memory/x");
        assert_eq!(parent_dir(own), own.join("zos"));
        assert_eq!(parent_dir(&own.join("zos/node")), own.join("zos"));
    }

    #[test]
    fn names_that_are_not_one_plain_component_are_refused() {
        for bad in ["", ".", "..", "a/b", "cgroup.procs"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name("vm-web-1a2b").is_ok());
    }

    #[test]
    fn removing_a_group_removes_its_dirs_and_an_empty_parent() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("zos/a");
        let b = tmp.path().join("zos/b");
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(&b).unwrap();
        remove(std::slice::from_ref(&a)).unwrap();
        assert!(!a.exists() && b.exists(), "zos/ stays while b is in it");
        remove(&[b.clone(), b]).unwrap();
        assert!(!tmp.path().join("zos").exists());
    }
}

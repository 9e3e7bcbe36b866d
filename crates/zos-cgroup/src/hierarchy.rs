//! Which cgroup hierarchy the host mounts (v2 unified, or v1 one per controller), and where
//! this process's own cgroup is in it: every group zos makes goes below that, never at a
//! hierarchy root, so a node run inside a container, a systemd service or a session's cgroup
//! touches nothing but its own subtree.

use crate::{Controller, Error, Result};
use std::path::{Path, PathBuf};

/// The controllers zos limits, in the order they are set up.
pub const CONTROLLERS: [Controller; 4] = [
    Controller::Cpu,
    Controller::Memory,
    Controller::Pids,
    Controller::Io,
];

/// The cgroup hierarchy of this host, seen from this process.
#[derive(Debug, Clone, PartialEq)]
pub enum Hierarchy {
    /// cgroup v2: one tree; `own` is this process's cgroup directory in it.
    V2 {
        /// This process's cgroup directory.
        own: PathBuf,
    },
    /// cgroup v1: a tree per controller (or per set of co-mounted controllers).
    V1 {
        /// For each controller zos uses that the host mounts: this process's cgroup
        /// directory in that controller's tree.
        own: Vec<(Controller, PathBuf)>,
    },
}

/// One cgroup mount from `/proc/self/mountinfo`.
#[derive(Debug)]
struct Mount {
    /// What part of the hierarchy is mounted (not `/` inside a container, say).
    root: String,
    /// Where.
    point: PathBuf,
    /// `cgroup2`, or `cgroup` (v1) with its controllers.
    v2: bool,
    controllers: Vec<String>,
}

impl Hierarchy {
    /// Detects the hierarchy from `/proc/self/mountinfo` and `/proc/self/cgroup`.
    pub fn detect() -> Result<Hierarchy> {
        let read = |p: &str| {
            std::fs::read_to_string(p).map_err(|e| Error::Io {
                what: format!("reading {p}"),
                source: e,
            })
        };
        Hierarchy::parse(&read("/proc/self/mountinfo")?, &read("/proc/self/cgroup")?)
    }

    /// The hierarchy from the text of a mountinfo and a `/proc/PID/cgroup` file. v1 wins when
    /// the CPU or memory controller is mounted as v1 (a "hybrid" host also mounts an empty
    /// cgroup2 tree, which controls nothing); v2 otherwise.
    pub fn parse(mountinfo: &str, self_cgroup: &str) -> Result<Hierarchy> {
        let mounts: Vec<Mount> = mountinfo.lines().filter_map(parse_mount).collect();
        let v1_has = |c: Controller| {
            mounts
                .iter()
                .any(|m| !m.v2 && m.controllers.iter().any(|n| n == c.v1_name()))
        };
        if v1_has(Controller::Cpu) || v1_has(Controller::Memory) {
            let mut own = Vec::new();
            for c in CONTROLLERS {
                let Some(m) = mounts
                    .iter()
                    .find(|m| !m.v2 && m.controllers.iter().any(|n| n == c.v1_name()))
                else {
                    continue;
                };
                let path = self_cgroup
                    .lines()
                    .filter_map(|l| l.splitn(3, ':').collect_array())
                    .find(|[_, names, _]| names.split(',').any(|n| n == c.v1_name()))
                    .map(|[_, _, path]| path)
                    .ok_or_else(|| {
                        Error::Detect(format!(
                            "the {} controller is mounted at {} but /proc/self/cgroup does not list it",
                            c.v1_name(),
                            m.point.display()
                        ))
                    })?;
                own.push((c, under_mount(m, path)?));
            }
            return Ok(Hierarchy::V1 { own });
        }
        let m = mounts.iter().find(|m| m.v2).ok_or_else(|| {
            Error::Detect(
                "no cgroup hierarchy is mounted (neither cgroup2 nor v1 cpu/memory in /proc/self/mountinfo): mount one at /sys/fs/cgroup".into(),
            )
        })?;
        let path = self_cgroup
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .ok_or_else(|| {
                Error::Detect("/proc/self/cgroup has no cgroup v2 line (0::PATH)".into())
            })?;
        Ok(Hierarchy::V2 {
            own: under_mount(m, path)?,
        })
    }
}

/// A mountinfo line, if it is a cgroup mount:
/// `ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPER_OPTIONS`.
fn parse_mount(line: &str) -> Option<Mount> {
    let (left, right) = line.split_once(" - ")?;
    let left: Vec<&str> = left.split(' ').collect();
    let mut right = right.split(' ');
    let fstype = right.next()?;
    let _source = right.next()?;
    let options = right.next().unwrap_or("");
    let (root, point) = (left.get(3)?, left.get(4)?);
    let v2 = match fstype {
        "cgroup2" => true,
        "cgroup" => false,
        _ => return None,
    };
    Some(Mount {
        root: unescape(root),
        point: PathBuf::from(unescape(point)),
        v2,
        controllers: options.split(',').map(str::to_string).collect(),
    })
}

/// mountinfo writes space, tab, newline and backslash as octal escapes (`\040`).
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 4);
        match code.and_then(|c| u8::from_str_radix(c, 8).ok()) {
            Some(b) => {
                out.push(char::from(b));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The directory of cgroup `path` (as `/proc/self/cgroup` names it, from the hierarchy's
/// root) under mount `m`, which may show only a subtree (its `root`).
fn under_mount(m: &Mount, path: &str) -> Result<PathBuf> {
    let root = m.root.trim_end_matches('/');
    let rel = path.strip_prefix(root).ok_or_else(|| {
        Error::Detect(format!(
            "this process's cgroup {path} is outside the part {} of the hierarchy mounted at {}: run it in a cgroup it can see",
            m.root,
            m.point.display()
        ))
    })?;
    if !(rel.is_empty() || rel.starts_with('/')) {
        return Err(Error::Detect(format!(
            "this process's cgroup {path} is not below the mounted {}",
            m.root
        )));
    }
    Ok(join(&m.point, rel))
}

/// `base` joined with a cgroup path (`/a/b`); components `.` and `..` are refused by the
/// kernel's naming already, so this only strips the leading slash.
pub(crate) fn join(base: &Path, rel: &str) -> PathBuf {
    let rel = rel.trim_start_matches('/');
    if rel.is_empty() {
        base.to_path_buf()
    } else {
        base.join(rel)
    }
}

/// `splitn` into exactly N parts.
trait CollectArray<'a> {
    fn collect_array<const N: usize>(self) -> Option<[&'a str; N]>;
}

impl<'a, I: Iterator<Item = &'a str>> CollectArray<'a> for I {
    fn collect_array<const N: usize>(self) -> Option<[&'a str; N]> {
        let v: Vec<&str> = self.collect();
        v.try_into().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_MOUNTS: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    const V1_SELF: &str = "\
9:name=systemd:/
8:pids:/
7:blkio:/
4:memory:/process_api/abc
1:cpu,cpuacct:/
0::/
";

    #[test]
    fn a_hybrid_host_is_v1_and_each_controller_has_its_own_dir() {
        let h = Hierarchy::parse(V1_MOUNTS, V1_SELF).unwrap();
        let Hierarchy::V1 { own } = h else {
            panic!("v1 expected: {h:?}")
        };
        let dir = |c| own.iter().find(|(x, _)| *x == c).map(|(_, d)| d.clone());
        assert_eq!(
            dir(Controller::Cpu),
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"))
        );
        assert_eq!(
            dir(Controller::Memory),
            Some(PathBuf::from("/sys/fs/cgroup/memory/process_api/abc"))
        );
        assert_eq!(
            dir(Controller::Io),
            Some(PathBuf::from("/sys/fs/cgroup/blkio"))
        );
        assert_eq!(
            dir(Controller::Pids),
            Some(PathBuf::from("/sys/fs/cgroup/pids"))
        );
    }

    #[test]
    fn a_unified_host_is_v2_and_a_container_sees_its_subtree() {
        let mounts =
            "30 23 0:26 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let h = Hierarchy::parse(mounts, "0::/kubepods/pod1/ctr\n").unwrap();
        assert_eq!(
            h,
            Hierarchy::V2 {
                own: PathBuf::from("/sys/fs/cgroup/ctr")
            }
        );
        // A cgroup outside the mounted subtree cannot be reached: refused, not guessed.
        let err = Hierarchy::parse(mounts, "0::/other\n").unwrap_err();
        assert!(err.to_string().contains("outside"), "{err}");
        let err = Hierarchy::parse(mounts, "0::/kubepods/pod12\n").unwrap_err();
        assert!(err.to_string().contains("not below"), "{err}");
    }

    #[test]
    fn no_cgroup_mount_is_an_error_that_says_so() {
        let err = Hierarchy::parse("1 0 0:1 / / rw - ext4 /dev/sda rw\n", "0::/\n").unwrap_err();
        assert!(err.to_string().contains("no cgroup hierarchy"), "{err}");
    }

    #[test]
    fn escaped_mount_points_are_read_back() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/a\x"), r"/a\x");
    }
}

//! End-to-end: `zos flist mount` with the real kernel FUSE driver. Metadata fidelity, lazy
//! fetching, one fetch per block for concurrent readers, a store that stops answering, a
//! corrupt or full cache, and clean errors.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A daemon mount, unmounted (lazily, so a failing test cannot wedge the next) when dropped.
struct Mount {
    point: PathBuf,
}

impl Mount {
    fn new(fl: &Path, point: &Path, extra: &[&str]) -> Mount {
        std::fs::create_dir_all(point).unwrap();
        ok(zos()
            .args(["flist", "mount", "--daemon"])
            .arg(fl)
            .arg(point)
            .args(extra));
        Mount {
            point: point.to_owned(),
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = zos()
            .args(["flist", "umount", "--lazy"])
            .arg(&self.point)
            .stderr(Stdio::null())
            .status();
    }
}

/// A mount whose store is served over HTTP with a request log, so a test can count fetches.
/// The server lives as long as the mount (dropped after it).
struct HttpMount {
    mount: Mount,
    _server: Server,
}

impl std::ops::Deref for HttpMount {
    type Target = Mount;
    fn deref(&self) -> &Mount {
        &self.mount
    }
}

/// Packs `files` (under `dir/src`) into a dir store, serves the store over HTTP and mounts
/// the flist reading from there, with a fresh cache at `dir/cache`. Returns the mount and
/// the server's request log.
fn mount_over_http(dir: &Path, files: &[(&str, &[u8])]) -> (HttpMount, PathBuf) {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    for (name, content) in files {
        std::fs::write(src.join(name), content).unwrap();
    }
    let store = dir.join("store");
    let fl = dir.join("app.fl");
    pack(&src, &fl, &format!("dir://{}", store.display()));
    let log = dir.join("http.log");
    let server = http_server_logging(&store, std::fs::File::create(&log).unwrap());
    let url = format!("http://127.0.0.1:{}", server.port);
    let cache = dir.join("cache");
    let mount = Mount::new(
        &fl,
        &dir.join("mnt"),
        &["--cache", cache.to_str().unwrap(), "--store", &url],
    );
    (
        HttpMount {
            mount,
            _server: server,
        },
        log,
    )
}

/// The block files and the whole-file copies in a cache directory.
fn cache_files(cache: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut blocks = Vec::new();
    let mut whole = Vec::new();
    for sub in std::fs::read_dir(cache).unwrap() {
        let sub = sub.unwrap();
        let list = if sub.file_name() == "files" {
            &mut whole
        } else {
            &mut blocks
        };
        for f in std::fs::read_dir(sub.path()).unwrap() {
            list.push(f.unwrap().path());
        }
    }
    blocks.sort();
    (blocks, whole)
}

fn fuse_ready() -> bool {
    have("fusermount3") && is_root()
}

fn pack(src: &Path, fl: &Path, store: &str) {
    ok(zos()
        .args(["flist", "pack", "-q"])
        .arg(src)
        .arg("-o")
        .arg(fl)
        .args(["--store", store]));
}

#[test]
fn mounted_tree_matches_the_source_in_every_stat_field() {
    if !fuse_ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::create_dir_all(src.join("srv/deep/er")).unwrap();
    std::fs::write(src.join("etc/hostname"), b"node\n").unwrap();
    std::fs::write(src.join("srv/big"), noise(1_500_000, 4)).unwrap();
    std::fs::hard_link(src.join("srv/big"), src.join("etc/big-link")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", src.join("etc/abs")).unwrap();
    std::os::unix::fs::symlink("../srv/big", src.join("etc/rel")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        src.join("etc/hostname"),
        std::fs::Permissions::from_mode(0o4750),
    )
    .unwrap();
    std::fs::set_permissions(
        src.join("srv/deep"),
        std::fs::Permissions::from_mode(0o1777),
    )
    .unwrap();
    std::os::unix::fs::chown(src.join("srv/big"), Some(1000), Some(2000)).unwrap();
    xattr::set(src.join("etc/hostname"), "user.role", b"primary").unwrap();
    assert!(Command::new("mknod")
        .arg(src.join("etc/null"))
        .args(["c", "1", "3"])
        .status()
        .unwrap()
        .success());
    assert!(Command::new("mkfifo")
        .arg(src.join("etc/fifo"))
        .status()
        .unwrap()
        .success());
    assert!(Command::new("touch")
        .args(["-h", "-d", "2001-02-03 04:05:06.789"])
        .arg(src.join("etc/abs"))
        .status()
        .unwrap()
        .success());
    let fl = tmp.path().join("app.fl");
    pack(
        &src,
        &fl,
        &format!("dir://{}", tmp.path().join("store").display()),
    );

    let cache = tmp.path().join("cache");
    let m = Mount::new(
        &fl,
        &tmp.path().join("mnt"),
        &["--cache", cache.to_str().unwrap()],
    );
    // Inode numbers differ across filesystems; everything else, hardlinks included, must match.
    assert_same_tree(&src, &m.point);
    let a = std::fs::metadata(m.point.join("srv/big")).unwrap();
    let b = std::fs::metadata(m.point.join("etc/big-link")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (a.ino(), a.nlink()),
        (b.ino(), 2),
        "hardlinks share one inode"
    );

    // statfs answers with the flist's size and inode count.
    let df = String::from_utf8(
        Command::new("stat")
            .args(["-f", "-c", "%b %S %c %l"])
            .arg(&m.point)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let fields: Vec<u64> = df.split_whitespace().map(|f| f.parse().unwrap()).collect();
    assert_eq!(fields[1], 4096);
    assert_eq!(fields[0], (5 + 1_500_000u64).div_ceil(4096));
    assert_eq!(
        fields[2], 12,
        "inodes: 5 dirs, 2 files, 1 hardlink, 2 symlinks, 2 specials"
    );
    assert_eq!(fields[3], 255);

    // Read-only, whatever the mode bits say.
    let err = std::fs::write(m.point.join("etc/new"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    // The setuid bit above is shown, but the host never honours it, nor the device node.
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let point = m.point.to_str().unwrap();
    let options = mounts
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.get(1) == Some(&point))
        .and_then(|f| f.get(3).map(|o| o.to_string()))
        .unwrap_or_else(|| panic!("{point} not in /proc/mounts"));
    for want in ["ro", "nosuid", "nodev"] {
        assert!(options.split(',').any(|o| o == want), "{want}: {options}");
    }

    ok(zos().args(["flist", "umount"]).arg(&m.point));
    assert_eq!(std::fs::read_dir(&m.point).unwrap().count(), 0, "unmounted");
    let err = fails(zos().args(["flist", "umount"]).arg(&m.point));
    assert!(err.contains("nothing is mounted there"), "{err}");
}

#[test]
fn reads_fetch_only_the_blocks_they_touch_once_each() {
    if !fuse_ready() || !have("python3") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let big = noise(8 * 524_288, 11);
    let (m, log_path) = mount_over_http(tmp.path(), &[("big", &big), ("small", b"just this\n")]);
    let cache = tmp.path().join("cache");
    let gets = || http_gets(&log_path);

    assert_eq!(
        std::fs::read(m.point.join("small")).unwrap(),
        b"just this\n"
    );
    assert_eq!(
        gets().len(),
        1,
        "reading one small file fetches one block: {:?}",
        gets()
    );
    assert_eq!(cache_files(&cache).0.len(), 1, "and caches only that block");

    // Eight readers of the same 4 MiB file at once: every block fetched exactly once.
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let p = m.point.join("big");
            std::thread::spawn(move || std::fs::read(p).unwrap())
        })
        .collect();
    for r in readers {
        assert!(
            r.join().unwrap() == big,
            "content read through the mount differs"
        );
    }
    let mut fetched = gets();
    fetched.sort();
    let before = fetched.len();
    fetched.dedup();
    assert_eq!(
        before,
        fetched.len(),
        "a block was fetched twice: {fetched:?}"
    );
    assert_eq!(fetched.len(), 9);
}

#[test]
fn a_dead_store_fails_reads_with_eio_but_the_mount_stays_up() {
    if !fuse_ready() || !have("redis-server") {
        return;
    }
    let mut redis = redis();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("early"), b"read before the store died\n").unwrap();
    std::fs::write(src.join("late"), noise(100_000, 2)).unwrap();
    let fl = tmp.path().join("app.fl");
    pack(&src, &fl, &format!("redis://127.0.0.1:{}", redis.port));
    let cache = tmp.path().join("cache");
    let m = Mount::new(
        &fl,
        &tmp.path().join("mnt"),
        &["--cache", cache.to_str().unwrap()],
    );
    assert_eq!(
        std::fs::read(m.point.join("early")).unwrap(),
        b"read before the store died\n"
    );
    redis.kill();
    let err = std::fs::read(m.point.join("late")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // Still mounted, still serving metadata and what is cached.
    assert_eq!(std::fs::read_dir(&m.point).unwrap().count(), 2);
    assert_eq!(
        std::fs::read(m.point.join("early")).unwrap(),
        b"read before the store died\n"
    );
}

#[test]
fn a_corrupt_cached_block_is_fetched_again_and_a_full_cache_evicts() {
    if !fuse_ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let content = noise(6 * 524_288, 21);
    std::fs::write(src.join("data"), &content).unwrap();
    // Below 1 MiB: no whole copy, so its one block is cached as a block file.
    let small = noise(300_000, 22);
    std::fs::write(src.join("small"), &small).unwrap();
    let fl = tmp.path().join("app.fl");
    pack(
        &src,
        &fl,
        &format!("dir://{}", tmp.path().join("store").display()),
    );
    let cache = tmp.path().join("cache");
    let cache_arg = cache.to_str().unwrap().to_owned();
    {
        let m = Mount::new(&fl, &tmp.path().join("mnt1"), &["--cache", &cache_arg]);
        assert!(std::fs::read(m.point.join("data")).unwrap() == content);
        assert!(std::fs::read(m.point.join("small")).unwrap() == small);
    }
    let (cached, whole) = cache_files(&cache);
    // The large file's blocks are written once, into its whole copy (for passthrough reads
    // by later opens), not also as block files.
    assert_eq!(cached.len(), 1, "only the small file's block: {cached:?}");
    assert_eq!(whole.len(), 1);
    assert!(std::fs::read(&whole[0]).unwrap() == content);
    // Damage both a block and the whole copy: neither may be served.
    let flip = |path: &Path| {
        let mut bytes = std::fs::read(path).unwrap();
        bytes[1000] ^= 0xff;
        std::fs::write(path, &bytes).unwrap();
        bytes
    };
    let bad_block = flip(&cached[0]);
    flip(&whole[0]);
    {
        let m = Mount::new(&fl, &tmp.path().join("mnt2"), &["--cache", &cache_arg]);
        for _ in 0..2 {
            assert!(
                std::fs::read(m.point.join("data")).unwrap() == content,
                "corrupt cache served"
            );
            assert!(
                std::fs::read(m.point.join("small")).unwrap() == small,
                "corrupt cached block served"
            );
        }
    }
    assert_ne!(
        std::fs::read(&cached[0]).unwrap(),
        bad_block,
        "the damaged block was replaced"
    );
    let (_, whole) = cache_files(&cache);
    assert!(
        std::fs::read(&whole[0]).unwrap() == content,
        "whole copy rebuilt"
    );

    // A 1 MiB cache holds at most two blocks, yet the whole file reads correctly.
    let small = tmp.path().join("small-cache");
    let m = Mount::new(
        &fl,
        &tmp.path().join("mnt3"),
        &["--cache", small.to_str().unwrap(), "--cache-size", "1M"],
    );
    assert!(std::fs::read(m.point.join("data")).unwrap() == content);
    let (blocks, whole) = cache_files(&small);
    let used: u64 = blocks
        .iter()
        .chain(&whole)
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(
        used <= 1024 * 1024,
        "cache grew to {used} bytes past its 1 MiB limit"
    );
    assert!(used > 0);
}

#[test]
fn large_directories_list_completely() {
    if !fuse_ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("many")).unwrap();
    for i in 0..5000 {
        std::fs::write(src.join(format!("many/entry-{i:05}")), b"").unwrap();
    }
    let fl = tmp.path().join("app.fl");
    pack(
        &src,
        &fl,
        &format!("dir://{}", tmp.path().join("store").display()),
    );
    let m = Mount::new(
        &fl,
        &tmp.path().join("mnt"),
        &["--cache", tmp.path().join("c").to_str().unwrap()],
    );
    let mut names: Vec<_> = std::fs::read_dir(m.point.join("many"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 5000);
    assert_eq!(names[4999], "entry-04999");
}

#[test]
fn daemon_reports_mount_errors_before_returning() {
    if !fuse_ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("a"), b"a").unwrap();
    let fl = tmp.path().join("app.fl");
    pack(
        &src,
        &fl,
        &format!("dir://{}", tmp.path().join("store").display()),
    );
    let err = fails(
        zos()
            .args(["flist", "mount", "--daemon"])
            .arg(&fl)
            .arg(tmp.path().join("no-such-dir")),
    );
    assert!(err.contains("no-such-dir"), "{err}");
    let err = fails(
        zos()
            .args(["flist", "mount", "--daemon"])
            .arg(tmp.path().join("missing.fl"))
            .arg(tmp.path()),
    );
    assert!(err.contains("missing.fl: not a usable flist"), "{err}");
    let out = zos()
        .args(["flist", "mount", "--cache-size", "lots"])
        .arg(&fl)
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("512M or 2G"));
}

#[test]
fn sequential_reads_prefetch_the_next_blocks() {
    if !fuse_ready() || !have("python3") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (m, log_path) = mount_over_http(tmp.path(), &[("seq", &noise(10 * 524_288, 31))]);
    // Read 4 KiB: the kernel asks for at most the first MiB, the mount fetches ahead.
    use std::io::Read;
    let mut head = [0u8; 4096];
    std::fs::File::open(m.point.join("seq"))
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    // Polls until the fetches stop growing for a second: stopping at the first 5 would pass a
    // prefetch that goes on to pull the whole file.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let settle = std::time::Duration::from_secs(1);
    let (mut fetched, mut since) = (0, std::time::Instant::now());
    loop {
        let n = http_gets(&log_path).len();
        if n != fetched {
            (fetched, since) = (n, std::time::Instant::now());
        }
        if (fetched >= 5 && since.elapsed() >= settle) || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        fetched >= 5,
        "only {fetched} blocks fetched after the first read"
    );
    assert!(
        fetched < 10,
        "a 4 KiB read should not pull the whole file ({fetched})"
    );
}

#[test]
fn a_crafted_flist_gets_eio_not_a_dead_mount() {
    if !fuse_ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let fl = tmp.path().join("crafted.fl");
    let w = zos_flist::FlistWriter::create(&fl).unwrap();
    let store = format!("dir://{}", tmp.path().join("store").display());
    w.add_route(&zos_flist::Route {
        start: 0,
        end: 255,
        url: store,
    })
    .unwrap();
    let node = |parent, name: &[u8], mode, size, mtime| zos_flist::Inode {
        parent,
        name: name.to_vec(),
        mode,
        size,
        mtime,
        mtime_nsec: 999_999_999,
        ..Default::default()
    };
    w.add_inode(&node(0, b"/", libc::S_IFDIR | 0o755, 0, 0))
        .unwrap();
    // A file whose size promises blocks the flist does not list.
    w.add_inode(&node(1, b"hollow", libc::S_IFREG | 0o644, 600_000, 0))
        .unwrap();
    // Times at the edge of what the kernel can represent.
    w.add_inode(&node(1, b"far-future", libc::S_IFREG | 0o644, 0, i64::MAX))
        .unwrap();
    w.add_inode(&node(1, b"far-past", libc::S_IFREG | 0o644, 0, i64::MIN))
        .unwrap();
    w.finish().unwrap();

    let m = Mount::new(
        &fl,
        &tmp.path().join("mnt"),
        &["--cache", tmp.path().join("c").to_str().unwrap()],
    );
    let err = std::fs::read(m.point.join("hollow")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    for name in ["far-future", "far-past"] {
        std::fs::metadata(m.point.join(name)).unwrap();
    }
    assert_eq!(
        std::fs::read_dir(&m.point).unwrap().count(),
        3,
        "mount still serving"
    );
}

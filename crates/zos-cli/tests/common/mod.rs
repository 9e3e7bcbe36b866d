//! Helpers shared by the end-to-end tests: the real `zos` binary, real servers started per
//! test (Redis, Python's HTTP server), and a tree snapshot that compares everything an
//! unpack must restore.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Packs `root` into `<dir>/<name>`, its blocks in the dir store `<dir>/store`; returns the
/// flist's path.
pub fn pack(root: &Path, dir: &Path, name: &str) -> PathBuf {
    let fl = dir.join(name);
    let store = format!("dir://{}", dir.join("store").display());
    ok(zos()
        .args(["flist", "pack", "-q"])
        .arg(root)
        .arg("-o")
        .arg(&fl)
        .args(["--store", &store]));
    fl
}

/// The `zos` binary under test.
pub fn zos() -> Command {
    Command::new(env!("CARGO_BIN_EXE_zos"))
}

/// Runs `cmd`, naming its program if it cannot be started (not installed, say).
pub fn output(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot start {} ({e}); scripts/setup installs what the tests run",
            cmd.get_program().to_string_lossy()
        )
    })
}

/// Runs and expects success; returns stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs and expects a clean failure (exit 1, not a panic's 101); returns stderr.
pub fn fails(cmd: &mut Command) -> String {
    let out = output(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{cmd:?} should fail cleanly; stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{cmd:?} panicked: {stderr}");
    stderr
}

/// The one skip guard (zos-testkit): every test binary includes this module, not all use it.
#[allow(unused_imports)]
pub use zos_testkit::{have, is_root};

pub use zos_testkit::{free_port, wait_until, Server};

/// A throwaway `redis-server` on a free loopback port, persisting nothing.
pub fn redis() -> Server {
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--databases", "16"])
        .stdout(Stdio::null())
        .spawn()
        .expect("start redis-server");
    wait_until("redis-server", || {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    });
    Server::new(child, port)
}

/// How many times the Redis server on `port` has run `command` (lower case, e.g. "get"), from
/// its `INFO commandstats`; 0 if it never has.
pub fn redis_calls(port: u16, command: &str) -> u64 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to redis-server");
    s.write_all(b"INFO commandstats\r\n").unwrap();
    let mut reader = BufReader::new(s);
    let mut header = String::new();
    std::io::BufRead::read_line(&mut reader, &mut header).unwrap();
    // A bulk string: `$<length>\r\n<text>\r\n`.
    let len: usize = header
        .trim_end()
        .strip_prefix('$')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected INFO reply from redis-server: {header:?}"));
    let mut text = vec![0u8; len];
    reader.read_exact(&mut text).unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    String::from_utf8_lossy(&text)
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// The request paths in a Python HTTP server's log, one per GET.
pub fn http_gets(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter_map(|l| l.split("\"GET /").nth(1))
        .filter_map(|rest| rest.split(' ').next())
        .map(str::to_owned)
        .collect()
}

/// Debian's docker-registry on a free loopback port, storing under `dir`; its access log
/// (one line per request) and errors written to `log` when given.
pub fn registry(dir: &Path, log: Option<&Path>) -> Server {
    start_registry(dir, log, "")
}

/// The same, serving only `user` with `password` (HTTP basic auth against an htpasswd file
/// of bcrypt hashes, which is what docker-registry accepts).
pub fn private_registry(dir: &Path, log: Option<&Path>, user: &str, password: &str) -> Server {
    let htpasswd = dir.join("htpasswd");
    let line = ok(Command::new("htpasswd").args(["-B", "-b", "-n", user, password]));
    std::fs::write(&htpasswd, line.trim()).unwrap();
    start_registry(
        dir,
        log,
        &format!(
            "auth:\n  htpasswd:\n    realm: zos-test\n    path: {}\n",
            htpasswd.display()
        ),
    )
}

/// docker-registry with `extra` appended to its config.
fn start_registry(dir: &Path, log: Option<&Path>, extra: &str) -> Server {
    let port = free_port();
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    \
             rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n{extra}",
            dir.join("registry-data").display()
        ),
    )
    .unwrap();
    let out = |_| match log {
        Some(path) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap(),
        ),
        None => Stdio::null(),
    };
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(out(1))
        .stderr(out(2))
        .spawn()
        .expect("start docker-registry");
    wait_until("docker-registry", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    Server::new(child, port)
}

/// Python's HTTP server serving `dir` read-only on a free loopback port.
pub fn http_server(dir: &Path) -> Server {
    http_server_logging(dir, Stdio::null())
}

/// The same, with its request log (one line per request) sent to `log`.
pub fn http_server_logging(dir: &Path, log: impl Into<Stdio>) -> Server {
    zos_testkit::http_server(dir, log)
}

/// Everything unpack must restore about one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: (i64, i64),
    pub rdev: u64,
    pub link: Option<PathBuf>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    pub content: Option<[u8; 32]>,
    /// The first path (in sorted order) sharing this entry's inode: equal for hardlinks.
    pub same_inode_as: PathBuf,
}

/// A tree as a map from relative path to [`Entry`]. Directory sizes are left out: they
/// depend on the filesystem, not on the content.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut paths = vec![PathBuf::new()];
    let mut i = 0;
    while i < paths.len() {
        let full = root.join(&paths[i]);
        if std::fs::symlink_metadata(&full).unwrap().is_dir() {
            let mut names: Vec<_> = std::fs::read_dir(&full)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            let base = paths[i].clone();
            paths.extend(names.into_iter().map(|n| base.join(n)));
        }
        i += 1;
    }
    paths.sort();
    let mut first_of_inode: BTreeMap<u64, PathBuf> = BTreeMap::new();
    paths
        .into_iter()
        .map(|rel| {
            let full = root.join(&rel);
            let m = std::fs::symlink_metadata(&full).unwrap();
            let xattrs = xattr::list(&full)
                .unwrap()
                .map(|n| {
                    let v = xattr::get(&full, &n).unwrap().unwrap_or_default();
                    (n.to_string_lossy().into_owned(), v)
                })
                .collect();
            let same = first_of_inode
                .entry(m.ino())
                .or_insert_with(|| rel.clone())
                .clone();
            let entry = Entry {
                mode: m.mode(),
                uid: m.uid(),
                gid: m.gid(),
                size: if m.is_dir() { 0 } else { m.size() },
                mtime: (m.mtime(), m.mtime_nsec()),
                rdev: m.rdev(),
                link: m.is_symlink().then(|| std::fs::read_link(&full).unwrap()),
                xattrs,
                content: m
                    .is_file()
                    .then(|| zos_flist::block::hash(&std::fs::read(&full).unwrap())),
                same_inode_as: same,
            };
            (rel, entry)
        })
        .collect()
}

/// Asserts two trees are identical, naming the first difference.
pub fn assert_same_tree(expected: &Path, actual: &Path) {
    let (a, b) = (snapshot(expected), snapshot(actual));
    let names_a: Vec<_> = a.keys().collect();
    let names_b: Vec<_> = b.keys().collect();
    assert_eq!(names_a, names_b, "different entries");
    for (path, ea) in &a {
        assert_eq!(ea, &b[path], "entry {path:?} differs");
    }
}

/// The ids of every block in a dir store.
pub fn store_blocks(store: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for shard in std::fs::read_dir(store).unwrap() {
        let shard = shard.unwrap().path();
        for block in std::fs::read_dir(&shard).unwrap() {
            out.push(block.unwrap().path());
        }
    }
    out.sort();
    out
}

/// Deterministic pseudo-random bytes (incompressible, so blocks are distinct).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Kills every process in network namespace `ns` and deletes it (`ip netns`), ignoring
/// what is already gone: cleanup after a test.
pub fn kill_netns(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                // SAFETY: a plain kill(2).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stderr(std::process::Stdio::null())
        .status();
}

/// The Debian image as an flist in `dir`, built (or taken from its cache) by
/// scripts/build-debian-image and packed by the `zos` under test.
pub fn debian_image(dir: &Path) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-debian-image");
    let fl = dir.join("debian.fl");
    let out = output(
        Command::new(&script)
            .arg(&fl)
            .env("ZOS", env!("CARGO_BIN_EXE_zos")),
    );
    assert!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    fl
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_of(bytes: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(bytes);
    format!(
        "sha256:{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// An OCI layout at `dir` holding one image for `arch`, tag `1`: `root` as its one layer,
/// running `script` (with a HEALTHCHECK that passes). Returns the layer's digest.
pub fn oci_layout(dir: &Path, root: &Path, script: &str, arch: &str) -> String {
    // Docker's HEALTHCHECK, which zos runs too.
    let config = serde_json::json!({ "Cmd": ["sh", "-c", script],
        "Healthcheck": { "Test": ["CMD-SHELL", "true"], "Interval": 1_000_000_000u64 } });
    oci_image(dir, root, config, arch)
}

/// An OCI layout at `dir` holding one image for `arch`, tag `1`: `root` as its one layer,
/// `config` its run config (Entrypoint, Cmd, Env…). Returns the layer's digest.
pub fn oci_image(dir: &Path, root: &Path, config: serde_json::Value, arch: &str) -> String {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let blob = |media: &str, bytes: &[u8]| {
        let digest = sha256_of(bytes);
        std::fs::write(blobs.join(&digest[7..]), bytes).unwrap();
        serde_json::json!({ "mediaType": media, "digest": digest, "size": bytes.len() })
    };
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    tar.append_dir_all(".", root).unwrap();
    let layer_bytes = tar.into_inner().unwrap();
    // Compressed, as registries keep layers (skopeo would compress a plain one on the way,
    // under another digest).
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &layer_bytes).unwrap();
    let layer = blob(
        "application/vnd.oci.image.layer.v1.tar+gzip",
        &gz.finish().unwrap(),
    );
    let config = serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": config,
        "rootfs": { "type": "layers", "diff_ids": [sha256_of(&layer_bytes)] },
    });
    let config = blob(
        "application/vnd.oci.image.config.v1+json",
        config.to_string().as_bytes(),
    );
    let manifest_type = "application/vnd.oci.image.manifest.v1+json";
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": manifest_type, "config": config, "layers": [layer],
    });
    let mut desc = blob(manifest_type, manifest.to_string().as_bytes());
    desc["annotations"] = serde_json::json!({ "org.opencontainers.image.ref.name": "1" });
    let index = serde_json::json!({ "schemaVersion": 2, "manifests": [desc] });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    layer["digest"].as_str().unwrap().to_string()
}

/// Runs one QMP command (no arguments) on the monitor at `socket`.
pub fn qmp(socket: &Path, command: &str) {
    let stream = std::os::unix::net::UnixStream::connect(socket)
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", socket.display()));
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut line = String::new();
    reader.read_line(&mut line).unwrap(); // the greeting
    for cmd in ["qmp_capabilities", command] {
        writeln!(writer, "{{\"execute\":\"{cmd}\"}}").unwrap();
        // Events may come first; the answer has "return" (or "error").
        loop {
            line.clear();
            assert!(
                reader.read_line(&mut line).unwrap() > 0,
                "QMP closed on {cmd}"
            );
            assert!(!line.contains("\"error\""), "QMP {cmd}: {line}");
            if line.contains("\"return\"") {
                break;
            }
        }
    }
}

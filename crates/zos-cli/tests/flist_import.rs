//! End-to-end: `zos flist import` of container images built here, byte by byte, as an OCI
//! layout (directory and tarball), a docker-archive made from it by skopeo, and the same image
//! pushed by skopeo to a real registry (docker-registry on loopback), single- and multi-arch.
//! Then hostile and broken input: each must fail cleanly and leave nothing behind.

mod common;

use common::*;
use serde_json::{json, Value};
use sha2::Digest as _;
use std::io::Write;
use std::net::TcpStream;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const MTIME: u64 = 1_700_000_000;
const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn sha256(bytes: &[u8]) -> String {
    let d = sha2::Sha256::digest(bytes);
    format!(
        "sha256:{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// A layer tar written entry by entry, with exact headers (owners, modes, times, PAX xattrs).
struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn new() -> Layer {
        Layer(tar::Builder::new(Vec::new()))
    }

    fn header(kind: tar::EntryType, mode: u32, uid: u64, gid: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(MTIME);
        h.set_size(0);
        h
    }

    fn dir(mut self, path: &str, mode: u32) -> Layer {
        let mut h = Self::header(tar::EntryType::Directory, mode, 0, 0);
        self.0.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    fn file_owned(mut self, path: &str, mode: u32, uid: u64, gid: u64, data: &[u8]) -> Layer {
        let mut h = Self::header(tar::EntryType::Regular, mode, uid, gid);
        h.set_size(data.len() as u64);
        self.0.append_data(&mut h, path, data).unwrap();
        self
    }

    fn file(self, path: &str, mode: u32, data: &[u8]) -> Layer {
        self.file_owned(path, mode, 0, 0, data)
    }

    /// The next entry gets these xattrs (as `SCHILY.xattr.*` PAX records, as docker writes).
    fn xattr(mut self, name: &str, value: &[u8]) -> Layer {
        let key = format!("SCHILY.xattr.{name}");
        self.0
            .append_pax_extensions([(key.as_str(), value)])
            .unwrap();
        self
    }

    fn symlink(mut self, path: &str, target: &str) -> Layer {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0, 0);
        self.0.append_link(&mut h, path, target).unwrap();
        self
    }

    fn hardlink(mut self, path: &str, target: &str) -> Layer {
        let mut h = Self::header(tar::EntryType::Link, 0o755, 0, 0);
        self.0.append_link(&mut h, path, target).unwrap();
        self
    }

    fn special(mut self, path: &str, kind: tar::EntryType, mode: u32, dev: (u32, u32)) -> Layer {
        let mut h = Self::header(kind, mode, 0, 0);
        h.set_device_major(dev.0).unwrap();
        h.set_device_minor(dev.1).unwrap();
        self.0.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    /// An entry whose name is written raw, bypassing the tar crate's own checks: for names a
    /// well-behaved writer would never produce.
    fn raw(mut self, name: &[u8], kind: tar::EntryType, link: &[u8], data: &[u8]) -> Layer {
        let mut h = Self::header(kind, 0o644, 0, 0);
        h.set_size(data.len() as u64);
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name);
        gnu.linkname[..link.len()].copy_from_slice(link);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    fn finish(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

/// An OCI image layout being written: blobs by digest, `index.json` at the end.
struct Oci {
    dir: PathBuf,
}

impl Oci {
    fn new(dir: &Path) -> Oci {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Oci {
            dir: dir.to_owned(),
        }
    }

    fn blob(&self, media_type: &str, bytes: &[u8]) -> Value {
        let digest = sha256(bytes);
        let path = self.blob_path(&digest);
        std::fs::write(path, bytes).unwrap();
        json!({"mediaType": media_type, "digest": digest, "size": bytes.len()})
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    /// Writes an image (gzip layers, config, manifest); returns the manifest's descriptor,
    /// with its platform.
    fn image(&self, arch: &str, layers: &[Vec<u8>], run: Value) -> Value {
        let layer_descs: Vec<Value> = layers
            .iter()
            .map(|l| self.blob(GZIP_LAYER, &gzip(l)))
            .collect();
        let diff_ids: Vec<String> = layers.iter().map(|l| sha256(l)).collect();
        let config = json!({
            "architecture": arch, "os": "linux", "config": run,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let config = self.blob(
            "application/vnd.oci.image.config.v1+json",
            config.to_string().as_bytes(),
        );
        let manifest = json!({
            "schemaVersion": 2, "mediaType": MANIFEST, "config": config, "layers": layer_descs,
        });
        let mut desc = self.blob(MANIFEST, manifest.to_string().as_bytes());
        desc["platform"] = json!({"architecture": arch, "os": "linux"});
        desc
    }

    /// Writes a multi-platform index of `manifests`; returns its descriptor.
    fn index(&self, manifests: &[Value]) -> Value {
        let index = json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": manifests});
        self.blob(INDEX, index.to_string().as_bytes())
    }

    /// Writes `index.json` naming each descriptor.
    fn names(&self, named: &[(&str, &Value)]) {
        let manifests: Vec<Value> = named
            .iter()
            .map(|(name, desc)| {
                let mut d = (*desc).clone();
                d["annotations"] = json!({"org.opencontainers.image.ref.name": name});
                d
            })
            .collect();
        let index = json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": manifests});
        std::fs::write(self.dir.join("index.json"), index.to_string()).unwrap();
    }
}

/// The runtime config the test image carries.
fn run_config() -> Value {
    json!({
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ["echo hello from $GREETING"],
        "Env": ["PATH=/bin", "GREETING=zos"],
        "WorkingDir": "/srv",
        "User": "1000:1001",
        "ExposedPorts": {"8080/tcp": {}, "53/udp": {}},
        "Labels": {"org.example.name": "busybox-test", "version": "1"},
    })
}

/// Layer 1: busybox and a bit of everything a root filesystem holds.
fn layer1(devices: bool) -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox").unwrap();
    let mut l = Layer::new()
        .dir("bin", 0o755)
        .file("bin/busybox", 0o755, &busybox)
        .symlink("bin/sh", "busybox")
        .hardlink("bin/busybox-link", "bin/busybox")
        .xattr("user.zos", b"test")
        .file("bin/su-tool", 0o4755, b"#!/bin/sh\necho su\n")
        .dir("etc", 0o755)
        .file("etc/a", 0o644, b"a\n")
        .file("etc/keep", 0o644, b"keep v1\n")
        .file("etc/arch", 0o644, b"amd64\n")
        .file_owned("etc/owned", 0o600, 1000, 1001, b"mine\n")
        .dir("dir", 0o755)
        .dir("dir/opq", 0o750)
        .file("dir/opq/old", 0o644, b"old\n")
        .dir("dir/opq/sub", 0o755)
        .file("dir/opq/sub/deep", 0o644, b"deep\n")
        .dir("tmp", 0o1777)
        .dir("srv", 0o755)
        .dir("dev", 0o755)
        .special("dev/fifo", tar::EntryType::Fifo, 0o644, (0, 0));
    if devices {
        l = l.special("dev/null", tar::EntryType::Char, 0o666, (1, 3));
    }
    l.finish()
}

/// Layer 2: a whiteout, an opaque directory, a modified file.
fn layer2() -> Vec<u8> {
    Layer::new()
        .dir("etc", 0o755)
        .file("etc/.wh.a", 0o644, b"")
        .file("etc/keep", 0o644, b"keep v2\n")
        .dir("dir", 0o755)
        .dir("dir/opq", 0o750)
        .file("dir/opq/.wh..wh..opq", 0o644, b"")
        .file("dir/opq/new", 0o644, b"new\n")
        .finish()
}

/// Writes the test image as an OCI layout named `1`, plus (when `multi`) a two-platform index
/// named `multi` whose arm64 image differs (its /etc/arch says arm64).
fn test_layout(dir: &Path, multi: bool) -> Oci {
    let oci = Oci::new(dir);
    let amd64 = oci.image("amd64", &[layer1(is_root()), layer2()], run_config());
    if multi {
        let arm_layer = Layer::new()
            .dir("etc", 0o755)
            .file("etc/arch", 0o644, b"arm64\n")
            .finish();
        let arm64 = oci.image("arm64", &[arm_layer], run_config());
        let index = oci.index(&[amd64.clone(), arm64]);
        oci.names(&[("1", &amd64), ("multi", &index)]);
    } else {
        oci.names(&[("1", &amd64)]);
    }
    oci
}

/// A tiny layout with one layer, for the broken-input cases.
fn one_layer_layout(dir: &Path, layer: Vec<u8>) -> Oci {
    let oci = Oci::new(dir);
    let desc = oci.image("amd64", &[layer], json!({}));
    oci.names(&[("1", &desc)]);
    oci
}

fn store_url(tmp: &Path) -> String {
    format!("dir://{}", tmp.join("store").display())
}

fn import(image: &str, fl: &Path, store: &str) -> Command {
    let mut cmd = zos();
    cmd.args(["flist", "import", image, "-q", "-o"])
        .arg(fl)
        .args(["--store", store]);
    cmd
}

fn unpack(fl: &Path, target: &Path) {
    ok(zos().args(["flist", "unpack", "-q"]).arg(fl).arg(target));
}

/// Imports and unpacks; returns the unpacked tree.
fn import_and_unpack(image: &str, work: &Path, name: &str, store: &str) -> PathBuf {
    let fl = work.join(format!("{name}.fl"));
    ok(&mut import(image, &fl, store));
    let out = work.join(name);
    unpack(&fl, &out);
    out
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Runs a failing import with the output in an empty directory, and checks the message and
/// that the directory is still empty afterwards (no .fl, no staging).
fn refused(image: &str, tmp: &Path, expect: &[&str]) -> String {
    let out_dir = tmp.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let err = fails(&mut import(image, &out_dir.join("app.fl"), &store_url(tmp)));
    for e in expect {
        assert!(err.contains(e), "expected {e:?} in: {err}");
    }
    assert_eq!(
        names_in(&out_dir),
        Vec::<String>::new(),
        "nothing may be left next to the output"
    );
    err
}

#[test]
fn oci_layout_directory_imports_as_a_runtime_would_apply_it() {
    if !have("busybox") || !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    test_layout(&t.join("layout"), false);
    let fl = t.join("app.fl");
    let store = store_url(t);
    let run = zos()
        .args(["flist", "import", "--json"])
        .arg(t.join("layout"))
        .arg("-o")
        .arg(&fl)
        .args(["--store", &store, "--tag", "team=qa"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    // Per-layer progress lines, even when stderr is not a terminal.
    assert!(stderr.contains("layer 1/2 sha256:"), "{stderr}");
    assert!(stderr.contains("layer 2/2 sha256:"), "{stderr}");
    let report: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(report["layers"].as_array().unwrap().len(), 2);
    assert_eq!(report["platform"], "linux/amd64");
    assert!(report["digest"].as_str().unwrap().starts_with("sha256:"));
    assert!(report["pack"]["files"].as_u64().unwrap() >= 6);

    let out = t.join("out");
    unpack(&fl, &out);
    let p = |s: &str| out.join(s);
    // Whiteout and opaque directory.
    assert!(!p("etc/a").exists(), "etc/a was whited out");
    assert_eq!(names_in(&p("dir/opq")), ["new"]);
    assert_eq!(std::fs::read(p("etc/keep")).unwrap(), b"keep v2\n");
    // Links.
    assert_eq!(
        std::fs::read_link(p("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    let (bb, link) = (
        std::fs::metadata(p("bin/busybox")).unwrap(),
        std::fs::metadata(p("bin/busybox-link")).unwrap(),
    );
    assert_eq!(bb.ino(), link.ino(), "hardlink kept");
    assert_eq!(
        std::fs::read(p("bin/busybox")).unwrap(),
        std::fs::read("/bin/busybox").unwrap()
    );
    // Modes, owners, xattrs, times, specials.
    let su = std::fs::metadata(p("bin/su-tool")).unwrap();
    assert_eq!(su.mode() & 0o7777, 0o4755, "setuid kept");
    assert_eq!(
        xattr::get(p("bin/su-tool"), "user.zos").unwrap().as_deref(),
        Some(&b"test"[..])
    );
    let owned = std::fs::metadata(p("etc/owned")).unwrap();
    assert_eq!(
        (owned.uid(), owned.gid(), owned.mode() & 0o7777),
        (1000, 1001, 0o600)
    );
    assert_eq!(owned.mtime(), MTIME as i64);
    assert_eq!(std::fs::metadata(p("tmp")).unwrap().mode() & 0o7777, 0o1777);
    assert_eq!(
        std::fs::metadata(p("dir/opq")).unwrap().mode() & 0o7777,
        0o750
    );
    assert!(std::fs::symlink_metadata(p("dev/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    let null = std::fs::symlink_metadata(p("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), libc::makedev(1, 3));
    // The binary survived intact: run it.
    let hello = Command::new(p("bin/sh"))
        .args(["-c", "echo hi"])
        .output()
        .unwrap();
    assert_eq!(hello.stdout, b"hi\n");

    // The image config, through the CLI's tag listing and through the library.
    let tags = ok(zos().args(["flist", "tag"]).arg(&fl));
    assert!(tags.contains("team=qa"), "{tags}");
    let image_ref = tags
        .lines()
        .find_map(|l| l.strip_prefix("zos.image.ref="))
        .expect("zos.image.ref tag");
    assert!(image_ref.contains("@sha256:"), "{image_ref}");
    let config_json = tags
        .lines()
        .find_map(|l| l.strip_prefix("zos.image="))
        .expect("zos.image tag");
    let config: Value = serde_json::from_str(config_json).unwrap();
    assert_eq!(config["entrypoint"], json!(["/bin/sh", "-c"]));
    assert_eq!(config["cmd"], json!(["echo hello from $GREETING"]));
    assert_eq!(config["env"], json!(["PATH=/bin", "GREETING=zos"]));
    assert_eq!(config["working_dir"], "/srv");
    assert_eq!(config["user"], "1000:1001");
    assert_eq!(config["exposed_ports"], json!(["53/udp", "8080/tcp"]));
    assert_eq!(config["labels"]["org.example.name"], "busybox-test");
    let flist = zos_flist::Flist::open(&fl).unwrap();
    let parsed = zos_flist::oci::image_config(&flist).unwrap().unwrap();
    assert_eq!(parsed.entrypoint, ["/bin/sh", "-c"]);
    assert_eq!(
        (parsed.os.as_str(), parsed.architecture.as_str()),
        ("linux", "amd64")
    );
}

#[test]
fn oci_tarball_and_docker_archive_give_the_same_tree() {
    if !have("busybox") || !have("skopeo") || !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let layout = t.join("layout");
    test_layout(&layout, false);
    let store = store_url(t);
    let reference = import_and_unpack(layout.to_str().unwrap(), t, "from-dir", &store);

    // The layout as a tarball, with the oci: prefix and the image's name.
    let tarball = t.join("layout.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&tarball).unwrap());
    b.append_dir_all(".", &layout).unwrap();
    b.finish().unwrap();
    drop(b);
    let image = format!("oci:{}:1", tarball.display());
    let from_tar = import_and_unpack(&image, t, "from-tar", &store);
    assert_same_tree(&reference, &from_tar);

    // A docker-archive made by skopeo from the layout, plain and gzip-compressed.
    let archive = t.join("docker.tar");
    let status = Command::new("skopeo")
        .args(["--insecure-policy", "copy", "-q"])
        .arg(format!("oci:{}:1", layout.display()))
        .arg(format!(
            "docker-archive:{}:test/busybox:1",
            archive.display()
        ))
        .status()
        .unwrap();
    assert!(status.success(), "skopeo copy to docker-archive");
    let from_archive = import_and_unpack(archive.to_str().unwrap(), t, "from-archive", &store);
    assert_same_tree(&reference, &from_archive);
    let gz = t.join("docker.tar.gz");
    std::fs::write(&gz, gzip(&std::fs::read(&archive).unwrap())).unwrap();
    let image = format!("docker-archive:{}:test/busybox:1", gz.display());
    let from_gz = import_and_unpack(&image, t, "from-gz", &store);
    assert_same_tree(&reference, &from_gz);
}

fn push(layout: &Path, name: &str, dest: &str, all: bool) {
    let mut cmd = Command::new("skopeo");
    cmd.args(["--insecure-policy", "copy", "-q", "--dest-tls-verify=false"]);
    if all {
        cmd.arg("--all");
    }
    let status = cmd
        .arg(format!("oci:{}:{name}", layout.display()))
        .arg(dest)
        .status()
        .unwrap();
    assert!(status.success(), "skopeo copy to {dest}");
}

#[test]
fn registry_pulls_give_the_same_tree_and_pick_platforms() {
    if !have("busybox") || !have("skopeo") || !have("docker-registry") || !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let layout = t.join("layout");
    test_layout(&layout, true);
    let registry = common::registry(t, None);
    let port = registry.port;
    let host = format!("127.0.0.1:{port}");
    push(
        &layout,
        "1",
        &format!("docker://{host}/test/busybox:1"),
        false,
    );
    push(
        &layout,
        "multi",
        &format!("docker://{host}/test/multi:1"),
        true,
    );
    let store = store_url(t);

    // The layout holds two images now, so a local import must name one.
    let image = format!("{}:1", layout.display());
    let reference = import_and_unpack(&image, t, "from-dir", &store);
    let from_registry = import_and_unpack(
        &format!("docker://{host}/test/busybox:1"),
        t,
        "pulled",
        &store,
    );
    assert_same_tree(&reference, &from_registry);
    let tags = ok(zos().args(["flist", "tag"]).arg(t.join("pulled.fl")));
    assert!(
        tags.contains(&format!(
            "zos.image.ref=docker://{host}/test/busybox:1@sha256:"
        )),
        "{tags}"
    );

    // Multi-arch: amd64 by default, arm64 on request, a clear list otherwise.
    let multi = format!("docker://{host}/test/multi:1");
    let arch = |fl: &Path| ok(zos().args(["flist", "cat"]).arg(fl).arg("/etc/arch"));
    let amd = t.join("amd.fl");
    ok(&mut import(&multi, &amd, &store));
    assert_eq!(arch(&amd), "amd64\n");
    let arm = t.join("arm.fl");
    ok(import(&multi, &arm, &store).args(["--platform", "linux/arm64"]));
    assert_eq!(arch(&arm), "arm64\n");
    let tags = ok(zos().args(["flist", "tag"]).arg(&arm));
    assert!(tags.contains(r#""architecture":"arm64""#), "{tags}");
    let out_dir = t.join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let err =
        fails(import(&multi, &out_dir.join("x.fl"), &store).args(["--platform", "linux/s390x"]));
    assert!(err.contains("no linux/s390x image"), "{err}");
    assert!(err.contains("linux/amd64, linux/arm64"), "{err}");
    assert!(names_in(&out_dir).is_empty());

    // Unknown tag and unknown repository: the registry's 404, said plainly.
    for missing in ["test/busybox:nope", "nope/nothing:1"] {
        refused(
            &format!("docker://{host}/{missing}"),
            t,
            &["not found in the registry", missing],
        );
    }
}

#[test]
fn a_server_that_is_not_a_registry_is_refused() {
    if !have("python3") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    // A web server answering every request with an HTML page, as a misconfigured proxy does.
    let port = free_port();
    let script = "import http.server,sys\n\
        class H(http.server.BaseHTTPRequestHandler):\n\
        \x20   def do_GET(self):\n\
        \x20       b=b'<html><body>Welcome to nginx!</body></html>'\n\
        \x20       self.send_response(200)\n\
        \x20       self.send_header('Content-Type','text/html')\n\
        \x20       self.send_header('Content-Length',str(len(b)))\n\
        \x20       self.end_headers()\n\
        \x20       self.wfile.write(b)\n\
        \x20   do_HEAD=do_GET\n\
        \x20   def log_message(self,*a): pass\n\
        http.server.HTTPServer(('127.0.0.1',int(sys.argv[1])),H).serve_forever()\n";
    let child = Command::new("python3")
        .args(["-c", script, &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _server = Server::new(child, port);
    wait_until("html server", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    refused(
        &format!("docker://127.0.0.1:{port}/test/busybox:1"),
        t,
        &["not an image manifest", "<html>"],
    );
    // Nobody listening at all.
    let closed = free_port();
    refused(
        &format!("docker://127.0.0.1:{closed}/test/busybox:1"),
        t,
        &["cannot fetch the manifest", "registry is running"],
    );
}

#[test]
fn files_that_are_not_images_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let junk = t.join("junk");
    std::fs::create_dir_all(junk.join("docs")).unwrap();
    std::fs::write(junk.join("readme.txt"), b"hello").unwrap();
    std::fs::write(junk.join("docs/a.md"), b"# a").unwrap();
    let tarball = t.join("junk.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&tarball).unwrap());
    b.append_dir_all(".", &junk).unwrap();
    b.finish().unwrap();
    drop(b);
    refused(
        tarball.to_str().unwrap(),
        t,
        &["not a container image", "manifest.json", "readme.txt"],
    );
    refused(junk.to_str().unwrap(), t, &["not a container image"]);
    let noise_file = t.join("noise.bin");
    std::fs::write(&noise_file, noise(4096, 7)).unwrap();
    refused(
        noise_file.to_str().unwrap(),
        t,
        &["not a container image", "tar archive"],
    );
    refused(
        "busybox:latest",
        t,
        &["no such file", "docker://busybox:latest"],
    );
}

#[test]
fn a_layer_that_does_not_match_its_digest_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let layer = Layer::new()
        .dir("etc", 0o755)
        .file("etc/data", 0o644, &noise(200_000, 3))
        .finish();
    let layout = t.join("layout");
    let oci = one_layer_layout(&layout, layer);
    let manifest: Value = {
        let index: Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let digest = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
        serde_json::from_slice(&std::fs::read(oci.blob_path(&digest)).unwrap()).unwrap()
    };
    let layer_digest = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
    let blob = oci.blob_path(&layer_digest);
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&blob, &bytes).unwrap();
    refused(
        layout.to_str().unwrap(),
        t,
        &[
            "does not match its digest",
            &layer_digest[..19],
            "layer 1/1",
        ],
    );

    // A config whose diff_id does not match the (intact) layer: the same refusal, for the
    // uncompressed content.
    let layer = Layer::new().file("a", 0o644, b"a").finish();
    let layout2 = t.join("layout2");
    let oci = Oci::new(&layout2);
    let desc = oci.image("amd64", &[layer], json!({}));
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(oci.blob_path(desc["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    let config_path = oci.blob_path(manifest["config"]["digest"].as_str().unwrap());
    let mut config: Value = serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    config["rootfs"]["diff_ids"][0] = json!(sha256(b"something else"));
    let config = oci.blob(
        "application/vnd.oci.image.config.v1+json",
        config.to_string().as_bytes(),
    );
    let manifest = json!({
        "schemaVersion": 2, "mediaType": MANIFEST, "config": config,
        "layers": manifest["layers"],
    });
    let desc = oci.blob(MANIFEST, manifest.to_string().as_bytes());
    oci.names(&[("1", &desc)]);
    refused(
        layout2.to_str().unwrap(),
        t,
        &["uncompressed content does not match its digest"],
    );
}

#[test]
fn entries_escaping_the_root_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let outside = t.join("outside");
    std::fs::create_dir(&outside).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dotdot",
            Layer::new()
                .raw(b"../../escaped", tar::EntryType::Regular, b"", b"x")
                .finish(),
            "climbs out of the image root",
        ),
        (
            "through-symlink",
            Layer::new()
                .symlink("evil", outside.to_str().unwrap())
                .file("evil/pwned", 0o644, b"x")
                .finish(),
            "is a symlink",
        ),
        (
            "hardlink-out",
            Layer::new()
                .raw(b"link", tar::EntryType::Link, b"../../etc/passwd", b"")
                .finish(),
            "climbs out of the image root",
        ),
    ];
    for (name, layer, expect) in cases {
        let layout = t.join(name);
        one_layer_layout(&layout, layer);
        let err = refused(layout.to_str().unwrap(), t, &[expect, "refusing entry"]);
        assert!(err.contains("layer 1/1"), "{err}");
    }
    assert!(names_in(&outside).is_empty(), "nothing written outside");
    assert!(!t.join("escaped").exists() && !Path::new("/escaped").exists());
}

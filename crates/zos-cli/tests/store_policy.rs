//! End-to-end: `zos flist mount --restrict-stores`, the store policy a node mounts tenants'
//! flists under, against a real Redis, Python's HTTP server and dir stores on loopback:
//! refused by default, with the reason and the flag that allows it, before any request
//! reaches the store; mounted and read when allowed; and checked again at every connection,
//! so an allowed store cannot send the mount on to a refused address.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const CONTENT: &[u8] = b"served only where the policy allows\n";

fn ready() -> bool {
    have("fusermount3") && is_root()
}

/// `src/hello` packed into `fl` with its blocks in `store`.
fn pack_to(dir: &Path, fl: &str, store: &str) -> PathBuf {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("hello"), CONTENT).unwrap();
    let fl = dir.join(fl);
    ok(zos()
        .args(["flist", "pack", "-q"])
        .arg(&src)
        .arg("-o")
        .arg(&fl)
        .args(["--store", store]));
    fl
}

/// `zos flist mount --daemon --restrict-stores FL DIR/mnt EXTRA…` with a fresh cache.
fn mount(dir: &Path, fl: &Path, extra: &[&str]) -> Command {
    let point = dir.join("mnt");
    std::fs::create_dir_all(&point).unwrap();
    let mut cmd = zos();
    cmd.args(["flist", "mount", "--daemon", "--restrict-stores"])
        .arg(fl)
        .arg(&point)
        .arg("--cache")
        .arg(dir.join("cache"))
        .args(extra);
    cmd
}

/// Unmounts `dir/mnt` when dropped, so a failing test leaves no mount behind.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = zos()
            .args(["flist", "umount", "--lazy"])
            .arg(self.0.join("mnt"))
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn a_redis_store_on_loopback_is_refused_unless_its_network_is_allowed() {
    if !ready() || !have("redis-server") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let redis = redis();
    let store = format!("redis://127.0.0.1:{}", redis.port);
    let fl = pack_to(tmp.path(), "app.fl", &store);
    let _unmount = Unmount(tmp.path().to_owned());

    let err = fails(&mut mount(tmp.path(), &fl, &[]));
    assert!(
        err.contains(&format!(
            "store {store} refused by the store policy: 127.0.0.1 is a loopback address; if \
             the store is trusted, allow it with --allow-store-net 127.0.0.1/32"
        )),
        "{err}"
    );
    // A name is judged by what it resolves to.
    let by_name = format!("redis://localhost:{}", redis.port);
    let err = fails(&mut mount(tmp.path(), &fl, &["--store", &by_name]));
    assert!(
        err.contains(&format!("store {by_name} refused")) && err.contains("loopback address"),
        "{err}"
    );
    assert_eq!(
        redis_calls(redis.port, "get"),
        0,
        "a refused store was read"
    );

    ok(&mut mount(
        tmp.path(),
        &fl,
        &["--allow-store-net", "127.0.0.0/8"],
    ));
    assert_eq!(
        std::fs::read(tmp.path().join("mnt/hello")).unwrap(),
        CONTENT
    );
    assert!(redis_calls(redis.port, "get") > 0);
}

#[test]
fn http_and_dir_stores_need_their_allowance() {
    if !ready() || !have("python3") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store_dir = tmp.path().join("store");
    let fl = pack_to(
        tmp.path(),
        "app.fl",
        &format!("dir://{}", store_dir.display()),
    );
    let log = tmp.path().join("http.log");
    let server = http_server_logging(&store_dir, std::fs::File::create(&log).unwrap());
    let by_name = format!("http://localhost:{}", server.port);
    let _unmount = Unmount(tmp.path().to_owned());

    // The flist's own dir:// route: a path on this host.
    let err = fails(&mut mount(tmp.path(), &fl, &[]));
    assert!(
        err.contains("is a path on this host outside the allowed store directories")
            && err.contains(&format!("--allow-store-dir {}", store_dir.display())),
        "{err}"
    );
    let err = fails(&mut mount(tmp.path(), &fl, &["--store", &by_name]));
    assert!(
        err.contains(&format!("store {by_name} refused")) && err.contains("loopback address"),
        "{err}"
    );
    assert!(http_gets(&log).is_empty(), "{:?}", http_gets(&log));

    ok(&mut mount(
        tmp.path(),
        &fl,
        &[
            "--store",
            &by_name,
            "--allow-store-net=127.0.0.1",
            "--allow-store-net=::1",
        ],
    ));
    assert_eq!(
        std::fs::read(tmp.path().join("mnt/hello")).unwrap(),
        CONTENT
    );
    assert!(!http_gets(&log).is_empty());
    ok(zos().args(["flist", "umount"]).arg(tmp.path().join("mnt")));

    // The dir store itself, once its directory is allowed.
    std::fs::remove_dir_all(tmp.path().join("cache")).unwrap();
    let allowed = store_dir.display().to_string();
    ok(&mut mount(
        tmp.path(),
        &fl,
        &["--allow-store-dir", &allowed],
    ));
    assert_eq!(
        std::fs::read(tmp.path().join("mnt/hello")).unwrap(),
        CONTENT
    );
}

/// Answers every request with a redirect to `to` (same path), counting requests.
fn redirector(to: String) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let path = line.split(' ').nth(1).unwrap_or("/").to_string();
            // The rest of the request head.
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).map_or(true, |n| n == 0) || header == "\r\n" {
                    break;
                }
            }
            seen.fetch_add(1, Ordering::SeqCst);
            let _ = write!(
                conn,
                "HTTP/1.1 302 Found\r\nLocation: {to}{path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    (port, count)
}

#[test]
fn every_connection_is_checked_so_an_allowed_store_cannot_redirect_past_the_policy() {
    if !ready() || !have("python3") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store_dir = tmp.path().join("store");
    let fl = pack_to(
        tmp.path(),
        "app.fl",
        &format!("dir://{}", store_dir.display()),
    );
    // The real store on 127.0.0.2, which the policy does not allow...
    let port = TcpListener::bind("127.0.0.2:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = tmp.path().join("http.log");
    let mut server = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.2",
            "--directory",
        ])
        .arg(&store_dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.2", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "http server on 127.0.0.2 did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // ...behind an allowed address that sends every request there, as a name that resolves
    // elsewhere at the next lookup would.
    let (front, requests) = redirector(format!("http://127.0.0.2:{port}"));
    let _unmount = Unmount(tmp.path().to_owned());
    let mount_log = tmp.path().join("mount.log");
    ok(&mut mount(
        tmp.path(),
        &fl,
        &[
            "--store",
            &format!("http://127.0.0.1:{front}"),
            "--allow-store-net",
            "127.0.0.1/32",
            "--log",
            mount_log.to_str().unwrap(),
        ],
    ));
    let read = std::fs::read(tmp.path().join("mnt/hello"));
    let _ = server.kill();
    let _ = server.wait();
    assert!(read.is_err(), "the redirect was followed: {read:?}");
    assert!(
        requests.load(Ordering::SeqCst) > 0,
        "the allowed store was never asked"
    );
    assert!(http_gets(&log).is_empty(), "{:?}", http_gets(&log));
    let mount_log = std::fs::read_to_string(&mount_log).unwrap();
    assert!(
        mount_log.contains("refused by the store policy: 127.0.0.2 is a loopback address"),
        "{mount_log}"
    );
}

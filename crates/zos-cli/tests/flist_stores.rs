//! End-to-end: stores. Real `redis-server` (as a Redis store and as a 0-db-style namespaced
//! store), a real HTTP server serving a dir store, sharding by range, fallback when a store
//! dies mid-read, and a clear error with nothing half-written when every store is dead.

mod common;

use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

fn tree(root: &Path, files: u64, size: usize) {
    std::fs::create_dir_all(root.join("sub")).unwrap();
    for i in 0..files {
        std::fs::write(root.join(format!("sub/f{i}")), noise(size, i + 7)).unwrap();
    }
    std::fs::write(root.join("small"), b"small file\n").unwrap();
}

fn pack(src: &Path, fl: &Path, stores: &[String]) -> serde_json::Value {
    let mut cmd = zos();
    cmd.args(["flist", "pack", "--json"])
        .arg(src)
        .arg("-o")
        .arg(fl);
    for s in stores {
        cmd.args(["--store", s]);
    }
    serde_json::from_str(&ok(&mut cmd)).unwrap()
}

#[test]
fn redis_and_zdb_namespace_stores_round_trip() {
    if !have("redis-server") {
        return;
    }
    let server = redis();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    tree(&src, 6, 600_000);
    for (name, url) in [
        ("redis", format!("redis://127.0.0.1:{}", server.port)),
        // 0-db selects a namespace with SELECT; Redis accepts the same command for db 5.
        ("zdb", format!("zdb://127.0.0.1:{}/5", server.port)),
    ] {
        let fl = tmp.path().join(format!("{name}.fl"));
        let report = pack(&src, &fl, std::slice::from_ref(&url));
        assert_eq!(report["blocks_sent"], 13, "{name}");
        let out = tmp.path().join(format!("out-{name}"));
        ok(zos().args(["flist", "unpack"]).arg(&fl).arg(&out));
        assert_same_tree(&src, &out);
    }
    // The namespace really selects: another namespace of the same server has none of them.
    let fl = tmp.path().join("zdb.fl");
    let other = zos()
        .args(["flist", "verify"])
        .arg(&fl)
        .args(["--store", &format!("zdb://127.0.0.1:{}/6", server.port)])
        .output()
        .unwrap();
    assert_eq!(other.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&other.stdout).contains("13 missing or corrupt"));
}

#[test]
fn ranges_shard_blocks_and_writes_go_to_every_matching_store() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    tree(&src, 16, 100_000);
    let (low, high, all) = (
        tmp.path().join("low"),
        tmp.path().join("high"),
        tmp.path().join("all"),
    );
    let fl = tmp.path().join("app.fl");
    pack(
        &src,
        &fl,
        &[
            format!("00-7f=dir://{}", low.display()),
            format!("80-ff=dir://{}", high.display()),
            format!("dir://{}", all.display()),
        ],
    );
    let first_byte = |p: &std::path::PathBuf| {
        u8::from_str_radix(&p.file_name().unwrap().to_string_lossy()[..2], 16).unwrap()
    };
    let (lo, hi, every) = (store_blocks(&low), store_blocks(&high), store_blocks(&all));
    assert!(lo.iter().all(|p| first_byte(p) <= 0x7f));
    assert!(hi.iter().all(|p| first_byte(p) >= 0x80));
    assert_eq!(lo.len() + hi.len(), every.len());
    assert_eq!(every.len(), 17);
    let routes = ok(zos().args(["flist", "store"]).arg(&fl));
    assert!(
        routes.starts_with(&format!("00-7f=dir://{}\n80-ff=", low.display())),
        "{routes}"
    );

    // Reading with only the two halves works; with only one half, verify names what is missing.
    std::fs::remove_dir_all(&all).unwrap();
    let out = tmp.path().join("out");
    ok(zos().args(["flist", "unpack"]).arg(&fl).arg(&out));
    assert_same_tree(&src, &out);
    std::fs::remove_dir_all(&high).unwrap();
    let out = zos().args(["flist", "verify"]).arg(&fl).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("{} missing or corrupt", hi.len())),
        "{text}"
    );
    assert!(text.contains("block not found"), "{text}");
}

#[test]
fn http_store_serves_a_dir_store_read_only() {
    if !have("python3") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    tree(&src, 4, 700_000);
    let store = tmp.path().join("store");
    let fl = tmp.path().join("app.fl");
    pack(&src, &fl, &[format!("dir://{}", store.display())]);
    let http = http_server(&store);
    let url = format!("http://127.0.0.1:{}", http.port);

    let out = tmp.path().join("out");
    ok(zos()
        .args(["flist", "unpack"])
        .arg(&fl)
        .arg(&out)
        .args(["--store", &url]));
    assert_same_tree(&src, &out);
    let cat = ok(zos()
        .args(["flist", "cat"])
        .arg(&fl)
        .args(["/small", "--store", &url]));
    assert_eq!(cat, "small file\n");

    // A store that cannot take writes says so (for blocks it does not already have).
    std::fs::write(src.join("new"), noise(1000, 1234)).unwrap();
    let err = fails(
        zos()
            .args(["flist", "pack"])
            .arg(&src)
            .arg("-o")
            .arg(tmp.path().join("x.fl"))
            .args(["--store", &url]),
    );
    assert!(err.contains("read-only"), "{err}");
    assert!(!tmp.path().join("x.fl").exists());
}

#[test]
fn a_store_dying_mid_read_falls_back_to_the_next() {
    if !have("redis-server") {
        return;
    }
    let mut server = redis();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    // 96 blocks: enough that the unpack is still running when Redis is killed.
    tree(&src, 48, 1_048_576);
    let backup = tmp.path().join("backup");
    let fl = tmp.path().join("app.fl");
    let redis_url = format!("redis://127.0.0.1:{}", server.port);
    pack(
        &src,
        &fl,
        &[redis_url, format!("dir://{}", backup.display())],
    );

    // The backup is read over HTTP with a request log, so the blocks it serves can be
    // counted; Redis counts the GETs it answers. The flist's own routes are edited so the
    // unpack still reads the stores the flist records, Redis first.
    let backup_url = format!("dir://{}", backup.display());
    let log_path = tmp.path().join("backup.log");
    let backup_server = http_server_logging(&backup, std::fs::File::create(&log_path).unwrap());
    let backup_http = format!("http://127.0.0.1:{}", backup_server.port);
    ok(zos()
        .args(["flist", "store"])
        .arg(&fl)
        .args(["rm", &backup_url]));
    ok(zos()
        .args(["flist", "store"])
        .arg(&fl)
        .args(["add", &backup_http]));
    let blocks = store_blocks(&backup).len() as u64;
    let gets_before = redis_calls(server.port, "get");

    let out = tmp.path().join("out");
    let mut child = zos()
        .args(["flist", "unpack", "--workers", "1"])
        .arg(&fl)
        .arg(&out)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until some content has landed in the staging directory, then kill Redis.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let staged_bytes: u64 = std::fs::read_dir(tmp.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".out."))
            .filter_map(|e| std::fs::read_dir(e.path().join("sub")).ok())
            .flatten()
            .filter_map(|f| f.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum();
        if staged_bytes > 0 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "unpack finished before Redis could be killed"
    );
    let from_redis = redis_calls(server.port, "get") - gets_before;
    server.kill();
    let result = child.wait_with_output().unwrap();
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert_same_tree(&src, &out);
    // Redis served blocks before it died, and the backup served the rest: a router reading
    // only the backup, or only Redis, fails one of these.
    let from_backup = http_gets(&log_path).len() as u64;
    assert!(from_redis > 0, "Redis served no block before it was killed");
    assert!(
        from_redis < blocks,
        "Redis served every block ({from_redis}) before it was killed"
    );
    assert!(
        from_backup > 0 && from_redis + from_backup >= blocks,
        "{blocks} blocks: {from_redis} read from Redis before it died, {from_backup} from the backup"
    );
}

#[test]
fn all_stores_dead_is_a_clear_error_and_nothing_is_left_half_written() {
    if !have("redis-server") {
        return;
    }
    let mut server = redis();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    tree(&src, 3, 600_000);
    let fl = tmp.path().join("app.fl");
    let url = format!("redis://127.0.0.1:{}", server.port);
    pack(&src, &fl, std::slice::from_ref(&url));
    server.kill();

    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let out = work.join("out");
    let err = fails(zos().args(["flist", "unpack"]).arg(&fl).arg(&out));
    assert!(err.contains("block 0 ("), "names the block: {err}");
    assert!(
        err.contains(&format!("redis://127.0.0.1:{}", server.port)),
        "names the store: {err}"
    );
    assert!(!out.exists(), "no partial target");
    assert_eq!(
        std::fs::read_dir(&work).unwrap().count(),
        0,
        "no staging left behind"
    );

    let err = fails(
        zos()
            .args(["flist", "pack"])
            .arg(&src)
            .arg("-o")
            .arg(work.join("new.fl"))
            .args(["--store", &url]),
    );
    assert!(err.contains(&url), "{err}");
    assert_eq!(
        std::fs::read_dir(&work).unwrap().count(),
        0,
        "no partial .fl left behind"
    );
}

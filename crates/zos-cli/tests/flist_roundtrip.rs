//! End-to-end: pack, unpack, inspect, ls, cat, verify, tag and store editing through the real
//! `zos` binary, and compatibility both ways with flists made by ThreeFold's `rfs`.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The reference-tool fixture in `shared/`, which sits beside the repository (or where
/// `ZOS_SHARED` points).
fn fixture() -> PathBuf {
    let shared = std::env::var_os("ZOS_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    let dir = shared.join("fixtures/rfs");
    assert!(
        dir.join("made-by-rfs.fl").is_file(),
        "rfs fixture not found in {}: keep shared/ beside the repository or set ZOS_SHARED",
        dir.display()
    );
    dir
}

fn extract_fixture_source(into: &Path) -> PathBuf {
    let status = Command::new("tar")
        .arg("-xf")
        .arg(fixture().join("source.tar"))
        .arg("-C")
        .arg(into)
        .status()
        .unwrap();
    assert!(status.success());
    into.join("source")
}

#[test]
fn flist_made_by_rfs_unpacks_to_its_source_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let source = extract_fixture_source(tmp.path());
    let out = tmp.path().join("out");
    let store = format!("dir://{}", fixture().join("store").display());
    ok(zos()
        .args(["flist", "unpack"])
        .arg(fixture().join("made-by-rfs.fl"))
        .arg(&out)
        .args(["--store", &store]));
    // rfs records no sub-second times, so compare at its precision.
    let strip_ns = |mut s: std::collections::BTreeMap<PathBuf, Entry>| {
        s.values_mut().for_each(|e| e.mtime.1 = 0);
        s
    };
    assert_eq!(strip_ns(snapshot(&source)), strip_ns(snapshot(&out)));
    let text = ok(zos()
        .args(["flist", "cat"])
        .arg(fixture().join("made-by-rfs.fl"))
        .args(["/etc/hostname", "--store", &store]));
    assert_eq!(text, "fixture\n");
}

#[test]
fn pack_gives_the_same_blocks_as_rfs() {
    // Convergent encryption: packing the same tree here must produce exactly the ids and keys
    // rfs recorded, in the same order, or neither tool could read the other's flists.
    let tmp = tempfile::tempdir().unwrap();
    let source = extract_fixture_source(tmp.path());
    let ours = tmp.path().join("ours.fl");
    let store = tmp.path().join("store");
    ok(zos()
        .args(["flist", "pack"])
        .arg(&source)
        .arg("-o")
        .arg(&ours)
        .arg("--store")
        .arg(format!("dir://{}", store.display())));
    let blocks_by_path = |fl: &Path| {
        let flist = zos_flist::Flist::open(fl).unwrap();
        let mut out = Vec::new();
        flist
            .walk(|rel, inode| {
                out.push((rel.to_owned(), flist.blocks(inode.ino)?));
                Ok(())
            })
            .unwrap();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    };
    assert_eq!(
        blocks_by_path(&ours),
        blocks_by_path(&fixture().join("made-by-rfs.fl"))
    );
    let theirs: Vec<_> = store_blocks(&fixture().join("store"))
        .iter()
        .map(|p| p.file_name().unwrap().to_owned())
        .collect();
    let mine: Vec<_> = store_blocks(&store)
        .iter()
        .map(|p| p.file_name().unwrap().to_owned())
        .collect();
    assert_eq!(mine, theirs);
}

#[test]
fn flist_made_here_reads_with_the_rfs_schema() {
    // What an rfs reader runs: its own queries against the plain rfs tables.
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/hostname"), b"zos\n").unwrap();
    std::os::unix::fs::symlink("hostname", src.join("etc/name")).unwrap();
    let fl = tmp.path().join("app.fl");
    ok(zos()
        .args(["flist", "pack"])
        .arg(&src)
        .arg("-o")
        .arg(&fl)
        .arg(format!("--store=dir://{}", tmp.path().join("s").display())));
    let db = rusqlite_free_query(&fl);
    assert!(db.contains("1|0|/|"), "root row as rfs writes it: {db}");
    assert!(db.contains("|etc|"), "{db}");
    assert!(db.contains("|hostname|4|"), "{db}");
    assert!(
        db.contains("name|8|hostname"),
        "symlink target in extra: {db}"
    );
}

/// Dumps the rfs tables with the `sqlite3` shell if present, else through our reader's
/// connection-free path (plain SQL via the zos-flist crate is not what we want to test).
fn rusqlite_free_query(fl: &Path) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3,sys\n\
             c=sqlite3.connect(sys.argv[1])\n\
             for r in c.execute('select ino,parent,name,size,mode from inode order by ino'): print('|'.join(map(str,r)))\n\
             for r in c.execute('select i.name,i.size,e.data from inode i join extra e on e.ino=i.ino'): print('|'.join(map(str,r)))\n\
             for r in c.execute('select count(*) from block'): print('blocks', r[0])\n",
        )
        .arg(fl)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A tree with everything a root filesystem can hold.
fn rich_tree(root: &Path, with_devices: bool) {
    use std::os::unix::fs::PermissionsExt;
    let p = |s: &str| root.join(s);
    for d in ["bin", "etc/conf.d", "tmp", "srv/data", "empty"] {
        std::fs::create_dir_all(p(d)).unwrap();
    }
    std::fs::write(p("bin/tool"), b"#!/bin/sh\necho tool\n").unwrap();
    std::fs::set_permissions(p("bin/tool"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::set_permissions(p("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::set_permissions(p("srv"), std::fs::Permissions::from_mode(0o2750)).unwrap();
    std::fs::set_permissions(p("etc/conf.d"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(p("etc/hostname"), b"node-1\n").unwrap();
    std::fs::write(p("etc/empty-file"), b"").unwrap();
    // Several blocks, last one partial, and a repeated block inside one file.
    let mut big = noise(524_288, 1);
    big.extend_from_slice(&big.clone());
    big.extend_from_slice(&noise(175_712, 3));
    std::fs::write(p("srv/data/big.bin"), &big).unwrap();
    std::fs::write(p("srv/data/exact"), noise(524_288, 2)).unwrap();
    std::fs::hard_link(p("srv/data/exact"), p("bin/exact-link")).unwrap();
    std::fs::hard_link(p("srv/data/exact"), p("etc/exact-link2")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", p("etc/abs-link")).unwrap();
    std::os::unix::fs::symlink("../bin/tool", p("etc/rel-link")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", p("etc/dangling")).unwrap();
    use std::os::unix::ffi::OsStrExt;
    std::fs::write(
        root.join(std::ffi::OsStr::from_bytes(b"etc/caf\xe9")),
        b"latin-1 name",
    )
    .unwrap();
    xattr::set(p("bin/tool"), "user.origin", b"test").unwrap();
    xattr::set(p("srv/data"), "user.dir-attr", b"\x00\x01binary").unwrap();
    assert!(Command::new("mkfifo")
        .arg(p("tmp/pipe"))
        .status()
        .unwrap()
        .success());
    if with_devices {
        assert!(Command::new("mknod")
            .arg(p("etc/null"))
            .args(["c", "1", "3"])
            .status()
            .unwrap()
            .success());
        assert!(Command::new("mknod")
            .arg(p("etc/loop9"))
            .args(["b", "7", "9"])
            .status()
            .unwrap()
            .success());
        std::os::unix::fs::chown(p("srv"), Some(1001), Some(2002)).unwrap();
        std::os::unix::fs::lchown(p("etc/abs-link"), Some(3), Some(4)).unwrap();
        std::os::unix::fs::chown(p("etc/hostname"), Some(0), Some(42)).unwrap();
    }
    // Times last, with nanoseconds, on files, directories and a symlink.
    for (path, stamp) in [
        ("etc/hostname", "2020-01-02 03:04:05.123456789"),
        ("etc/abs-link", "2019-06-07 08:09:10.5"),
        ("srv/data", "2018-01-01 00:00:00.000000001"),
        ("", "2017-02-03 04:05:06.7"),
    ] {
        let ok = Command::new("touch")
            .args(["-h", "-d", stamp])
            .arg(p(path))
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
}

#[test]
fn round_trip_keeps_content_modes_owners_times_links_xattrs_and_specials() {
    let root = is_root();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    rich_tree(&src, root);
    let fl = tmp.path().join("rich.fl");
    let store = format!("dir://{}", tmp.path().join("store").display());
    let out = ok(zos()
        .args(["flist", "pack", "--json"])
        .arg(&src)
        .arg("-o")
        .arg(&fl)
        .args(["--store", &store, "--tag", "version=1"]));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    // big.bin: 3 blocks, one repeated; exact: 1 block shared by three names.
    assert_eq!(
        report["blocks_sent"],
        report["blocks"].as_u64().unwrap() - 1
    );

    let dest = tmp.path().join("dest");
    ok(zos().args(["flist", "unpack"]).arg(&fl).arg(&dest));
    assert_same_tree(&src, &dest);
    let snap = snapshot(&dest);
    assert_eq!(
        snap[Path::new("etc/exact-link2")].same_inode_as,
        snap[Path::new("bin/exact-link")].same_inode_as,
        "hardlinks restored as one inode"
    );

    // Unpacking again into an existing empty directory works too.
    let empty = tmp.path().join("empty-target");
    std::fs::create_dir(&empty).unwrap();
    ok(zos().args(["flist", "unpack"]).arg(&fl).arg(&empty));
    assert_same_tree(&src, &empty);

    // Under a setgid directory new files would inherit its group; owners must still be exact.
    if root {
        use std::os::unix::fs::PermissionsExt;
        let sgid = tmp.path().join("sgid");
        std::fs::create_dir(&sgid).unwrap();
        std::os::unix::fs::chown(&sgid, None, Some(777)).unwrap();
        std::fs::set_permissions(&sgid, std::fs::Permissions::from_mode(0o2775)).unwrap();
        ok(zos()
            .args(["flist", "unpack"])
            .arg(&fl)
            .arg(sgid.join("out")));
        assert_same_tree(&src, &sgid.join("out"));
    }
}

#[test]
fn inspect_ls_cat_and_verify_read_without_unpacking() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    rich_tree(&src, false);
    let fl = tmp.path().join("app.fl");
    let store = format!("dir://{}", tmp.path().join("store").display());
    ok(zos()
        .args(["flist", "pack", "-q"])
        .arg(&src)
        .arg("-o")
        .arg(&fl)
        .args(["--store", &store]));

    let info: serde_json::Value =
        serde_json::from_str(&ok(zos().args(["flist", "inspect", "--json"]).arg(&fl))).unwrap();
    // bin/tool, etc/hostname, etc/empty-file, big.bin, exact, etc/café
    assert_eq!(info["files"], 6);
    assert_eq!(info["hardlinks"], 2);
    assert_eq!(info["symlinks"], 3);
    assert_eq!(info["specials"], 1);
    assert_eq!(info["dirs"], 8);
    let big = 2 * 524_288 + 175_712;
    assert_eq!(info["total_bytes"], 20 + 7 + big + 524_288 + 12);
    assert_eq!(
        info["unique_bytes"],
        20 + 7 + 524_288 + 175_712 + 524_288 + 12
    );
    assert_eq!(info["routes"][0]["url"], store.as_str());

    let listing = ok(zos().args(["flist", "ls"]).arg(&fl).arg("/etc"));
    assert!(listing.contains("abs-link -> /etc/hostname"), "{listing}");
    assert!(
        listing.contains("2020-01-02T03:04:05Z hostname"),
        "{listing}"
    );
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("drwx------") && l.ends_with("conf.d")),
        "{listing}"
    );
    let json: serde_json::Value = serde_json::from_str(&ok(zos()
        .args(["flist", "ls", "--json"])
        .arg(&fl)
        .arg("/bin/tool")))
    .unwrap();
    assert_eq!(json[0]["mode"], "-rwsr-xr-x");

    let big_out = zos()
        .args(["flist", "cat"])
        .arg(&fl)
        .arg("/srv/data/big.bin")
        .output()
        .unwrap();
    assert!(big_out.status.success());
    assert_eq!(
        big_out.stdout,
        std::fs::read(src.join("srv/data/big.bin")).unwrap()
    );
    let err = fails(zos().args(["flist", "cat"]).arg(&fl).arg("/srv/nope"));
    assert!(
        err.contains("no such path in the flist: /srv/nope"),
        "{err}"
    );

    let verified = ok(zos().args(["flist", "verify"]).arg(&fl));
    assert!(verified.contains("0 missing or corrupt"), "{verified}");
}

#[test]
fn second_pack_sends_only_new_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for i in 0..20 {
        std::fs::write(src.join(format!("f{i}")), noise(300_000, i)).unwrap();
    }
    let store = format!("dir://{}", tmp.path().join("store").display());
    let pack = |name: &str| -> serde_json::Value {
        let out = ok(zos()
            .args(["flist", "pack", "--json"])
            .arg(&src)
            .arg("-o")
            .arg(tmp.path().join(name))
            .args(["--store", &store]));
        serde_json::from_str(&out).unwrap()
    };
    let first = pack("a.fl");
    assert_eq!(first["blocks"], 20);
    assert_eq!(first["blocks_sent"], 20);
    std::fs::write(src.join("f3"), noise(300_000, 99)).unwrap();
    let second = pack("b.fl");
    assert_eq!(
        second["blocks_sent"], 1,
        "only the changed file's block is sent"
    );
    assert_eq!(second["blocks_present"], 19);
    assert_eq!(store_blocks(&tmp.path().join("store")).len(), 21);
}

#[test]
fn tags_and_routes_are_edited_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("a"), b"a").unwrap();
    let fl = tmp.path().join("app.fl");
    let store = format!("dir://{}", tmp.path().join("store").display());
    ok(zos()
        .args(["flist", "pack"])
        .arg(&src)
        .arg("-o")
        .arg(&fl)
        .args(["--store", &store, "--tag", "author=me"]));

    ok(zos()
        .args(["flist", "tag"])
        .arg(&fl)
        .args(["set", "version=2", "name=app"]));
    ok(zos().args(["flist", "tag"]).arg(&fl).args(["rm", "author"]));
    assert_eq!(
        ok(zos().args(["flist", "tag"]).arg(&fl)),
        "name=app\nversion=2\n"
    );
    let err = fails(zos().args(["flist", "tag"]).arg(&fl).args(["rm", "author"]));
    assert!(err.contains("no tag \"author\""), "{err}");
    let err = fails(
        zos()
            .args(["flist", "tag"])
            .arg(&fl)
            .args(["set", "novalue"]),
    );
    assert!(err.contains("expected KEY=VALUE"), "{err}");

    ok(zos()
        .args(["flist", "store"])
        .arg(&fl)
        .args(["add", "80-ff=zdb://alice:secret@10.1.2.3:9900/ns"]));
    ok(zos().args(["flist", "store"]).arg(&fl).args([
        "add",
        "--keep-passwords",
        "redis://:pw@127.0.0.1:1/3",
    ]));
    let routes = ok(zos().args(["flist", "store"]).arg(&fl).arg("list"));
    assert_eq!(
        routes,
        format!(
            "00-ff={store}\n80-ff=zdb://alice@10.1.2.3:9900/ns\n00-ff=redis://:pw@127.0.0.1:1/3\n"
        )
    );
    ok(zos().args(["flist", "store"]).arg(&fl).args(["rm", &store]));
    ok(zos()
        .args(["flist", "store"])
        .arg(&fl)
        .args(["rm", "redis://:pw@127.0.0.1:1/3"]));
    assert_eq!(
        ok(zos().args(["flist", "store"]).arg(&fl)),
        "80-ff=zdb://alice@10.1.2.3:9900/ns\n"
    );
    let err = fails(zos().args(["flist", "store"]).arg(&fl).args(["rm", &store]));
    assert!(err.contains("no route"), "{err}");
    let err = fails(
        zos()
            .args(["flist", "store"])
            .arg(&fl)
            .args(["add", "ftp://x"]),
    );
    assert!(err.contains("unknown scheme"), "{err}");
}

#[test]
fn pack_passwords_are_stripped_from_routes_unless_asked() {
    if !have("redis-server") {
        return;
    }
    let redis = redis();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("a"), b"a").unwrap();
    // Redis ignores a password when none is configured... so use a user name it knows.
    let url = format!("redis://default:anything@127.0.0.1:{}/0", redis.port);
    let fl = tmp.path().join("a.fl");
    ok(zos()
        .args(["flist", "pack"])
        .arg(&src)
        .arg("-o")
        .arg(&fl)
        .args(["--store", &url]));
    let routes = ok(zos().args(["flist", "store"]).arg(&fl));
    assert_eq!(
        routes,
        format!("00-ff=redis://default@127.0.0.1:{}/0\n", redis.port)
    );
    let fl2 = tmp.path().join("b.fl");
    ok(zos()
        .args(["flist", "pack", "--keep-passwords"])
        .arg(&src)
        .arg("-o")
        .arg(&fl2)
        .args(["--store", &url]));
    assert_eq!(
        ok(zos().args(["flist", "store"]).arg(&fl2)),
        format!("00-ff={url}\n")
    );
}

#[test]
fn output_inside_the_tree_does_not_pack_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("a"), b"a").unwrap();
    let store = format!("dir://{}", tmp.path().join("store").display());
    ok(zos()
        .args(["flist", "pack"])
        .arg(&src)
        .arg("-o")
        .arg(src.join("self.fl"))
        .args(["--store", &store]));
    let listing = ok(zos().args(["flist", "ls"]).arg(src.join("self.fl")));
    assert_eq!(listing.lines().count(), 1, "only `a`: {listing}");
    assert!(listing.ends_with(" a\n"), "{listing}");
}

#[test]
fn pack_and_inspect_count_the_same_blocks_when_files_are_hardlinked() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    for d in ["a", "b", "c"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
    }
    // 3 distinct blocks, under three names (one file, two hardlinks), and a copy that is no
    // hardlink: 6 blocks in files, 3 + 1 distinct with the small file.
    let big = noise(1_200_000, 7);
    std::fs::write(src.join("a/big"), &big).unwrap();
    std::fs::hard_link(src.join("a/big"), src.join("b/link1")).unwrap();
    std::fs::hard_link(src.join("a/big"), src.join("c/link2")).unwrap();
    std::fs::write(src.join("c/copy"), &big).unwrap();
    std::fs::write(src.join("small"), b"x").unwrap();
    let fl = tmp.path().join("links.fl");
    let store = format!("dir://{}", tmp.path().join("store").display());
    let pack = |json: bool| {
        let out = tmp.path().join(if json { "json.fl" } else { "links.fl" });
        let mut cmd = zos();
        cmd.args(["flist", "pack"]).arg(&src).arg("-o").arg(out);
        if json {
            cmd.arg("--json");
        }
        ok(cmd.args(["--store", &store]))
    };
    let packed: serde_json::Value = serde_json::from_str(&pack(true)).unwrap();
    let text = pack(false);
    let info: serde_json::Value =
        serde_json::from_str(&ok(zos().args(["flist", "inspect", "--json"]).arg(&fl))).unwrap();
    assert_eq!(info["hardlinks"], 2);
    assert_eq!(packed["blocks"], 7, "{packed}");
    assert_eq!(info["blocks"], packed["blocks"], "{info}");
    assert_eq!(info["unique_blocks"], 4, "{info}");

    // The text outputs name the same notion with the same number.
    assert!(
        text.contains("blocks: 7 in files (hardlinks counted once)"),
        "{text}"
    );
    let inspected = ok(zos().args(["flist", "inspect"]).arg(&fl));
    assert!(
        inspected.contains("blocks: 7 in files (hardlinks counted once), 4 distinct"),
        "{inspected}"
    );
    let verified = ok(zos().args(["flist", "verify"]).arg(&fl));
    assert!(verified.contains("4 distinct blocks checked"), "{verified}");
}

#[test]
fn ls_shows_major_and_minor_of_device_nodes() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for (name, kind, major, minor) in [("null", "c", "1", "3"), ("loop9", "b", "7", "9")] {
        assert!(Command::new("mknod")
            .arg(src.join(name))
            .args([kind, major, minor])
            .status()
            .unwrap()
            .success());
    }
    std::fs::write(src.join("file"), b"twelve bytes").unwrap();
    let fl = pack(&src, tmp.path(), "dev.fl");

    let listing = ok(zos().args(["flist", "ls"]).arg(&fl));
    let line = |name: &str| {
        listing
            .lines()
            .find(|l| l.ends_with(&format!(" {name}")))
            .unwrap_or_else(|| panic!("no {name} in {listing}"))
            .to_owned()
    };
    // `ls -l` style: "major, minor" in the size column, right-aligned like sizes.
    assert!(line("null").starts_with('c'), "{listing}");
    assert!(line("null").contains("       1, 3 "), "{listing}");
    assert!(line("loop9").starts_with('b'), "{listing}");
    assert!(line("loop9").contains("       7, 9 "), "{listing}");
    assert!(line("file").contains("         12 "), "{listing}");

    let json: serde_json::Value =
        serde_json::from_str(&ok(zos().args(["flist", "ls", "--json"]).arg(&fl))).unwrap();
    let entry = |name: &str| {
        json.as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {json}"))
            .clone()
    };
    assert_eq!(
        (
            entry("null")["major"].clone(),
            entry("null")["minor"].clone()
        ),
        (1.into(), 3.into())
    );
    assert_eq!(
        (
            entry("loop9")["major"].clone(),
            entry("loop9")["minor"].clone()
        ),
        (7.into(), 9.into())
    );
    assert!(entry("file").get("major").is_none(), "{json}");
    assert_eq!(entry("file")["size"], 12);
}

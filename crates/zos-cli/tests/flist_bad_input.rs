//! End-to-end: hostile or damaged input. Every case must end in a clear error (exit 1, never a
//! panic), with nothing written outside the target and nothing half-written inside it.

mod common;

use common::*;
use std::path::Path;
use zos_flist::{FlistWriter, Inode, Route};

const DIR: u32 = libc::S_IFDIR | 0o755;
const FILE: u32 = libc::S_IFREG | 0o644;
const LINK: u32 = libc::S_IFLNK | 0o777;

fn node(parent: u64, name: &[u8], mode: u32) -> Inode {
    Inode {
        parent,
        name: name.to_vec(),
        mode,
        mtime: 1_600_000_000,
        ..Inode::default()
    }
}

/// Writes a hand-made flist: a root plus `entries` (parents refer to earlier inos, root = 1).
fn craft(path: &Path, store: &Path, entries: &[Inode]) {
    let w = FlistWriter::create(path).unwrap();
    w.add_route(&Route {
        start: 0,
        end: 255,
        url: format!("dir://{}", store.display()),
    })
    .unwrap();
    w.add_inode(&node(0, b"/", DIR)).unwrap();
    for e in entries {
        w.add_inode(e).unwrap();
    }
    w.finish().unwrap();
}

/// Unpacks and expects a refusal mentioning `expect`; checks no target and no staging remain.
fn refused(fl: &Path, work: &Path, expect: &str) {
    let target = work.join("target");
    let before: Vec<_> = std::fs::read_dir(work)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let err = fails(zos().args(["flist", "unpack"]).arg(fl).arg(&target));
    assert!(err.contains(expect), "expected {expect:?} in: {err}");
    assert!(!target.exists(), "target must not be created");
    let after: Vec<_> = std::fs::read_dir(work)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before, after, "nothing left behind in {}", work.display());
}

#[test]
fn names_with_slash_or_dotdot_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let cases: [(&[u8], &str); 4] = [
        (b"../escaped", "name contains '/'"),
        (b"..", "name is . or .."),
        (b".", "name is . or .."),
        (b"", "empty name"),
    ];
    for (i, (name, reason)) in cases.iter().enumerate() {
        let fl = tmp.path().join(format!("bad{i}.fl"));
        craft(
            &fl,
            &tmp.path().join("store"),
            &[node(1, b"ok", DIR), node(2, name, FILE)],
        );
        refused(&fl, &work, reason);
    }
    assert!(!tmp.path().join("escaped").exists());
}

#[test]
fn entries_under_a_symlink_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    let victim = tmp.path().join("victim");
    std::fs::create_dir(&work).unwrap();
    std::fs::create_dir(&victim).unwrap();
    let mut link = node(1, b"etc", LINK);
    link.link_target = Some(victim.as_os_str().as_encoded_bytes().to_vec());
    let fl = tmp.path().join("through-link.fl");
    craft(
        &fl,
        &tmp.path().join("store"),
        &[link.clone(), node(2, b"passwd", FILE)],
    );
    refused(&fl, &work, "which is not a directory");

    // The same name twice: first a symlink out, then a directory "through" it.
    let fl = tmp.path().join("twice.fl");
    craft(
        &fl,
        &tmp.path().join("store"),
        &[link, node(1, b"etc", DIR), node(3, b"passwd", FILE)],
    );
    refused(&fl, &work, "names this path twice");
    assert_eq!(
        std::fs::read_dir(&victim).unwrap().count(),
        0,
        "nothing written through the link"
    );
}

#[test]
fn absolute_symlinks_are_recreated_but_never_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let victim = tmp.path().join("victim-file");
    std::fs::write(&victim, b"untouched").unwrap();
    let mut link = node(1, b"link", LINK);
    link.link_target = Some(victim.as_os_str().as_encoded_bytes().to_vec());
    link.mtime = 1_500_000_000;
    let fl = tmp.path().join("abs.fl");
    craft(&fl, &tmp.path().join("store"), &[link]);
    let out = tmp.path().join("out");
    ok(zos().args(["flist", "unpack"]).arg(&fl).arg(&out));
    assert_eq!(std::fs::read_link(out.join("link")).unwrap(), victim);
    assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
    // The link's own time was set, not its target's.
    let m = std::fs::symlink_metadata(out.join("link")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::mtime(&m), 1_500_000_000);
}

fn packed(tmp: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let src = tmp.join("src");
    std::fs::create_dir_all(src.join("data")).unwrap();
    std::fs::write(src.join("data/blob"), noise(1_200_000, 3)).unwrap();
    let store = tmp.join("store");
    let fl = tmp.join("app.fl");
    ok(zos()
        .args(["flist", "pack"])
        .arg(&src)
        .arg("-o")
        .arg(&fl)
        .arg(format!("--store=dir://{}", store.display())));
    (fl, store)
}

#[test]
fn corrupt_and_missing_blocks_are_named_never_returned() {
    let tmp = tempfile::tempdir().unwrap();
    let (fl, store) = packed(tmp.path());
    let flist = zos_flist::Flist::open(&fl).unwrap();
    let blob = flist.resolve("/data/blob").unwrap();
    let blocks = flist.blocks(blob.ino).unwrap();
    assert_eq!(blocks.len(), 3);
    let path_of = |i: usize| {
        let id = blocks[i].id_hex();
        store.join(&id[..2]).join(&id)
    };

    // Flip one byte of block 1.
    let mut bytes = std::fs::read(path_of(1)).unwrap();
    bytes[100] ^= 0x20;
    std::fs::write(path_of(1), &bytes).unwrap();
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let id1 = blocks[1].id_hex();
    refused(&fl, &work, &format!("data/blob: block 1 ({id1})"));
    let err = fails(zos().args(["flist", "cat"]).arg(&fl).arg("/data/blob"));
    assert!(err.contains(&id1) && err.contains("corrupt block"), "{err}");

    // Delete block 2 as well: verify lists both and fails.
    std::fs::remove_file(path_of(2)).unwrap();
    let out = zos().args(["flist", "verify"]).arg(&fl).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains(&format!("BAD data/blob block 1 ({id1})")),
        "{report}"
    );
    assert!(
        report.contains(&format!("BAD data/blob block 2 ({})", blocks[2].id_hex())),
        "{report}"
    );
    assert!(report.contains("block not found"), "{report}");
    assert!(report.contains("2 missing or corrupt"), "{report}");
}

#[test]
fn damaged_metadata_files_are_refused_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let (fl, _) = packed(tmp.path());
    let whole = std::fs::read(&fl).unwrap();
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();

    let truncated = tmp.path().join("truncated.fl");
    std::fs::write(&truncated, &whole[..whole.len() / 2]).unwrap();
    let garbage = tmp.path().join("garbage.fl");
    std::fs::write(&garbage, noise(40_000, 5)).unwrap();
    let empty = tmp.path().join("empty.fl");
    std::fs::write(&empty, b"").unwrap();
    let text = tmp.path().join("text.fl");
    std::fs::write(&text, b"this is not a database\n").unwrap();
    let wrong = tmp.path().join("wrong-schema.fl");
    let status = std::process::Command::new("python3")
        .args(["-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('create table inode(a,b)'); c.commit()"])
        .arg(&wrong)
        .status()
        .unwrap();
    assert!(status.success());

    for bad in [&truncated, &garbage, &empty, &text, &wrong] {
        let name = bad.display().to_string();
        refused(bad, &work, &format!("{name}: not a usable flist"));
        for cmd in [
            &["inspect"][..],
            &["ls"],
            &["verify"],
            &["cat", "/data/blob"],
        ] {
            let err = fails(zos().arg("flist").arg(cmd[0]).arg(bad).args(&cmd[1..]));
            assert!(
                err.contains("not a usable flist"),
                "{cmd:?} on {name}: {err}"
            );
        }
    }
    let err = fails(
        zos()
            .args(["flist", "inspect"])
            .arg(tmp.path().join("absent.fl")),
    );
    assert!(
        err.contains("absent.fl: not a usable flist: No such file"),
        "{err}"
    );
}

#[test]
fn block_list_shorter_than_the_size_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut file = node(1, b"short", FILE);
    file.size = 2_000_000;
    let fl = tmp.path().join("short.fl");
    craft(&fl, &tmp.path().join("store"), &[file]);
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    refused(
        &fl,
        &work,
        "size 2000000 needs 4 blocks but the flist lists 0",
    );
}

#[test]
fn unpack_refuses_a_non_empty_target_and_pack_a_missing_source() {
    let tmp = tempfile::tempdir().unwrap();
    let (fl, _) = packed(tmp.path());
    let full = tmp.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("keep"), b"mine").unwrap();
    let err = fails(zos().args(["flist", "unpack"]).arg(&fl).arg(&full));
    assert!(err.contains("not empty"), "{err}");
    assert_eq!(std::fs::read(full.join("keep")).unwrap(), b"mine");

    let err = fails(
        zos()
            .args(["flist", "pack"])
            .arg(tmp.path().join("nope"))
            .args(["-o", "x.fl", "--store", "dir:///tmp/x"]),
    );
    assert!(err.contains("nope"), "{err}");
    let err = fails(zos().args(["flist", "pack"]).arg(tmp.path()).args([
        "-o",
        "x.fl",
        "--store",
        "/no/scheme",
    ]));
    assert!(err.contains("invalid store URL"), "{err}");
}

//! End-to-end: `zos-bench flist` at a tiny scale, measuring the real `zos` of this build,
//! prints both tables with their floors.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The `zos` binary beside `zos-bench`, where zos-bench looks for it. Cargo builds only this
/// package's binaries for its tests, so build zos into the same target dir and profile (a
/// no-op when it is fresh, e.g. under `cargo test --workspace`).
fn zos_beside_bench() -> PathBuf {
    let bench = Path::new(env!("CARGO_BIN_EXE_zos-bench"));
    let profile_dir = bench.parent().expect("zos-bench has a parent dir");
    let target_dir = profile_dir.parent().expect("the profile dir has a parent");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(other) => other,
        None => panic!("unexpected target dir {}", profile_dir.display()),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "-p",
            "zos-cli",
            "--bin",
            "zos",
            "--profile",
            profile,
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .status()
        .expect("spawn cargo build -p zos-cli");
    assert!(status.success(), "cargo build -p zos-cli failed: {status}");
    let zos = profile_dir.join("zos");
    assert!(zos.is_file(), "{} was not built", zos.display());
    zos
}

#[test]
fn bench_prints_a_table_with_its_floor() {
    let zos = zos_beside_bench();
    let tmp = tempfile::tempdir().unwrap();
    // The same lookup the users get: no --zos, no ZOS_BIN, the zos beside zos-bench.
    let out = Command::new(env!("CARGO_BIN_EXE_zos-bench"))
        .env_remove("ZOS_BIN")
        .args(["flist", "--scale", "0.005", "--dir"])
        .arg(tmp.path().join("bench"))
        .output()
        .expect("spawn zos-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "zos-bench flist (measuring {}) failed: {}\nstdout: {stdout}",
        zos.display(),
        String::from_utf8_lossy(&out.stderr),
    );
    let out = stdout;
    for row in [
        "cp -a",
        "pack",
        "unpack",
        "store size",
        "pack (1% changed)",
        "target met",
    ] {
        assert!(out.contains(row), "missing {row:?} in:\n{out}");
    }
    // The mount table may only be skipped where FUSE cannot be used at all.
    let fuse = Path::new("/dev/fuse").exists()
        && zos_testkit::have("fusermount3")
        && zos_testkit::is_root();
    if fuse || !out.contains("mount table skipped:") {
        for row in [
            "cold read",
            "warm read",
            "find + stat",
            "ls -f",
            "ls -l",
            "lazy start",
            "warm read / local throughput",
        ] {
            assert!(out.contains(row), "missing {row:?} in:\n{out}");
        }
    }
}

#[test]
fn a_missing_zos_is_named_with_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-zos");
    let out = Command::new(env!("CARGO_BIN_EXE_zos-bench"))
        .arg("--zos")
        .arg(&missing)
        .args(["flist", "--scale", "0.005"])
        .output()
        .expect("spawn zos-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
    assert!(
        stderr.contains("cargo build --release -p zos-cli"),
        "{stderr}"
    );
}

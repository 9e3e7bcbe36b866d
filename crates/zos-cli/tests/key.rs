//! `zos key …` and the client commands' checks that run before any node is contacted: key
//! files, unreachable nodes, and deployment files that do not parse. No node is started.

mod common;

use common::{fails, ok, zos};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// `zos` with no key or node from the caller's environment.
fn clean_zos(home: &Path) -> Command {
    let mut cmd = zos();
    cmd.env_remove("ZOS_KEY")
        .env_remove("ZOS_NODE")
        .env_remove("XDG_CONFIG_HOME")
        .env("HOME", home);
    cmd
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn key_new_makes_a_private_key_and_never_overwrites_it() {
    let dir = tempfile::tempdir().unwrap();
    // Missing parent directories are created.
    let key = dir.path().join("a/b/key.pem");
    let out = ok(clean_zos(dir.path()).args(["key", "new", "-o"]).arg(&key));
    assert_eq!(mode(&key), 0o600);
    assert!(out.contains(&key.display().to_string()), "{out}");

    let shown = ok(clean_zos(dir.path())
        .args(["key", "show", "--key"])
        .arg(&key));
    let public = shown.trim();
    assert_eq!(public.len(), 64, "{shown}");
    assert!(public.bytes().all(|b| b.is_ascii_hexdigit()), "{shown}");
    assert!(
        out.contains(public),
        "key new printed {out}, key show {public}"
    );

    let before = std::fs::read(&key).unwrap();
    let err = fails(clean_zos(dir.path()).args(["key", "new", "-o"]).arg(&key));
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read(&key).unwrap(), before, "the key was replaced");
}

#[test]
fn key_new_uses_the_config_directory_by_default() {
    let dir = tempfile::tempdir().unwrap();
    ok(clean_zos(dir.path()).args(["key", "new"]));
    let key = dir.path().join(".config/zos/key.pem");
    assert_eq!(mode(&key), 0o600);
    let home_key = ok(clean_zos(dir.path()).args(["key", "show"]));

    let xdg = dir.path().join("xdg");
    ok(clean_zos(dir.path())
        .env("XDG_CONFIG_HOME", &xdg)
        .args(["key", "new"]));
    assert_eq!(mode(&xdg.join("zos/key.pem")), 0o600);
    let xdg_key = ok(clean_zos(dir.path())
        .env("XDG_CONFIG_HOME", &xdg)
        .args(["key", "show"]));
    assert_ne!(home_key, xdg_key);

    // ZOS_KEY names the key like --key does.
    let by_env = ok(clean_zos(dir.path())
        .env("ZOS_KEY", &key)
        .args(["key", "show"]));
    assert_eq!(by_env, home_key);
}

#[test]
fn a_key_others_can_read_is_used_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    ok(clean_zos(dir.path()).args(["key", "new", "-o"]).arg(&key));
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = clean_zos(dir.path())
        .args(["key", "show", "--key"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning") && stderr.contains("chmod 600"),
        "{stderr}"
    );
}

#[test]
fn a_missing_key_points_at_zos_key_new() {
    let dir = tempfile::tempdir().unwrap();
    let err = fails(clean_zos(dir.path()).args(["ps"]));
    let default = dir.path().join(".config/zos/key.pem");
    assert!(
        err.contains(&format!("no key at {}", default.display())),
        "{err}"
    );
    assert!(err.contains("make one with `zos key new`"), "{err}");

    let missing = dir.path().join("none.pem");
    let err = fails(clean_zos(dir.path()).args(["ps", "--key"]).arg(&missing));
    assert!(
        err.contains("no key at") && err.contains("zos key new"),
        "{err}"
    );
}

#[test]
fn an_unreachable_node_is_a_clean_error() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    ok(clean_zos(dir.path()).args(["key", "new", "-o"]).arg(&key));
    let err = fails(
        clean_zos(dir.path())
            .args(["ps", "--node", "unix:///nonexistent.sock", "--key"])
            .arg(&key),
    );
    assert!(
        err.contains("cannot reach the node at unix:///nonexistent.sock"),
        "{err}"
    );
    assert!(err.contains("is `zos node run` running?"), "{err}");

    // The environment names the node like --node does.
    let err = fails(
        clean_zos(dir.path())
            .env("ZOS_NODE", "unix:///nonexistent.sock")
            .args(["node", "info", "--key"])
            .arg(&key),
    );
    assert!(err.contains("cannot reach the node"), "{err}");
}

#[test]
fn deploy_rejects_bad_files_before_contacting_a_node() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    ok(clean_zos(dir.path()).args(["key", "new", "-o"]).arg(&key));
    let deploy = |name: &str, text: &str| {
        let file = dir.path().join(name);
        std::fs::write(&file, text).unwrap();
        fails(
            clean_zos(dir.path())
                .args(["deploy", "--node", "unix:///nonexistent.sock", "--key"])
                .arg(&key)
                .arg(&file),
        )
    };

    let err = deploy(
        "bad.yaml",
        "name: app\nworkloads:\n  - name: web\n    type: zmachine\n    \
         data: { flist: app.fl, memory: 12X }\n",
    );
    assert!(err.contains("bad.yaml"), "{err}");
    assert!(err.contains("workloads[0].data.memory"), "{err}");
    assert!(!err.contains("cannot reach"), "{err}");

    let err = deploy(
        "type.yaml",
        "name: app\nworkloads:\n  - name: web\n    type: kubernetes\n    data: {}\n",
    );
    assert!(
        err.contains("workloads[0].type") && err.contains("kubernetes"),
        "{err}"
    );

    let err = deploy(
        "bad.json",
        r#"{"name": "app", "workloads": [{"name": "d", "type": "zmount", "data": {"size": "x"}}]}"#,
    );
    assert!(err.contains("workloads[0].data.size"), "{err}");

    // Parses, but breaks a rule: caught by validation, still before the node.
    let err = deploy(
        "small.yaml",
        "name: app\nworkloads:\n  - name: web\n    type: zmachine\n    \
         data: { flist: app.fl, memory: 1M }\n",
    );
    assert!(
        err.contains("small.yaml") && err.contains("memory"),
        "{err}"
    );
    assert!(!err.contains("cannot reach"), "{err}");
}

#[test]
fn logs_needs_name_slash_workload() {
    let dir = tempfile::tempdir().unwrap();
    let err = fails(clean_zos(dir.path()).args(["logs", "app"]));
    assert!(err.contains("NAME/WORKLOAD"), "{err}");
}

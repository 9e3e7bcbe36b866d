//! End-to-end: `zos kube` against a real node, real VMs and the real private network, with a
//! stand-in for a k3s image (no k3s image can be fetched here): busybox and two short
//! scripts that honour the same environment contract. The master listens on 6443 and
//! records each worker that joins with the right token; workers find the master through
//! K3S_URL and join with K3S_TOKEN. The cluster that runs is made of an image the node pulls
//! from a registry (Debian's docker-registry on loopback), as a user's k3s image would be.

mod common;
mod node_common;

use common::{fails, ok};
use node_common::Node;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The stand-in's entrypoint and the master's connection handler (shared with zos-bench).
const STANDIN: &str = include_str!("../../zos-bench/k3s-standin/standin");
const JOIN: &str = include_str!("../../zos-bench/k3s-standin/join");

/// The stand-in's root (busybox, `/standin`, `/join`) in the node's dir, made once.
fn standin_root(node: &Node) -> PathBuf {
    let root = node.dir().join("standin-root");
    if root.exists() {
        return root;
    }
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "cat", "mkdir", "printf", "echo", "nc", "sleep", "grep", "wc",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    for (name, text) in [("standin", STANDIN), ("join", JOIN)] {
        let path = root.join(name);
        std::fs::write(&path, text).unwrap();
        let mut perms = std::fs::metadata(&path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&path, perms).unwrap();
    }
    root
}

/// The stand-in as an flist in the node's flist dir, its entrypoint `/standin`.
fn standin_flist(node: &Node) -> PathBuf {
    let fl = common::pack(&standin_root(node), node.dir(), "k3s-standin.fl");
    ok(common::zos().args(["flist", "tag"]).arg(&fl).args([
        "set",
        r#"zos.image={"entrypoint":["/standin"],"env":["PATH=/bin"],"os":"linux","architecture":"amd64"}"#,
    ]));
    fl
}

/// The stand-in as an image in a registry on loopback (Debian's docker-registry, filled by
/// skopeo), as a user brings a k3s image: its reference.
fn standin_image(node: &Node) -> (common::Server, String) {
    let layout = node.dir().join("standin-layout");
    common::oci_image(
        &layout,
        &standin_root(node),
        serde_json::json!({ "Entrypoint": ["/standin"], "Env": ["PATH=/bin"] }),
        "amd64",
    );
    let registry = common::registry(node.dir(), None);
    let image = format!("docker://127.0.0.1:{}/test/k3s-standin:1", registry.port);
    ok(std::process::Command::new("skopeo")
        .args(["--insecure-policy", "copy", "-q", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:1", layout.display()))
        .arg(&image));
    (registry, image)
}

/// What `cmd` prints in machine `workload` of cluster `name`.
fn exec(node: &Node, name: &str, workload: &str, cmd: &str) -> String {
    let target = format!("{name}/{workload}");
    let out = common::output(
        node.cli("alice", &["exec"])
            .args([&target, "--", "sh", "-c", cmd]),
    );
    assert!(
        out.status.success(),
        "exec {cmd:?} in {target}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The workers the master recorded, sorted, once `want` of them joined (or after 2 minutes).
fn joined(node: &Node, name: &str, want: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = exec(
            node,
            name,
            "master1",
            "cat /mydisk/joined 2>/dev/null; true",
        );
        let mut names: Vec<String> = text.lines().map(str::to_string).collect();
        names.sort();
        names.dedup();
        if names.len() >= want || Instant::now() > deadline {
            return names;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The consoles of `workloads`, for a failure's message.
fn consoles(node: &Node, name: &str, workloads: &[&str]) -> String {
    let mut text = String::new();
    for w in workloads {
        let out = common::output(&mut node.cli("alice", &["logs", &format!("{name}/{w}")]));
        text += &format!("--- {w}:\n{}\n", String::from_utf8_lossy(&out.stdout));
    }
    text
}

#[test]
fn a_cluster_is_made_joined_scaled_and_removed_with_a_reachable_kubeconfig() {
    if !common::is_root()
        || !common::have("qemu-system-x86_64")
        || !common::have("docker-registry")
        || !common::have("skopeo")
    {
        return;
    }
    // The registry is on loopback.
    let node = Node::start("allow_store_nets = [\"127.0.0.0/8\"]");
    let fl = standin_flist(&node);
    let fl = fl.to_str().unwrap();
    let (_registry, image) = standin_image(&node);
    let small = ["--memory", "128M", "--disk", "100M"];

    // Bad input: refused before anything is made.
    let err = fails(
        node.cli(
            "alice",
            &["kube", "create", "bad", "--flist", fl, "--token", "no"],
        )
        .args(small),
    );
    assert!(err.contains("6 to 15 letters and digits"), "{err}");
    let err = fails(&mut node.cli("alice", &["kube", "scale", "nothing", "--workers", "2"]));
    assert!(err.contains("no cluster named nothing"), "{err}");
    let out = common::output(
        node.cli(
            "alice",
            &["kube", "create", "bad", "--flist", fl, "--workers=-1"],
        )
        .args(small),
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(!ok(&mut node.cli("alice", &["ps"])).contains("bad"));

    // A master and two workers of the image the node pulls: both join with the token, over
    // the private network.
    ok(node
        .cli(
            "alice",
            &[
                "kube",
                "create",
                "demo",
                "--workers",
                "2",
                "--image",
                &image,
            ],
        )
        .args(small));
    assert_eq!(
        joined(&node, "demo", 2),
        ["worker1", "worker2"],
        "{}",
        consoles(&node, "demo", &["master1", "worker1", "worker2"])
    );
    let get = ok(&mut node.cli("alice", &["get", "demo"]));
    assert!(get.contains("K3S_TOKEN (sealed)"), "{get}");
    let ls = ok(&mut node.cli("alice", &["kube", "ls"]));
    assert!(
        ls.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()[..4] == ["demo", "1", "2", "3/3"]),
        "{ls}"
    );

    // The kubeconfig points at the master's API as published on the node, which answers.
    let config = ok(&mut node.cli("alice", &["kube", "kubeconfig", "demo"]));
    assert!(
        config.contains("server: https://127.0.0.1:6443"),
        "{config}"
    );
    assert!(
        config.contains("certificate-authority-data: U1RBTkQtSU4="),
        "{config}"
    );
    assert!(std::net::TcpStream::connect("127.0.0.1:6443").is_ok());

    // Scaling adds exactly the new worker and leaves the others running as they were.
    let boot = |w: &str| exec(&node, "demo", w, "cat /tmp/boot-id");
    let before = (boot("master1"), boot("worker1"), boot("worker2"));
    assert!(!before.1.trim().is_empty(), "no boot id: {before:?}");
    ok(&mut node.cli("alice", &["kube", "scale", "demo", "--workers", "3"]));
    assert_eq!(joined(&node, "demo", 3), ["worker1", "worker2", "worker3"]);
    assert_eq!(
        (boot("master1"), boot("worker1"), boot("worker2")),
        before,
        "a kept cluster node was restarted"
    );
    ok(&mut node.cli("alice", &["kube", "scale", "demo", "--workers", "1"]));
    let get = ok(&mut node.cli("alice", &["get", "demo"]));
    assert!(get.contains("worker1") && !get.contains("worker2") && !get.contains("worker3"));
    assert_eq!(boot("worker1"), before.1, "worker1 was restarted");
    let refused = exec(
        &node,
        "demo",
        "master1",
        "cat /mydisk/refused 2>/dev/null; true",
    );
    assert!(refused.trim().is_empty(), "joins refused: {refused}");

    // A master that never opens 6443 (an image that only sleeps) is reported with its
    // console, and nothing of it is left.
    let idle = node.dir().join("idle.fl");
    std::fs::copy(&node.fl, &idle).unwrap();
    ok(common::zos().args(["flist", "tag"]).arg(&idle).args([
        "set",
        r#"zos.image={"entrypoint":["/bin/sh","-c","echo idle-master; exec sleep 100000"],"os":"linux","architecture":"amd64"}"#,
    ]));
    let out = common::output(
        node.cli(
            "alice",
            &[
                "kube",
                "create",
                "broken",
                "--workers",
                "0",
                "--timeout",
                "20s",
                "--flist",
                idle.to_str().unwrap(),
            ],
        )
        .args(small),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("did not answer") && err.contains("removed again"),
        "{err}"
    );
    assert!(
        err.contains("idle-master"),
        "the master's console expected: {err}"
    );
    assert!(!ok(&mut node.cli("alice", &["ps"])).contains("broken"));

    // An image without the contract's entrypoint (plain busybox, no image config) is refused
    // by the node, named, and nothing of the cluster is left.
    let err = fails(
        node.cli(
            "alice",
            &[
                "kube",
                "create",
                "noentry",
                "--workers",
                "1",
                "--flist",
                node.fl.to_str().unwrap(),
            ],
        )
        .args(small),
    );
    assert!(
        err.contains("no entrypoint") && err.contains("removed again"),
        "{err}"
    );
    assert!(!ok(&mut node.cli("alice", &["ps"])).contains("noentry"));

    ok(&mut node.cli("alice", &["kube", "rm", "demo"]));
    assert!(!ok(&mut node.cli("alice", &["kube", "ls"])).contains("demo"));
}

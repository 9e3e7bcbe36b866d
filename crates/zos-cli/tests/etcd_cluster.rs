//! End-to-end: real clustered software on zmachines (issue 15, the HA-master shape under a
//! k3s cluster). Three zmachines from the Debian image (scripts/build-debian-image) run
//! Debian's `etcd-server` with their data dirs on zmounts and form one etcd cluster over the
//! deployment's private network; a key written through one member is read through another;
//! member 2's QEMU is killed (`kill -9`) and the node restarts the machine (its restart
//! policy) as a new QEMU; a file on its zmount holds its etcd down after that restart (under
//! TCG the VM is back within seconds, too soon to write without it), and meanwhile the other
//! two keep quorum and take a write; let go, the member comes back with its data dir and its
//! member ID, catches up, and serves both keys from its own endpoint.
//!
//! TCG is slow, so etcd runs with a generous heartbeat (500 ms) and election timeout (5 s),
//! and every wait is bounded; failures show the machines' consoles.

mod common;
mod node_common;

use common::ok;
use node_common::Node;
use serde_json::{json, Value};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

/// The deployment's name.
const DEPLOYMENT: &str = "etcd";
/// The members: machine name (also the etcd name) and its address on the private network.
const MEMBERS: [(&str, &str); 3] = [
    ("etcd1", "10.31.1.11"),
    ("etcd2", "10.31.1.12"),
    ("etcd3", "10.31.1.13"),
];
const ETCDCTL: &str = "/usr/bin/etcdctl --command-timeout=30s";

/// The Debian image as an flist in the node's flist dir, its blocks reachable through the
/// node's allowed store dir (hard links of the image cache's store, routes rewritten).
fn debian(node: &Node) -> PathBuf {
    let fl = common::debian_image(node.dir());
    let routes = ok(common::zos().args(["flist", "store"]).arg(&fl));
    let store = node.dir().join("store");
    std::fs::create_dir_all(&store).unwrap();
    // Each route is `RANGE=URL`.
    for url in routes
        .split_whitespace()
        .filter_map(|r| r.split_once('=').map(|(_, url)| url))
        .filter(|url| url.starts_with("dir://"))
    {
        let from = url.trim_start_matches("dir://");
        ok(std::process::Command::new("cp").args([
            "-al",
            &format!("{from}/."),
            store.to_str().unwrap(),
        ]));
        ok(common::zos()
            .args(["flist", "store"])
            .arg(&fl)
            .args(["rm", url]));
    }
    ok(common::zos()
        .args(["flist", "store"])
        .arg(&fl)
        .args(["add", &format!("dir://{}", store.display())]));
    fl
}

/// Member `name`'s etcd command line: its peer and client URLs on its private address (and
/// loopback for clients), its data on its zmount.
fn etcd_command(name: &str, ip: &str) -> String {
    let cluster: Vec<String> = MEMBERS
        .iter()
        .map(|(n, a)| format!("{n}=http://{a}:2380"))
        .collect();
    format!(
        "echo etcd-member-{name}; \
         if [ -e /data/hold ]; then echo etcd-held; while [ -e /data/hold ]; do sleep 1; done; fi; \
         exec /usr/bin/etcd --name {name} --data-dir /data/etcd \
         --listen-peer-urls http://{ip}:2380 --initial-advertise-peer-urls http://{ip}:2380 \
         --listen-client-urls http://{ip}:2379,http://127.0.0.1:2379 \
         --advertise-client-urls http://{ip}:2379 \
         --initial-cluster {} --initial-cluster-state new --initial-cluster-token zos-etcd \
         --heartbeat-interval 500 --election-timeout 5000",
        cluster.join(",")
    )
}

fn deployment_file(node: &Node, fl: &Path) -> PathBuf {
    let mut workloads = vec![json!({ "name": "lan", "type": "network",
        "data": { "ip_range": "10.31.0.0/16", "subnet": "10.31.1.0/24" } })];
    for (name, ip) in MEMBERS {
        workloads.push(json!({ "name": format!("{name}_data"), "type": "zmount",
            "data": { "size": "256M" } }));
        workloads.push(json!({ "name": name, "type": "zmachine", "data": {
            "flist": fl.display().to_string(), "memory": "512M", "root_size": "256M",
            "entrypoint": ["/bin/sh", "-c", etcd_command(name, ip)],
            "mounts": [{ "name": format!("{name}_data"), "mountpoint": "/data" }],
            "network": { "interfaces": [{ "network": "lan", "ip": ip }] } } }));
    }
    let d = json!({ "name": DEPLOYMENT, "workloads": workloads });
    node.write_yaml("etcd.yaml", &d.to_string())
}

/// The consoles of every member, for a failure's message.
fn consoles(node: &Node) -> String {
    let mut text = String::new();
    for (w, _) in MEMBERS {
        let out = common::output(&mut node.cli("alice", &["logs", &format!("{DEPLOYMENT}/{w}")]));
        text += &format!(
            "--- console of {w}:\n{}{}\n",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    text
}

/// Runs `cmd` (a shell line) in `machine` through `zos exec`, killed after 90 s (a guest
/// that stopped answering must fail the test, not hang it).
fn exec(node: &Node, machine: &str, cmd: &str) -> Output {
    let target = format!("{DEPLOYMENT}/{machine}");
    let mut child = node
        .cli("alice", &["exec"])
        .args([&target, "--", "/bin/sh", "-c", cmd])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read both pipes on threads, so a chatty command cannot block on a full pipe.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stdout.read_to_end(&mut b);
        b
    });
    let err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stderr.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "exec {cmd:?} in {machine} did not end within 90 s\n{}",
                consoles(node)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// `exec`'s stdout, failing the test (with the consoles) if it fails.
fn exec_ok(node: &Node, machine: &str, cmd: &str) -> String {
    let out = exec(node, machine, cmd);
    assert!(
        out.status.success(),
        "exec {cmd:?} in {machine}: {}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        consoles(node)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd` in `machine` every 2 s until `done` holds for what it printed (stdout and
/// stderr), or fails the test after `secs` with the last answer and the consoles.
fn exec_until(
    node: &Node,
    machine: &str,
    cmd: &str,
    secs: u64,
    what: &str,
    done: impl Fn(&Output, &str) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let out = exec(node, machine, cmd);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if done(&out, &text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {secs} s; `{cmd}` in {machine} last said:\n{text}\n{}",
            consoles(node)
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// The members `etcdctl member list` prints: (ID, name) of each started one.
fn members(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(", ").collect();
            (f.len() >= 3 && f[1] == "started").then(|| (f[0].to_string(), f[2].to_string()))
        })
        .collect();
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

/// The member ID the local endpoint of `machine` reports (`endpoint status`).
fn own_id(node: &Node, machine: &str) -> String {
    let text = exec_ok(
        node,
        machine,
        &format!("{ETCDCTL} --endpoints http://127.0.0.1:2379 endpoint status"),
    );
    text.split(", ").nth(1).unwrap_or_default().to_string()
}

/// The QEMU process id of `machine` (its VM dir's qemu.pid), if it has one.
fn qemu_pid(node: &Node, machine: &str) -> Option<i32> {
    let vm = node
        .entries("vms")
        .into_iter()
        .find(|v| v.ends_with(&format!("-{machine}")))?;
    std::fs::read_to_string(node.data().join("vms").join(vm).join("qemu.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// The result (state and message) of workload `name`.
fn result_of(node: &Node, name: &str) -> Value {
    let d: Value =
        serde_json::from_str(&ok(&mut node.cli("alice", &["get", DEPLOYMENT, "--json"]))).unwrap();
    d["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == name)
        .map(|w| w["result"].clone())
        .unwrap_or(Value::Null)
}

#[test]
fn three_etcd_members_keep_quorum_and_data_when_one_vm_is_killed_and_restarted() {
    // mmdebstrap builds the Debian image when it is not cached yet.
    if !common::is_root() || !common::have("qemu-system-x86_64") || !common::have("mmdebstrap") {
        return;
    }
    let started = Instant::now();
    let node = Node::start("");
    let fl = debian(&node);
    let file = deployment_file(&node, &fl);
    ok(node.cli("alice", &["deploy"]).arg(&file));
    let d = node.settled("alice", DEPLOYMENT);
    for w in d["workloads"].as_array().unwrap() {
        assert_eq!(
            w["result"]["state"],
            "ok",
            "{}: {d}\n{}",
            w["name"],
            consoles(&node)
        );
    }
    eprintln!("deployed in {:?}", started.elapsed());

    // 1. The cluster forms over the private network: three started members, all healthy.
    let health = exec_until(
        &node,
        "etcd1",
        &format!("{ETCDCTL} --endpoints http://127.0.0.1:2379 endpoint health --cluster"),
        300,
        "the cluster's health",
        |out, text| {
            out.status.success()
                && MEMBERS
                    .iter()
                    .all(|(_, ip)| text.contains(&format!("http://{ip}:2379 is healthy")))
        },
    );
    eprintln!("cluster healthy in {:?}:\n{health}", started.elapsed());
    let list = exec_ok(
        &node,
        "etcd3",
        &format!("{ETCDCTL} --endpoints http://127.0.0.1:2379 member list"),
    );
    let listed = members(&list);
    assert_eq!(
        listed.iter().map(|m| m.1.as_str()).collect::<Vec<_>>(),
        ["etcd1", "etcd2", "etcd3"],
        "{list}"
    );
    for (name, ip) in MEMBERS {
        assert!(
            list.lines()
                .any(|l| l.contains(&format!(", {name}, http://{ip}:2380, http://{ip}:2379"))),
            "{name} is not on its private address: {list}"
        );
    }
    let id2 = own_id(&node, "etcd2");
    assert_eq!(
        Some(&id2),
        listed.iter().find(|m| m.1 == "etcd2").map(|m| &m.0),
        "{list}"
    );

    // 2. Written through member 1, read through member 3 (from member 1, over the network:
    // a linearizable read that member 3 serves, and member 3's own local copy).
    exec_ok(
        &node,
        "etcd1",
        &format!("{ETCDCTL} --endpoints http://127.0.0.1:2379 put before-kill value-1"),
    );
    let got = exec_ok(
        &node,
        "etcd1",
        &format!(
            "{ETCDCTL} --endpoints http://{}:2379 get before-kill --print-value-only",
            MEMBERS[2].1
        ),
    );
    assert_eq!(got.trim(), "value-1");
    exec_until(
        &node,
        "etcd3",
        &format!(
            "{ETCDCTL} --endpoints http://127.0.0.1:2379 get before-kill --print-value-only --consistency=s"
        ),
        60,
        "member 3's own copy of before-kill",
        |_, text| text.trim() == "value-1",
    );

    // On member 2's zmount: a marker (is the disk kept?) and the hold file its start script
    // waits on, so that after the node restarts its VM, etcd stays down until the test has
    // written with two members only (a TCG VM is back within seconds, too soon otherwise).
    let marker = format!("marker-{}", std::process::id());
    exec_ok(
        &node,
        "etcd2",
        &format!("echo {marker} >/data/marker && touch /data/hold && sync"),
    );

    // 3. Member 2's QEMU killed; the node restarts it (a new QEMU), its etcd held down.
    let pid = qemu_pid(&node, "etcd2").expect("etcd2 has a QEMU");
    assert!(alive(pid), "etcd2's QEMU {pid} is not running");
    // SAFETY: a plain kill(2) of a process this test's node started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(Instant::now() < deadline, "QEMU {pid} outlived SIGKILL");
        std::thread::sleep(Duration::from_millis(50));
    }
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(120);
    let new_pid = loop {
        if let Some(p) = qemu_pid(&node, "etcd2").filter(|p| *p != pid && alive(*p)) {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "etcd2 was not restarted: {}\n{}\n{}",
            result_of(&node, "etcd2"),
            consoles(&node),
            node.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "etcd2's QEMU {pid} killed, {new_pid} started {:?} later",
        killed.elapsed()
    );
    // The node's record of it follows (written once the restart returned).
    let deadline = Instant::now() + Duration::from_secs(30);
    let result = loop {
        let result = result_of(&node, "etcd2");
        if result["message"]
            .as_str()
            .is_some_and(|m| m.contains("restarted"))
        {
            break result;
        }
        assert!(
            Instant::now() < deadline,
            "etcd2's result does not say it was restarted: {result}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(result["state"], "ok", "{result}");
    assert!(result["data"]["restarts"].as_u64() >= Some(1), "{result}");
    // The restarted guest runs its start script, which waits on the hold file.
    let console =
        |node: &Node| ok(&mut node.cli("alice", &["logs", &format!("{DEPLOYMENT}/etcd2")]));
    let deadline = Instant::now() + Duration::from_secs(120);
    while console(&node).matches("etcd-held").count() < 1 {
        assert!(
            Instant::now() < deadline,
            "the restarted etcd2 did not reach its hold: {}",
            consoles(&node)
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // With member 2 down, a write through member 1 succeeds: two of three are a quorum
    // (retried: when member 2 led, a write waits for the others' election, or fails with
    // "request timed out, possibly due to previous leader failure", as etcd clients see).
    exec_until(
        &node,
        "etcd1",
        &format!("{ETCDCTL} --endpoints http://127.0.0.1:2379 put while-down value-2"),
        120,
        "a write through member 1 with member 2 down",
        |out, text| out.status.success() && text.trim() == "OK",
    );
    let health = exec(
        &node,
        "etcd1",
        &format!("{ETCDCTL} --endpoints http://127.0.0.1:2379 endpoint health --cluster"),
    );
    let health = format!(
        "{}{}",
        String::from_utf8_lossy(&health.stdout),
        String::from_utf8_lossy(&health.stderr)
    );
    for (name, ip) in MEMBERS {
        let state = if name == "etcd2" {
            "unhealthy"
        } else {
            "healthy"
        };
        assert!(
            health.contains(&format!("http://{ip}:2379 is {state}")),
            "{name} should be {state} while member 2 is held: {health}"
        );
    }
    eprintln!("written with etcd2 down; health then:\n{health}");

    // 4. Member 2 let go: it rejoins with its data and member ID, and catches up.
    exec_ok(&node, "etcd2", "rm /data/hold");
    let both = exec_until(
        &node,
        "etcd2",
        &format!(
            "{ETCDCTL} --endpoints http://127.0.0.1:2379 get --consistency=s --print-value-only before-kill && \
             {ETCDCTL} --endpoints http://127.0.0.1:2379 get --consistency=s --print-value-only while-down"
        ),
        300,
        "member 2 serving both keys after its restart",
        |out, text| out.status.success() && text.lines().collect::<Vec<_>>() == ["value-1", "value-2"],
    );
    assert_eq!(both.trim(), "value-1\nvalue-2");
    assert_eq!(
        own_id(&node, "etcd2"),
        id2,
        "etcd2 came back as another member"
    );
    let list = exec_ok(
        &node,
        "etcd2",
        &format!("{ETCDCTL} --endpoints http://127.0.0.1:2379 member list"),
    );
    assert_eq!(members(&list), listed, "{list}");
    // It restarted from its kept data dir, not from an empty one (a member's ID follows from
    // its peer URLs and the cluster token, so the ID alone would not tell): the zmount kept
    // what was written on it, and etcd said it restarted the member from its WAL.
    assert_eq!(exec_ok(&node, "etcd2", "cat /data/marker").trim(), marker);
    let console = console(&node);
    assert_eq!(
        console.matches("etcd-member-etcd2").count(),
        2,
        "two boots of etcd2 expected: {console}"
    );
    assert!(
        console.contains(&format!("restarting member {id2}"))
            || console.contains("restarting local member"),
        "etcd2 did not restart from its data dir: {console}"
    );
    exec_until(
        &node,
        "etcd1",
        &format!("{ETCDCTL} --endpoints http://127.0.0.1:2379 endpoint health --cluster"),
        120,
        "the cluster's health after the restart",
        |out, text| {
            out.status.success()
                && MEMBERS
                    .iter()
                    .all(|(_, ip)| text.contains(&format!("http://{ip}:2379 is healthy")))
        },
    );
    eprintln!("done in {:?}", started.elapsed());
    ok(&mut node.cli("alice", &["rm", DEPLOYMENT]));
}

//! End-to-end: a real `zos node run` (unix socket and TCP), driven by the `zos` CLI and by
//! raw signed HTTP requests. Deploy, update, delete with real VMs and disks; bad and forged
//! requests; two owners; concurrent deploys; a `kill -9` of the node mid-provisioning; crash
//! restarts.

mod common;
mod node_common;

use common::{fails, oci_layout, ok, zos};
use node_common::{raw_http, signed_json, unix_now, Node};
use std::io::{BufRead, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use zos_types::{Deployment, Keypair, RequestAuth};

const DISK_ONLY: &str =
    "name: NAME\nworkloads:\n  - name: data\n    type: zmount\n    data: { size: 32M }\n";

#[test]
fn deploy_update_and_delete_a_container_with_a_disk() {
    if !common::is_root() || !common::have("qemu-system-x86_64") {
        return;
    }
    let mut node = Node::start("");
    let yaml = node.write_yaml(
        "hello.yaml",
        "name: hello\nworkloads:\n  - name: data\n    type: zmount\n    data: { size: 32M }\n  - name: web\n    type: zmachine\n    data:\n      flist: FLIST\n      cmd: [sh, -c, 'echo hello-from-zos $GREETING; df -m /data | tail -1; exec sleep 600']\n      env: { GREETING: hi }\n      memory: 256M\n      mounts: [{ name: data, mountpoint: /data }]\n",
    );
    // The event stream, over TCP, from before the deploy.
    let events_log = node.dir().join("events.txt");
    let mut events = zos()
        .args(["events", "--json", "--node"])
        .arg(format!("https://{}", node.tcp))
        .arg("--key")
        .arg(node.key("alice"))
        .stdout(std::fs::File::create(&events_log).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let out = ok(node.cli("alice", &["deploy"]).arg(&yaml));
    assert!(out.contains("web") && out.contains("ok"), "{out}");
    let _ = events.kill();
    let _ = events.wait();
    let events = std::fs::read_to_string(&events_log).unwrap();
    assert!(
        events
            .lines()
            .any(|l| l.contains("\"workload\":\"web\"") && l.contains("\"state\":\"ok\"")),
        "no event for web becoming ok:\n{events}"
    );

    // The container's output, through the API.
    let deadline = Instant::now() + Duration::from_secs(120);
    let logs = loop {
        let logs = ok(&mut node.cli("alice", &["logs", "hello/web"]));
        if logs.contains("/data") || Instant::now() > deadline {
            break logs;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(logs.contains("hello-from-zos hi"), "{logs}");
    assert!(logs.contains("/data"), "the zmount is not mounted: {logs}");
    // Following the log of a running VM streams what is there and stays open.
    let mut follow = node
        .cli("alice", &["logs", "hello/web", "-f"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = follow.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("hello-from-zos") {
        let n = stdout.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "the followed log ended: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        follow.try_wait().unwrap().is_none(),
        "logs -f exited while the VM runs"
    );
    let _ = follow.kill();
    let _ = follow.wait();

    let ps = ok(&mut node.cli("alice", &["ps"]));
    assert!(ps.contains("hello"), "{ps}");
    let info: serde_json::Value =
        serde_json::from_str(&ok(&mut node.cli("alice", &["node", "info", "--json"]))).unwrap();
    // Guest RAM plus what QEMU and virtiofsd take beside it.
    assert_eq!(
        info["used"]["memory"],
        zos_vmm::limits::memory_demand(256 << 20),
        "{info}"
    );
    assert_eq!(info["used"]["cpus"], 1, "{info}");
    // The node runs in its own cgroup, zos/node; its VM's QEMU in a group beside it.
    let node_pid = node.pid();
    let cgroups = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let node_cg = cgroups(node_pid);
    assert!(
        node_cg.lines().any(|l| l.ends_with("/zos/node")),
        "{node_cg}"
    );
    let vms: Vec<PathBuf> = std::fs::read_dir(node.data().join("vms"))
        .unwrap()
        .map(|e| e.unwrap().path().join("qemu.pid"))
        .filter(|p| p.exists())
        .collect();
    assert_eq!(vms.len(), 1, "{vms:?}");
    let qemu: u32 = std::fs::read_to_string(&vms[0])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let qemu_cg = cgroups(qemu);
    assert!(qemu_cg.contains("/zos/vm-"), "{qemu_cg}");

    // Another owner sees nothing of it and cannot touch it.
    let ps = ok(&mut node.cli("bob", &["ps"]));
    assert!(!ps.contains("hello"), "{ps}");
    let err = fails(&mut node.cli("bob", &["get", "hello"]));
    assert!(err.contains("no deployment named"), "{err}");
    fails(&mut node.cli("bob", &["rm", "hello"]));
    let err = fails(&mut node.cli("bob", &["logs", "hello/web"]));
    assert!(err.contains("no deployment named"), "{err}");

    // Update: the zmachine changes (replaced), the zmount is left as it is.
    let before: serde_json::Value =
        serde_json::from_str(&ok(&mut node.cli("alice", &["get", "hello", "--json"]))).unwrap();
    let data_result = before["workloads"][0]["result"].clone();
    std::fs::write(
        &yaml,
        std::fs::read_to_string(&yaml)
            .unwrap()
            .replace("GREETING: hi", "GREETING: there"),
    )
    .unwrap();
    ok(node.cli("alice", &["deploy"]).arg(&yaml));
    let after = node.settled("alice", "hello");
    assert_eq!(after["version"], 1);
    assert_eq!(after["workloads"][0]["version"], 0, "{after}");
    assert_eq!(
        after["workloads"][0]["result"], data_result,
        "the zmount was touched"
    );
    assert_eq!(after["workloads"][1]["version"], 1);
    let web = &after["workloads"][1]["result"];
    assert_eq!(web["state"], "ok", "{after}");
    assert!(
        web["message"].as_str().unwrap().contains("replaced"),
        "{web}"
    );
    assert_eq!(node.entries("vms").len(), 1);

    // Delete: nothing left, the deployment listed as deleted.
    let out = ok(&mut node.cli("alice", &["rm", "hello"]));
    assert!(out.contains("removed"), "{out}");
    let gone: serde_json::Value =
        serde_json::from_str(&ok(&mut node.cli("alice", &["get", "hello", "--json"]))).unwrap();
    for w in gone["workloads"].as_array().unwrap() {
        assert_eq!(w["result"]["state"], "deleted", "{gone}");
    }
    assert!(node.entries("vms").is_empty(), "{:?}", node.entries("vms"));
    assert!(
        node.entries("disks").is_empty(),
        "{:?}",
        node.entries("disks")
    );
    assert!(node.mounts().is_empty(), "{:?}", node.mounts());
    let ps = ok(&mut node.cli("alice", &["ps"]));
    assert!(!ps.contains("hello"), "{ps}");
    let ps = ok(&mut node.cli("alice", &["ps", "--all"]));
    assert!(ps.contains("hello") && ps.contains("deleted"), "{ps}");
    let info: serde_json::Value =
        serde_json::from_str(&ok(&mut node.cli("alice", &["node", "info", "--json"]))).unwrap();
    assert_eq!(info["used"]["memory"], 0, "{info}");

    // A node that stops ends its event streams cleanly, and the client says why.
    let mut events = node
        .cli("alice", &["events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // An event seen on the stream shows it is open before the node is stopped.
    let last = node.write_yaml(
        "last.yaml",
        "name: last\nworkloads:\n  - name: d\n    type: zmount\n    data: { size: 16M }\n",
    );
    ok(node.cli("alice", &["deploy"]).arg(&last));
    let mut lines = std::io::BufReader::new(events.stdout.take().unwrap()).lines();
    let seen = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("last"));
    assert!(seen.is_some(), "no event for the deployment on the stream");
    let status = node.terminate();
    assert!(status.success(), "node exit {status}:\n{}", node.log());
    assert!(!node.socket().exists(), "a stopped node leaves no socket");
    // The rest of the stream (the deployment's other events) ends with the node.
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().all(|l| l.contains("last")), "{rest:?}");
    let out = events.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "zos events: {err}");
    assert!(err.contains("the node ended the event stream"), "{err}");
}

#[test]
fn forged_stale_replayed_and_oversized_requests_are_refused() {
    if !common::is_root() || !common::have("qemu-system-x86_64") {
        return;
    }
    let node = Node::start("");
    let (alice, bob) = (node.keypair("alice"), node.keypair("bob"));

    // Unsigned, signed by the wrong key, tampered after signing.
    let mut d = node.deployment("alice", &DISK_ONLY.replace("NAME", "x"));
    let (status, body) = node.http(
        None,
        "POST",
        "/v1/deployments",
        &serde_json::to_vec(&d).unwrap(),
    );
    assert_eq!(status, 401, "{body}");
    let json = signed_json(&mut d.clone(), &bob);
    let (status, body) = node.http(None, "POST", "/v1/deployments", &json);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains(&bob.public().to_string()), "{body}");
    let mut tampered: serde_json::Value =
        serde_json::from_slice(&signed_json(&mut d.clone(), &alice)).unwrap();
    tampered["workloads"][0]["data"]["size"] = serde_json::json!(1 << 30);
    let (status, body) = node.http(
        None,
        "POST",
        "/v1/deployments",
        tampered.to_string().as_bytes(),
    );
    assert_eq!(status, 401, "{body}");

    // Malformed JSON and an unknown workload type name what is wrong.
    let (status, body) = node.http(None, "POST", "/v1/deployments", b"{\"name\": 3}");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("name"), "{body}");
    let mut unknown: serde_json::Value =
        serde_json::from_slice(&signed_json(&mut d.clone(), &alice)).unwrap();
    unknown["workloads"][0]["type"] = serde_json::json!("gpu");
    let (status, body) = node.http(
        None,
        "POST",
        "/v1/deployments",
        unknown.to_string().as_bytes(),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("workloads[0].type") && body.contains("gpu"),
        "{body}"
    );

    // More memory than the node has free.
    let mut big = node.deployment(
        "alice",
        "name: big\nworkloads:\n  - name: vm\n    type: zmachine\n    data: { flist: FLIST, cmd: [sh], memory: 1000G }\n",
    );
    let (status, body) = node.http(
        None,
        "POST",
        "/v1/deployments",
        &signed_json(&mut big, &alice),
    );
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("memory"), "{body}");

    // Two concurrent deploys of one name: one wins, the other is told of the conflict.
    let json = signed_json(&mut d, &alice);
    let answers: Vec<(u16, String)> = std::thread::scope(|s| {
        let a = s.spawn(|| raw_http(&node.socket(), "POST", "/v1/deployments", None, &json));
        let b = s.spawn(|| raw_http(&node.socket(), "POST", "/v1/deployments", None, &json));
        vec![a.join().unwrap(), b.join().unwrap()]
    });
    let mut statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
    statuses.sort();
    assert_eq!(statuses, vec![201, 409], "{answers:?}");
    let conflict = &answers.iter().find(|(s, _)| *s == 409).unwrap().1;
    assert!(
        conflict.contains("exists") && conflict.contains("version 1"),
        "{conflict}"
    );
    node.settled("alice", "x");

    // Updates go one version at a time; an old version replayed is refused.
    let mut v1 = d.clone();
    v1.version = 1;
    v1.signatures.clear();
    let v1_json = signed_json(&mut v1, &alice);
    let (status, body) = node.http(None, "PUT", "/v1/deployments/x", &v1_json);
    assert_eq!(status, 200, "{body}");
    let (status, body) = node.http(None, "PUT", "/v1/deployments/x", &v1_json);
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("version 2"), "{body}");
    let (status, _) = node.http(None, "POST", "/v1/deployments", &json);
    assert_eq!(status, 409);

    // Reads: unsigned, stale, replayed, or of another owner's deployment.
    let (status, _) = node.http(None, "GET", "/v1/deployments/x", b"");
    assert_eq!(status, 401);
    let id = node.id();
    let stale = RequestAuth::sign(
        &alice,
        &id,
        "GET",
        "/v1/deployments/x",
        unix_now() - 600,
        b"",
    )
    .to_header();
    let (status, body) = raw_http(
        &node.socket(),
        "GET",
        "/v1/deployments/x",
        Some(&stale),
        b"",
    );
    assert_eq!(status, 401, "{body}");
    let fresh =
        RequestAuth::sign(&alice, &id, "GET", "/v1/deployments/x", unix_now(), b"").to_header();
    let (status, _) = raw_http(
        &node.socket(),
        "GET",
        "/v1/deployments/x",
        Some(&fresh),
        b"",
    );
    assert_eq!(status, 200);
    let (status, body) = raw_http(
        &node.socket(),
        "GET",
        "/v1/deployments/x",
        Some(&fresh),
        b"",
    );
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("already used"), "{body}");
    let (status, _) = node.http(Some("bob"), "GET", "/v1/deployments/x", b"");
    assert_eq!(status, 404);
    // Signed for another node (seen there, replayed here): refused, and said why.
    let elsewhere = Keypair::generate().public();
    let replayed = RequestAuth::sign(
        &alice,
        &elsewhere,
        "DELETE",
        "/v1/deployments/x",
        unix_now(),
        b"",
    )
    .to_header();
    let (status, body) = raw_http(
        &node.socket(),
        "DELETE",
        "/v1/deployments/x",
        Some(&replayed),
        b"",
    );
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("signed for node"), "{body}");
    let mut moved = node.deployment("alice", &DISK_ONLY.replace("NAME", "moved"));
    moved.node = elsewhere;
    let (status, body) = node.http(
        None,
        "POST",
        "/v1/deployments",
        &signed_json(&mut moved, &alice),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("signed for node"), "{body}");
    // The CLI signs for the node it is told to expect, and so fails on any other.
    let err = fails(&mut node.cli("alice", &["ps", "--node-id", &elsewhere.to_string()]));
    assert!(err.contains("signed for node"), "{err}");
    let ps = ok(&mut node.cli("alice", &["ps", "--node-id", &id.to_string()]));
    assert!(ps.contains('x'), "{ps}");
    let (status, _) = node.http(Some("bob"), "DELETE", "/v1/deployments/x", b"");
    assert_eq!(status, 404);
    // Bob cannot pass off a deployment as Alice's.
    let mut forged = node.deployment("alice", &DISK_ONLY.replace("NAME", "y"));
    let (status, _) = node.http(
        None,
        "POST",
        "/v1/deployments",
        &signed_json(&mut forged, &bob),
    );
    assert_eq!(status, 401);
    // Nor by naming himself the only signer of a deployment in her name.
    let mut squat = node.deployment("alice", &DISK_ONLY.replace("NAME", "y"));
    squat.signature_requirement = zos_types::SignatureRequirement::owner_only(&bob.public());
    let (status, body) = node.http(
        None,
        "POST",
        "/v1/deployments",
        &signed_json(&mut squat, &bob),
    );
    assert_eq!(status, 401, "{body}");
    assert!(
        body.contains("owner") && body.contains("required"),
        "{body}"
    );
    // A new deployment starts at version 0.
    let mut late = node.deployment("alice", &DISK_ONLY.replace("NAME", "late"));
    late.version = 5;
    late.workloads[0].version = 5;
    let (status, body) = node.http(
        None,
        "POST",
        "/v1/deployments",
        &signed_json(&mut late, &alice),
    );
    assert_eq!(status, 400, "{body}");
    // An flist from inside the node's data dir (where guests write their disks) is refused.
    std::fs::write(node.data().join("disks/evil.fl"), b"x").unwrap();
    let mut evil = node.deployment(
        "alice",
        &format!(
            "name: evil\nworkloads:\n  - name: vm\n    type: zmachine\n    data: {{ flist: {}, cmd: [sh] }}\n",
            node.data().join("disks/evil.fl").display()
        ),
    );
    let (status, body) = node.http(
        None,
        "POST",
        "/v1/deployments",
        &signed_json(&mut evil, &alice),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("data dir"), "{body}");
    let _ = std::fs::remove_file(node.data().join("disks/evil.fl"));
    // Only flists from the directories the node serves; and a request whose signatures fail
    // learns nothing of the host, whatever it names.
    let elsewhere = node.dir().parent().unwrap().join("elsewhere.fl");
    let yaml = format!(
        "name: far\nworkloads:\n  - name: vm\n    type: zmachine\n    data: {{ flist: {}, cmd: [sh] }}\n",
        elsewhere.display()
    );
    let mut far = node.deployment("alice", &yaml);
    let (status, body) = node.http(
        None,
        "POST",
        "/v1/deployments",
        &signed_json(&mut far, &alice),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("not in a directory this node serves"),
        "{body}"
    );
    let unsigned = node.deployment("alice", &yaml);
    let body = serde_json::to_vec(&unsigned).unwrap();
    let (status, answer) = node.http(None, "POST", "/v1/deployments", &body);
    assert_eq!(status, 401, "{answer}");
    assert!(!answer.contains("flist"), "{answer}");
    // And there is no route to anything else on the node.
    let (status, _) = node.http(Some("alice"), "POST", "/v1/exec", b"ls");
    assert_eq!(status, 404);
}

#[test]
fn a_deployment_owned_by_two_keys_is_sent_only_with_both_signatures() {
    if !common::is_root() || !common::have("qemu-system-x86_64") {
        return;
    }
    let node = Node::start("");
    let (alice, bob) = (node.keypair("alice").public(), node.keypair("bob").public());
    // Version 1 adds a disk to version 0.
    let shared = |disks: &[&str]| {
        let mut text = format!(
            "name: shared\nsignature_requirement:\n  weight_required: 2\n  requests:\n    \
             - {{ key: {alice}, weight: 1, required: true }}\n    \
             - {{ key: {bob}, weight: 1, required: true }}\nworkloads:\n"
        );
        for disk in disks {
            text.push_str(&format!(
                "  - name: {disk}\n    type: zmount\n    data: {{ size: 16M }}\n"
            ));
        }
        text
    };
    let yaml = node.write_yaml("shared.yaml", &shared(&["data"]));
    let signed = node.dir().join("shared.json");
    let bob_signs = || {
        zos()
            .arg("sign")
            .arg(&signed)
            .arg("--key")
            .arg(node.key("bob"))
            .output()
            .unwrap()
    };

    for (version, disks) in [(0, &["data"][..]), (1, &["data", "more"][..])] {
        std::fs::write(&yaml, shared(disks)).unwrap();
        // Alice alone cannot send it, and is told how to get the other signature.
        let err = fails(node.cli("alice", &["deploy"]).arg(&yaml));
        assert!(
            err.contains(&bob.to_string()) && err.contains("--sign-only"),
            "{err}"
        );
        let sign_only = format!("--sign-only={}", signed.display());
        ok(node.cli("alice", &["deploy", &sign_only]).arg(&yaml));
        let err = fails(node.cli("alice", &["deploy"]).arg(&signed));
        assert!(err.contains("zos sign"), "{err}");
        // Bob sees what he signs, and then it is complete.
        let out = bob_signs();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{said}");
        assert!(
            said.contains(&format!("signing shared version {version}"))
                && said.contains("data (zmount)")
                && said.contains("every signature needed"),
            "{said}"
        );
        let d: Deployment =
            Deployment::from_json_str(&std::fs::read_to_string(&signed).unwrap()).unwrap();
        assert_eq!(d.signatures.len(), 2);
        assert_eq!(d.version, version);
        // Either of them sends it, and follows it.
        let sender = if version == 0 { "bob" } else { "alice" };
        ok(node.cli(sender, &["deploy"]).arg(&signed));
        let got = node.settled("alice", "shared");
        assert_eq!(got["version"], version, "{got}");
        for (i, _) in disks.iter().enumerate() {
            assert_eq!(got["workloads"][i]["result"]["state"], "ok", "{got}");
        }
    }
    // A key that is not a signer has nothing to add.
    let stranger = node.dir().join("carol.pem");
    ok(zos().args(["key", "new", "-o"]).arg(&stranger));
    let err = fails(zos().arg("sign").arg(&signed).arg("--key").arg(&stranger));
    assert!(err.contains("not among the signers"), "{err}");
}

#[test]
fn a_node_killed_mid_provisioning_comes_back_consistent() {
    if !common::is_root() || !common::have("qemu-system-x86_64") {
        return;
    }
    let mut node = Node::start("");
    let alice = node.keypair("alice");
    let mut d = node.deployment(
        "alice",
        "name: k\nworkloads:\n  - name: data\n    type: zmount\n    data: { size: 32M }\n  - name: vm\n    type: zmachine\n    data:\n      flist: FLIST\n      cmd: [sh, -c, 'echo up; exec sleep 600']\n      mounts: [{ name: data, mountpoint: /data }]\n",
    );
    let (status, body) = node.http(
        None,
        "POST",
        "/v1/deployments",
        &signed_json(&mut d, &alice),
    );
    assert_eq!(status, 201, "{body}");
    // Kill it while it provisions: once the deployment's disk or VM exists on disk and a
    // workload is still `init`, so the kill is known to land mid-provisioning.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let started = !node.entries("disks").is_empty() || !node.entries("vms").is_empty();
        let (status, body) = node.http(Some("alice"), "GET", "/v1/deployments/k", b"");
        assert_eq!(status, 200, "{body}");
        let d: serde_json::Value = serde_json::from_str(&body).unwrap();
        let states: Vec<String> = d["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["result"]["state"].as_str().unwrap_or("").to_owned())
            .collect();
        let busy = states.iter().any(|s| s == "init");
        assert!(
            busy,
            "provisioning finished before the kill could land mid-way: {states:?}\n{}",
            node.log()
        );
        if started {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no disk or VM of the deployment appeared in 60 s: {states:?}\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    node.kill9();
    // Something nothing owns, left while the node is down.
    std::fs::write(node.data().join("disks/000000000000-stray.raw"), b"x").unwrap();

    node.boot();
    let d = node.settled("alice", "k");
    for w in d["workloads"].as_array().unwrap() {
        assert_eq!(w["result"]["state"], "ok", "{d}\n{}", node.log());
    }
    let vms = node.entries("vms");
    assert_eq!(vms.len(), 1, "{vms:?}");
    assert!(vms[0].ends_with("-vm"), "{vms:?}");
    let disks = node.entries("disks");
    assert_eq!(disks.len(), 1, "{disks:?}");
    assert!(disks[0].ends_with("-data.raw"), "{disks:?}");
    // What nothing owned was set aside whole, not deleted.
    let quarantine = node.data().join("quarantine");
    let batches = node.entries("quarantine");
    assert_eq!(batches.len(), 1, "{batches:?}");
    let stray = quarantine.join(&batches[0]).join("000000000000-stray.raw");
    assert_eq!(std::fs::read(&stray).unwrap(), b"x", "{}", stray.display());

    // Restarting again reattaches to the running VM rather than booting another.
    let pid_before =
        std::fs::read_to_string(node.data().join("vms").join(&vms[0]).join("qemu.pid")).unwrap();
    node.kill9();
    node.boot();
    let d = node.settled("alice", "k");
    assert_eq!(d["workloads"][1]["result"]["state"], "ok", "{d}");
    let pid_after =
        std::fs::read_to_string(node.data().join("vms").join(&vms[0]).join("qemu.pid")).unwrap();
    assert_eq!(pid_before, pid_after, "the VM was restarted");

    // A node that lost its database refuses to start, and touches none of what runs.
    node.kill9();
    let db = node.data().join("node.redb");
    let saved = node.dir().join("node.redb.saved");
    std::fs::rename(&db, &saved).unwrap();
    let out = zos()
        .args(["node", "run", "--config"])
        .arg(node.dir().join("node.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("refusing to start") && stderr.contains("Restore"),
        "{stderr}"
    );
    assert_eq!(node.entries("vms"), vms);
    assert_eq!(node.entries("disks"), disks);
    std::fs::rename(&saved, &db).unwrap();
    node.boot();
    let d = node.settled("alice", "k");
    assert_eq!(d["workloads"][1]["result"]["state"], "ok", "{d}");
    let pid_again =
        std::fs::read_to_string(node.data().join("vms").join(&vms[0]).join("qemu.pid")).unwrap();
    assert_eq!(
        pid_before, pid_again,
        "the VM was touched by the refused start"
    );

    ok(&mut node.cli("alice", &["rm", "k"]));
    assert!(node.entries("vms").is_empty());
    assert!(node.entries("disks").is_empty());
    assert!(node.mounts().is_empty(), "{:?}", node.mounts());
}

#[test]
fn a_crashing_zmachine_is_restarted_then_left_in_error_with_its_console() {
    if !common::is_root() || !common::have("qemu-system-x86_64") {
        return;
    }
    let node = Node::start("max_restarts = 1\n");
    let yaml = node.write_yaml(
        "crash.yaml",
        "name: crash\nworkloads:\n  - name: vm\n    type: zmachine\n    data: { flist: FLIST, cmd: [sh, -c, 'echo boom-$((1+2)); exit 3'] }\n",
    );
    ok(node.cli("alice", &["deploy", "--no-wait"]).arg(&yaml));
    let deadline = Instant::now() + Duration::from_secs(240);
    let result = loop {
        let d: serde_json::Value =
            serde_json::from_str(&ok(&mut node.cli("alice", &["get", "crash", "--json"]))).unwrap();
        let r = d["workloads"][0]["result"].clone();
        if r["state"] == "error" {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "never gave up: {d}\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let message = result["message"].as_str().unwrap();
    assert!(message.contains("failed 2 times"), "{message}");
    assert!(message.contains("exited (3)"), "{message}");
    assert!(message.contains("boom-3"), "no console tail: {message}");
    // It stays visible until its owner deletes it.
    let ps = ok(&mut node.cli("alice", &["ps"]));
    assert!(ps.contains("crash") && ps.contains("error"), "{ps}");
    ok(&mut node.cli("alice", &["rm", "crash"]));
    assert!(node.entries("vms").is_empty());
}

#[test]
fn a_zmachine_whose_flist_routes_to_a_store_the_policy_refuses_fails_with_the_reason() {
    if !common::is_root() || !common::have("qemu-system-x86_64") || !common::have("redis-server") {
        return;
    }
    // The node's config allows its test store dir (Node::boot), nothing on loopback.
    let node = Node::start("");
    let redis = common::redis();
    let root = node.dir().join("root");
    let pack_to = |name: &str, store: &str| {
        let fl = node.dir().join(name);
        ok(zos()
            .args(["flist", "pack", "-q"])
            .arg(&root)
            .arg("-o")
            .arg(&fl)
            .args(["--store", store]));
        fl
    };
    let by_address = format!("redis://127.0.0.1:{}", redis.port);
    let by_name = format!("redis://localhost:{}", redis.port);
    let elsewhere = node.dir().join("other-store");
    let flists = [
        pack_to("lo.fl", &by_address),
        pack_to("name.fl", &by_name),
        pack_to("dir.fl", &format!("dir://{}", elsewhere.display())),
    ];
    // Beside them, one whose store (Node::boot's dir) the config allows.
    let mut yaml = String::from(
        "name: stores\nworkloads:\n  - name: allowed\n    type: zmachine\n    data: { flist: FLIST, cmd: [sleep, '600'] }\n",
    );
    for (name, fl) in ["lo", "name", "dir"].iter().zip(&flists) {
        yaml.push_str(&format!(
            "  - name: {name}\n    type: zmachine\n    data: {{ flist: {}, memory: 64M }}\n",
            fl.display()
        ));
    }
    let gets = common::redis_calls(redis.port, "get");
    ok(node
        .cli("alice", &["deploy", "--no-wait"])
        .arg(node.write_yaml("stores.yaml", &yaml)));
    let settled = node.settled("alice", "stores");
    assert_eq!(
        settled["workloads"][0]["result"]["state"], "ok",
        "{settled}"
    );
    // Its mount process runs under the node's policy.
    let vm = settled["workloads"][0]["result"]["data"]["vm"]
        .as_str()
        .unwrap();
    let mount_args: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains("flist mount") && c.contains(vm))
        .collect();
    assert_eq!(mount_args.len(), 1, "{mount_args:?} {vm} {settled}");
    assert!(
        mount_args[0].contains("--restrict-stores --allow-store-dir")
            && mount_args[0].contains(&node.dir().join("store").display().to_string()),
        "{mount_args:?}"
    );
    let message = |i: usize| {
        let r = &settled["workloads"][i + 1]["result"];
        assert_eq!(r["state"], "error", "{settled}");
        r["message"].as_str().unwrap().to_string()
    };
    assert_eq!(
        message(0),
        format!(
            "store {by_address} refused by the node's store policy: 127.0.0.1 is a loopback \
             address; if the store is trusted, the node's operator can allow it with \
             allow_store_nets = [\"127.0.0.1/32\"] in the node config"
        )
    );
    let m = message(1);
    assert!(
        m.contains(&format!(
            "store {by_name} refused by the node's store policy"
        )) && m.contains("is a loopback address")
            && m.contains("allow_store_nets"),
        "{m}"
    );
    let m = message(2);
    assert!(
        m.contains("refused by the node's store policy")
            && m.contains("outside the allowed store directories")
            && m.contains(&format!("allow_store_dirs = [{:?}]", elsewhere)),
        "{m}"
    );
    // Refused before anything was made or reached: no VM, not one request to the store.
    assert_eq!(node.entries("vms"), vec![vm.to_string()]);
    assert_eq!(common::redis_calls(redis.port, "get"), gets);
}

#[test]
fn every_signer_reads_a_co_owned_deployment_and_each_owner_limit_refuses_by_name() {
    if !common::is_root() || !common::have("qemu-system-x86_64") {
        return;
    }
    let node = Node::start(
        "[limits]\ndeployments_per_owner = 2\nworkloads_per_deployment = 3\ndeployment_bytes = \"64K\"\nrequests_per_second = 5.0\nrequest_burst = 50\n",
    );
    let (alice, bob) = (node.keypair("alice").public(), node.keypair("bob").public());
    // Alice owns it; Bob is named a signer (not needed: Alice's signature is enough).
    let yaml = node.write_yaml(
        "shared.yaml",
        &format!(
            "name: shared\nsignature_requirement:\n  weight_required: 1\n  requests:\n    \
             - {{ key: {alice}, weight: 1, required: true }}\n    - {{ key: {bob}, weight: 1 }}\n\
             workloads:\n  - name: web\n    type: zmachine\n    data:\n      flist: FLIST\n      \
             cmd: [sh, -c, 'echo hello-co-owner; exec sleep 600']\n      memory: 256M\n"
        ),
    );
    // Bob's event stream, from before the deploy.
    let mut events = node
        .cli("bob", &["events"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    ok(node.cli("alice", &["deploy"]).arg(&yaml));
    let seen = std::io::BufReader::new(events.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("shared") && l.contains("web") && l.contains("ok"));
    let _ = events.kill();
    let _ = events.wait();
    assert!(
        seen.is_some(),
        "Bob saw no event of the deployment he co-owns"
    );
    // Bob gets it by name, lists it with its owner, and reads its console.
    let got = ok(&mut node.cli("bob", &["get", "shared"]));
    assert!(got.contains(&alice.to_string()), "{got}");
    let ps = ok(&mut node.cli("bob", &["ps"]));
    assert!(
        ps.contains("shared") && ps.contains(&alice.to_string()),
        "{ps}"
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let logs = loop {
        let logs = ok(&mut node.cli("bob", &["logs", "shared/web"]));
        if logs.contains("hello-co-owner") || Instant::now() > deadline {
            break logs;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(logs.contains("hello-co-owner"), "{logs}");
    // A key that is not a signer sees nothing of it, even naming the owner.
    let stranger = node.dir().join("carol.pem");
    ok(zos().args(["key", "new", "-o"]).arg(&stranger));
    let carol = zos_types::read_key_file(&stranger).unwrap();
    let path = format!("/v1/deployments/shared?owner={alice}");
    let auth = RequestAuth::sign(&carol, &node.id(), "GET", &path, unix_now(), b"").to_header();
    let (status, body) = raw_http(&node.socket(), "GET", &path, Some(&auth), b"");
    assert_eq!(status, 404, "{body}");
    // Nor may Bob remove it.
    let (status, body) = node.http(Some("bob"), "DELETE", "/v1/deployments/shared", b"");
    assert_eq!(status, 404, "{body}");
    // Bob's own deployment of that name is made as his (not an update of Alice's), and his
    // name then means his; Alice's he still reads by naming her.
    let own = node.write_yaml("own.yaml", &DISK_ONLY.replace("NAME", "shared"));
    ok(node.cli("bob", &["deploy"]).arg(&own));
    let mine = ok(&mut node.cli("bob", &["get", "shared", "--json"]));
    assert!(mine.contains(&format!("\"owner\": \"{bob}\"")), "{mine}");
    let path = format!("/v1/deployments/shared?owner={alice}");
    let (status, body) = node.http(Some("bob"), "GET", &path, b"");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"web\""), "{body}");

    // Limits: each refusal names its setting and value, with its status.
    let send = |user: &str, yaml: &str| {
        let mut d = node.deployment(user, yaml);
        let body = signed_json(&mut d, &node.keypair(user));
        node.http(Some(user), "POST", "/v1/deployments", &body)
    };
    let mut four = String::from("name: four\nworkloads:\n");
    for i in 0..4 {
        four.push_str(&format!(
            "  - name: d{i}\n    type: zmount\n    data: {{ size: 16M }}\n"
        ));
    }
    let (status, body) = send("alice", &four);
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("limits.workloads_per_deployment = 3"),
        "{body}"
    );
    let fat = format!(
        "{}description: {}\n",
        DISK_ONLY.replace("NAME", "fat"),
        "x".repeat(100_000)
    );
    let (status, body) = send("alice", &fat);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("limits.deployment_bytes = 64 KiB"), "{body}");
    let (status, body) = send("alice", &DISK_ONLY.replace("NAME", "two"));
    assert_eq!(status, 201, "{body}");
    let (status, body) = send("alice", &DISK_ONLY.replace("NAME", "three"));
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("limits.deployments_per_owner = 2"), "{body}");
    // Carol floods: she is refused with 429 once her bucket is empty; Alice is still served.
    let mut refused = None;
    for _ in 0..200 {
        let auth = RequestAuth::sign(
            &carol,
            &node.id(),
            "GET",
            "/v1/deployments",
            unix_now(),
            b"",
        )
        .to_header();
        let (status, body) = raw_http(&node.socket(), "GET", "/v1/deployments", Some(&auth), b"");
        if status == 429 {
            refused = Some(body);
            break;
        }
        assert_eq!(status, 200, "{body}");
    }
    let body = refused.expect("200 requests in a burst were all served");
    assert!(body.contains("limits.requests_per_second = 5"), "{body}");
    let (status, body) = node.http(Some("alice"), "GET", "/v1/deployments/two", b"");
    assert_eq!(status, 200, "{body}");
}

/// `zos logs TARGET` until it shows `want` (bounded); what it showed last.
fn logs_until(node: &Node, target: &str, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let logs = ok(&mut node.cli("alice", &["logs", target]));
        if logs.contains(want) || Instant::now() > deadline {
            return logs;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_zmachine_boots_an_flist_named_by_url_downloaded_once() {
    if !common::is_root() || !common::have("qemu-system-x86_64") || !common::have("python3") {
        return;
    }
    let node = Node::start("allow_store_nets = [\"127.0.0.0/8\"]");
    // A web server holding the flist (web/app.fl) and its blocks (store/), as a user
    // publishes them: the flist's route is changed to the http store.
    let web = node.dir().join("web");
    std::fs::create_dir_all(&web).unwrap();
    let fl = web.join("app.fl");
    std::fs::copy(&node.fl, &fl).unwrap();
    let log = node.dir().join("http.log");
    let server = common::http_server_logging(node.dir(), std::fs::File::create(&log).unwrap());
    let base = format!("http://127.0.0.1:{}", server.port);
    let dir_store = format!("dir://{}", node.dir().join("store").display());
    ok(zos()
        .args(["flist", "store"])
        .arg(&fl)
        .args(["rm", &dir_store]));
    ok(zos()
        .args(["flist", "store"])
        .arg(&fl)
        .args(["add", &format!("{base}/store")]));
    let sha = ok(Command::new("sha256sum").arg(&fl));
    let pin = format!("sha256:{}", sha.split_whitespace().next().unwrap());
    let url = format!("{base}/web/app.fl");
    let machine = |name: &str, url: &str, pin: Option<&str>| {
        format!(
            "  - name: {name}\n    type: zmachine\n    data:\n      flist: {url}\n{}      \
             cmd: [sh, -c, 'echo booted-from-url; exec sleep 600']\n      memory: 64M\n",
            pin.map(|p| format!("      flist_hash: {p}\n"))
                .unwrap_or_default()
        )
    };
    let wrong = format!("sha256:{}", "0".repeat(64));
    let yaml = format!(
        "name: byurl\nworkloads:\n{}{}{}{}",
        machine("pinned", &url, Some(&pin)),
        machine("again", &url, None),
        machine("wrongpin", &url, Some(&wrong)),
        machine("missing", &format!("{base}/web/gone.fl"), None),
    );
    ok(node
        .cli("alice", &["deploy", "--no-wait"])
        .arg(node.write_yaml("byurl.yaml", &yaml)));
    let d = node.settled("alice", "byurl");
    let result = |i: usize| d["workloads"][i]["result"].clone();
    for i in [0, 1] {
        assert_eq!(result(i)["state"], "ok", "{d}");
        assert_eq!(result(i)["data"]["flist_hash"], pin.as_str(), "{d}");
    }
    for name in ["byurl/pinned", "byurl/again"] {
        let logs = logs_until(&node, name, "booted-from-url");
        assert!(logs.contains("booted-from-url"), "{name}: {logs}");
    }
    // Two machines, one download (and one more to learn the wrong pin is wrong); the
    // blocks came from the http store.
    let gets = common::http_gets(&log);
    let flist_gets = gets.iter().filter(|g| g.as_str() == "web/app.fl").count();
    assert_eq!(flist_gets, 2, "{gets:?}");
    assert!(gets.iter().any(|g| g.starts_with("store/")), "{gets:?}");
    // Each failure stays in its workload's result, named.
    let m = result(2)["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        result(2)["state"] == "error" && m.contains("does not match flist_hash"),
        "{d}"
    );
    let m = result(3)["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        result(3)["state"] == "error" && m.contains("HTTP 404"),
        "{d}"
    );
    // A URL the node's store policy refuses is refused at admission, before any request.
    let out = fails(node.cli("alice", &["deploy"]).arg(node.write_yaml(
        "meta.yaml",
        &format!(
            "name: meta\nworkloads:\n{}",
            machine("m", "http://169.254.169.254/app.fl", None)
        ),
    )));
    assert!(
        out.contains("flist http://169.254.169.254/app.fl refused by the node's store policy"),
        "{out}"
    );
    ok(&mut node.cli("alice", &["rm", "byurl"]));
}

#[test]
fn a_zmachine_runs_an_image_the_node_pulls_once_for_all_who_ask() {
    if !common::is_root()
        || !common::have("qemu-system-x86_64")
        || !common::have("docker-registry")
        || !common::have("skopeo")
    {
        return;
    }
    let node = Node::start("allow_store_nets = [\"127.0.0.0/8\"]");
    let tmp = node.dir();
    let layer = oci_layout(
        &tmp.join("layout"),
        &tmp.join("root"),
        "echo image-ran-here; exec sleep 600",
        "amd64",
    );
    oci_layout(&tmp.join("arm"), &tmp.join("root"), "true", "arm64");
    let log = tmp.join("registry.log");
    let registry = common::registry(tmp, Some(&log));
    let image = format!("docker://127.0.0.1:{}/test/bb:1", registry.port);
    let arm = format!("docker://127.0.0.1:{}/test/arm:1", registry.port);
    for (layout, to) in [("layout", &image), ("arm", &arm)] {
        ok(Command::new("skopeo")
            .args(["--insecure-policy", "copy", "-q", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:1", tmp.join(layout).display()))
            .arg(to));
    }
    let yaml = |name: &str| {
        format!(
            "name: {name}\nworkloads:\n  - name: app\n    type: zmachine\n    data:\n      \
             image: {image}\n      memory: 64M\n"
        )
    };
    // Both owners' events, as they happen: the pull's progress among them (in the events of
    // whichever deployment did the pull).
    let events_log = tmp.join("events.log");
    let events_out = std::fs::File::create(&events_log).unwrap();
    let mut events: Vec<_> = ["alice", "bob"]
        .iter()
        .map(|user| {
            node.cli(user, &["events"])
                .stdout(events_out.try_clone().unwrap())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    // Two owners ask for one image at the same time.
    let mut sent = Vec::new();
    for (user, name) in [("alice", "img1"), ("bob", "img2")] {
        sent.push(
            node.cli(user, &["deploy", "--no-wait"])
                .arg(node.write_yaml(&format!("{name}.yaml"), &yaml(name)))
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    for mut s in sent {
        assert!(s.wait().unwrap().success());
    }
    for (user, name) in [("alice", "img1"), ("bob", "img2")] {
        let d = node.settled(user, name);
        let r = &d["workloads"][0]["result"];
        assert_eq!(r["state"], "ok", "{d}");
        let got = r["data"]["image"].as_str().unwrap_or_default();
        assert!(got.starts_with(&format!("{image}@sha256:")), "{d}");
        let deadline = Instant::now() + Duration::from_secs(240);
        let logs = loop {
            let logs = ok(&mut node.cli(user, &["logs", &format!("{name}/app")]));
            if logs.contains("image-ran-here") || Instant::now() > deadline {
                break logs;
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        assert!(logs.contains("image-ran-here"), "{name}: {logs}");
        // The image's own healthcheck runs: the machine turns healthy.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let d = node.settled(user, name);
            if d["workloads"][0]["result"]["message"] == "running (healthy)" {
                break;
            }
            assert!(Instant::now() < deadline, "never healthy: {d}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    for e in &mut events {
        let _ = e.kill();
        let _ = e.wait();
    }
    let seen = std::fs::read_to_string(&events_log).unwrap();
    assert!(seen.contains("pulling layer 1/1"), "{seen}");
    // One pull of the layer for both.
    let text = std::fs::read_to_string(&log).unwrap();
    let pulls = text
        .lines()
        .filter(|l| l.contains(&format!("GET /v2/test/bb/blobs/{layer}")))
        .count();
    assert_eq!(pulls, 1, "{text}");

    // What fails stays in the workload's result, named: no such image, another platform.
    let missing = format!("docker://127.0.0.1:{}/test/nothing:1", registry.port);
    for (name, reference, want) in [
        ("gone", &missing, "not found"),
        (
            "arm",
            &arm,
            "this image is for linux/arm64, not linux/amd64",
        ),
    ] {
        let d = node.deploy_settled("alice", &yaml(name).replace(&image, reference));
        let r = &d["workloads"][0]["result"];
        let m = r["message"].as_str().unwrap_or_default();
        assert!(
            r["state"] == "error"
                && m.starts_with(&format!("importing image {reference}"))
                && m.contains(want),
            "{d}"
        );
    }
    // A registry the store policy refuses is refused at admission.
    let out = fails(node.cli("alice", &["deploy"]).arg(node.write_yaml(
        "meta.yaml",
        &yaml("meta").replace(&image, "docker://169.254.169.254/x/y:1"),
    )));
    assert!(
        out.contains("image docker://169.254.169.254/x/y:1 refused by the node's store policy"),
        "{out}"
    );
}

/// `zos seal` of `value` through stdin, with `args` naming the node.
fn sealed(node: &Node, args: &[&str], value: &str) -> String {
    let mut child = node
        .cli("alice", &[&["seal"], args].concat())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), value.as_bytes()).unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A deployment whose machine has `TOKEN` in its secret_env and /run/secrets/token among its
/// files, both sealed as `armored`, and prints both.
fn secret_yaml(name: &str, armored: &str) -> String {
    let block =
        |indent: &str| -> String { armored.lines().map(|l| format!("{indent}{l}\n")).collect() };
    format!(
        "name: {name}\nworkloads:\n  - name: app\n    type: zmachine\n    data:\n      \
         flist: FLIST\n      memory: 64M\n      \
         cmd: [sh, -c, 'echo token=$TOKEN file=$(cat /run/secrets/token); exec sleep 600']\n      \
         files:\n        - path: /run/secrets/token\n          mode: \"0600\"\n          \
         sealed: true\n          content: |\n{}      \
         secret_env:\n        TOKEN: |\n{}",
        block("            "),
        block("          ")
    )
}

#[test]
fn a_sealed_secret_reaches_the_guest_env_and_nowhere_else() {
    if !common::is_root() || !common::have("qemu-system-x86_64") {
        return;
    }
    let node = Node::start("");
    let secret = format!("tok-{}", std::process::id() as u64 * 7919 + 123_456_789);
    let armored = sealed(&node, &[], &secret);
    assert!(
        armored.starts_with("-----BEGIN AGE ENCRYPTED FILE-----"),
        "{armored}"
    );
    assert!(!armored.contains(&secret));
    let events_log = node.dir().join("events.log");
    let mut events = node
        .cli("alice", &["events", "--json"])
        .stdout(std::fs::File::create(&events_log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = common::output(
        node.cli("alice", &["deploy"])
            .arg(node.write_yaml("secret.yaml", &secret_yaml("secret", &armored))),
    );
    assert!(out.status.success(), "{out:?}");
    let logs = logs_until(&node, "secret/app", "token=");
    assert!(
        logs.contains(&format!("token={secret} file={secret}")),
        "{logs}"
    );
    let get = ok(&mut node.cli("alice", &["get", "secret"]));
    assert!(get.contains("secrets: TOKEN (sealed)"), "{get}");
    let (status, api) = node.http(Some("alice"), "GET", "/v1/deployments/secret", b"");
    assert_eq!(status, 200);
    assert!(api.contains("BEGIN AGE ENCRYPTED FILE"), "{api}");
    let _ = events.kill();
    let _ = events.wait();
    // Nowhere but the guest: not in what the client printed, the API, events, the node's log
    // or its database file.
    let database = std::fs::read(node.data().join("node.redb")).unwrap();
    for (place, text) in [
        ("deploy's output", format!("{out:?}")),
        ("zos get", get),
        ("the API", api),
        ("events", std::fs::read_to_string(&events_log).unwrap()),
        ("the node's log", node.log()),
        (
            "the database",
            String::from_utf8_lossy(&database).into_owned(),
        ),
    ] {
        assert!(!text.contains(&secret), "the secret is in {place}");
    }
    assert!(!database.is_empty());

    // Sealed for another node: refused at admission, by name.
    let other = Keypair::generate().public().to_string();
    let foreign = sealed(&node, &["--node-id", &other], &secret);
    let err = fails(
        node.cli("alice", &["deploy"])
            .arg(node.write_yaml("foreign.yaml", &secret_yaml("foreign", &foreign))),
    );
    assert!(
        err.contains("secret_env \"TOKEN\": sealed for another key, not this node's"),
        "{err}"
    );
    assert!(!err.contains(&secret));
}

/// A deployment of a machine running `image`, with `auth` (YAML lines, indented for the
/// machine's data) added.
fn image_yaml(name: &str, image: &str, auth: &str) -> String {
    format!(
        "name: {name}\nworkloads:\n  - name: app\n    type: zmachine\n    data:\n      \
         image: {image}\n      memory: 64M\n{auth}"
    )
}

/// `registry_auth` lines for user `user` and the sealed password `armored`.
fn auth_yaml(user: &str, armored: &str) -> String {
    let block: String = armored
        .lines()
        .map(|l| format!("          {l}\n"))
        .collect();
    format!("      registry_auth:\n        username: {user}\n        password: |\n{block}")
}

/// Every file under `dir` (but large disk images) whose bytes hold `needle`.
fn files_holding(dir: &std::path::Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                stack.push(e.path());
            } else if meta.is_file() && meta.len() < 64 << 20 {
                let bytes = std::fs::read(e.path()).unwrap_or_default();
                if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    found.push(e.path());
                }
            }
        }
    }
    found
}

#[test]
fn a_private_image_is_pulled_with_sealed_credentials_and_only_for_those_who_have_them() {
    if !common::is_root()
        || !common::have("qemu-system-x86_64")
        || !common::have("docker-registry")
        || !common::have("skopeo")
        || !common::have("htpasswd")
    {
        return;
    }
    let node = Node::start("allow_store_nets = [\"127.0.0.0/8\"]");
    let tmp = node.dir();
    let layer = oci_layout(
        &tmp.join("layout"),
        &tmp.join("root"),
        "echo private-image-ran; exec sleep 600",
        "amd64",
    );
    let (user, password) = (
        "puller",
        format!("pw-{}", std::process::id() as u64 * 7919 + 987_654_321),
    );
    let log = tmp.join("registry.log");
    let registry = common::private_registry(tmp, Some(&log), user, &password);
    let image = format!("docker://127.0.0.1:{}/team/app:1", registry.port);
    ok(Command::new("skopeo")
        .args(["--insecure-policy", "copy", "-q", "--dest-tls-verify=false"])
        .args(["--dest-creds", &format!("{user}:{password}")])
        .arg(format!("oci:{}:1", tmp.join("layout").display()))
        .arg(&image));
    let armored = sealed(&node, &[], &password);
    let wrong = sealed(&node, &[], &format!("{password}-not"));
    let events_log = tmp.join("events.log");
    let events_out = std::fs::File::create(&events_log).unwrap();
    let mut events: Vec<_> = ["alice", "bob"]
        .iter()
        .map(|who| {
            node.cli(who, &["events", "--json"])
                .stdout(events_out.try_clone().unwrap())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();

    // With the sealed password: pulled and run.
    let out = common::output(node.cli("alice", &["deploy"]).arg(node.write_yaml(
        "priv.yaml",
        &image_yaml("priv", &image, &auth_yaml(user, &armored)),
    )));
    assert!(out.status.success(), "{out:?}\n{}", node.log());
    let logs = logs_until(&node, "priv/app", "private-image-ran");
    assert!(logs.contains("private-image-ran"), "{logs}");
    let get = ok(&mut node.cli("alice", &["get", "priv"]));
    assert!(
        get.contains(&format!("pull as: {user} (password sealed)")),
        "{get}"
    );

    // Another owner without credentials, or with a wrong password, is refused by the
    // registry, not served from the node's cache; the result says what to do.
    let result_of = |name: &str, auth: &str| {
        let d = node.deploy_settled("bob", &image_yaml(name, &image, auth));
        d["workloads"][0]["result"].clone()
    };
    let r = result_of("anon", "");
    let m = r["message"].as_str().unwrap_or_default();
    assert!(
        r["state"] == "error"
            && m.starts_with(&format!("importing image {image}"))
            && m.contains("the registry wants credentials")
            && m.contains("give the machine registry_auth"),
        "{r}"
    );
    let r = result_of("wrongpw", &auth_yaml(user, &wrong));
    let m = r["message"].as_str().unwrap_or_default();
    assert!(
        r["state"] == "error"
            && m.contains(&format!(
                "the registry refused the credentials of user \"{user}\""
            ))
            && m.contains("Fix the machine's registry_auth"),
        "{r}"
    );
    // With the right password, the other owner gets the image already imported: the
    // registry is asked for its manifest, its layer is not pulled again.
    let r = result_of("bobs", &auth_yaml(user, &armored));
    assert_eq!(r["state"], "ok", "{r}");
    assert!(
        r["data"]["image"]
            .as_str()
            .unwrap_or_default()
            .starts_with(&format!("{image}@sha256:")),
        "{r}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let pulls = text
        .lines()
        .filter(|l| l.contains(&format!("GET /v2/team/app/blobs/{layer}")))
        .count();
    assert_eq!(pulls, 1, "{text}");

    // Refused at admission: a password sealed for another node, or not sealed at all (and
    // then not echoed back).
    let other = Keypair::generate().public().to_string();
    let foreign = sealed(&node, &["--node-id", &other], &password);
    let err = fails(node.cli("bob", &["deploy"]).arg(node.write_yaml(
        "foreign.yaml",
        &image_yaml("foreign", &image, &auth_yaml(user, &foreign)),
    )));
    assert!(
        err.contains("registry_auth.password: sealed for another key, not this node's"),
        "{err}"
    );
    let plain = format!("      registry_auth: {{ username: {user}, password: {password} }}\n");
    let err2 = fails(
        node.cli("bob", &["deploy"])
            .arg(node.write_yaml("plain.yaml", &image_yaml("plain", &image, &plain))),
    );
    assert!(
        err2.contains("registry_auth.password is not sealed"),
        "{err2}"
    );

    for e in &mut events {
        let _ = e.kill();
        let _ = e.wait();
    }
    let (status, api) = node.http(Some("alice"), "GET", "/v1/deployments/priv", b"");
    assert_eq!(status, 200);
    assert!(api.contains("BEGIN AGE ENCRYPTED FILE"), "{api}");
    // The password is nowhere but in the pull: not in what the client printed, zos get, the
    // API, events, the node's log, nor any file of the node's (its database, its caches).
    for (place, text) in [
        ("deploy's output", format!("{out:?}")),
        ("zos get", get),
        ("the API", api),
        ("the refusals", format!("{err}\n{err2}")),
        ("events", std::fs::read_to_string(&events_log).unwrap()),
        ("the node's log", node.log()),
    ] {
        assert!(!text.contains(&password), "the password is in {place}");
    }
    for dir in [node.data(), tmp.join("cache")] {
        assert!(dir.is_dir(), "{}", dir.display());
        assert_eq!(files_holding(&dir, &password), Vec::<PathBuf>::new());
    }
    assert!(node.data().join("node.redb").is_file());
    for name in ["priv", "anon", "wrongpw", "bobs"] {
        let owner = if name == "priv" { "alice" } else { "bob" };
        ok(&mut node.cli(owner, &["rm", name]));
    }
}

#[test]
fn files_are_written_into_a_container_before_it_starts() {
    if !common::is_root() || !common::have("qemu-system-x86_64") {
        return;
    }
    let node = Node::start("");
    // Over an image's own /etc, one file executable and one not; the machine reads them back,
    // in the working directory and as the user the deployment gives (Kubernetes' workingDir
    // and runAsUser/runAsGroup).
    let yaml = "name: files\nworkloads:\n  - name: app\n    type: zmachine\n    data:\n      \
        flist: FLIST\n      memory: 64M\n      workdir: /opt\n      user: '1000:1001'\n      \
        files:\n        \
        - { path: /etc/app/config.toml, content: \"greeting = 'from-a-file'\\n\" }\n        \
        - { path: /opt/run.sh, content: \"echo ran-the-script\\n\", mode: \"0755\" }\n      \
        cmd: [sh, -c, 'cat /etc/app/config.toml; [ -x /etc/app/config.toml ] || echo not-exec; \
        echo \"in $(pwd) as $(id -u):$(id -g)\"; ./run.sh; exec sleep 600']\n";
    let d = node.deploy_settled("alice", yaml);
    assert_eq!(d["workloads"][0]["result"]["state"], "ok", "{d}");
    let logs = logs_until(&node, "files/app", "ran-the-script");
    for want in [
        "greeting = 'from-a-file'",
        "not-exec",
        "in /opt as 1000:1001",
        "ran-the-script",
    ] {
        assert!(logs.contains(want), "{want}: {logs}");
    }
    // A relative workdir or a user that is not one is refused at admission.
    let bad = yaml
        .replace("workdir: /opt", "workdir: opt")
        .replace("'1000:1001'", "'root:'");
    let err = fails(
        node.cli("alice", &["deploy"])
            .arg(node.write_yaml("bad.yaml", &bad.replace("name: files", "name: bad"))),
    );
    assert!(
        err.contains("workdir \"opt\" must be an absolute path")
            && err.contains("user \"root:\": give NAME, UID"),
        "{err}"
    );
}

#[test]
fn restart_policies_hold_and_deploy_reports_a_machine_that_does_not_stay_up() {
    if !common::is_root() || !common::have("qemu-system-x86_64") {
        return;
    }
    let node = Node::start("");
    let machine = |name: &str, restart: &str, script: &str| {
        format!(
            "name: {name}\nworkloads:\n  - name: app\n    type: zmachine\n    data:\n      \
             flist: FLIST\n      memory: 64M\n      restart: {restart}\n      \
             cmd: [sh, -c, '{script}']\n"
        )
    };
    // restart: never, a process that fails at once: `zos deploy` watches it end and fails,
    // naming it; the node leaves it in error.
    let err = fails(
        node.cli("alice", &["deploy", "--settle", "60s"])
            .arg(node.write_yaml(
                "never.yaml",
                &machine("never", "never", "echo boom; exit 3"),
            )),
    );
    assert!(
        err.contains("never: app did not stay up: exited (3)")
            && err.contains("zos logs never/app"),
        "{err}"
    );
    let d = node.settled("alice", "never");
    let r = &d["workloads"][0]["result"];
    assert!(
        r["state"] == "error" && r["message"].as_str().unwrap().contains("restart: never"),
        "{d}"
    );
    // restart: always, a process that ends cleanly: started again and again, never an error.
    ok(node
        .cli("alice", &["deploy", "--no-wait"])
        .arg(node.write_yaml(
            "always.yaml",
            &machine("always", "always", "echo tick; exit 0"),
        )));
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let d = node.settled("alice", "always");
        let r = &d["workloads"][0]["result"];
        assert_ne!(r["state"], "error", "{d}");
        if r["data"]["restarts"].as_u64().unwrap_or(0) >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "not restarted twice: {d}");
        std::thread::sleep(Duration::from_millis(500));
    }
    // The default (on-failure) leaves a clean exit done, and deploy says so without failing.
    let out = ok(node
        .cli("alice", &["deploy", "--settle", "20s"])
        .arg(node.write_yaml(
            "once.yaml",
            &machine("once", "on-failure", "echo done; exit 0"),
        )));
    assert!(out.contains("app"), "{out}");
}

#[test]
fn a_failing_healthcheck_shows_in_events_and_restarts_the_machine() {
    if !common::is_root() || !common::have("qemu-system-x86_64") {
        return;
    }
    let node = Node::start("");
    let events_log = node.dir().join("health-events.log");
    let mut events = node
        .cli("alice", &["events"])
        .stdout(std::fs::File::create(&events_log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Healthy for a few seconds, then its check fails (each start writes /tmp, a tmpfs, anew).
    let yaml = "name: health\nworkloads:\n  - name: app\n    type: zmachine\n    data:\n      \
        flist: FLIST\n      memory: 64M\n      \
        cmd: [sh, -c, 'echo good > /tmp/state; sleep 6; echo bad > /tmp/state; exec sleep 600']\n      \
        healthcheck: { test: [sh, -c, 'grep -q good /tmp/state'], interval_secs: 1, \
        timeout_secs: 5, retries: 2 }\n";
    ok(node
        .cli("alice", &["deploy", "--no-wait"])
        .arg(node.write_yaml("health.yaml", yaml)));
    let deadline = Instant::now() + Duration::from_secs(240);
    let d = loop {
        let d = node.settled("alice", "health");
        let r = &d["workloads"][0]["result"];
        if r["data"]["restarts"].as_u64().unwrap_or(0) >= 1 {
            break d;
        }
        assert_ne!(r["state"], "error", "{d}");
        assert!(Instant::now() < deadline, "never restarted: {d}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let _ = events.kill();
    let _ = events.wait();
    let seen = std::fs::read_to_string(&events_log).unwrap();
    for want in ["running (starting)", "running (healthy)", "unhealthy"] {
        assert!(
            seen.contains(want),
            "{want} not in the events:\n{seen}\n{d}"
        );
    }
}

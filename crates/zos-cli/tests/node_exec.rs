//! End-to-end: `zos exec` and `zos cp` against a real node's container zmachine (a real VM
//! under QEMU), through the signed API's upgraded sessions and zos-init's control console.
//! One machine serves every assertion: booting one under TCG is the slow part.

mod common;
mod node_common;

use common::{fails, ok, output};
use node_common::Node;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const APP: &str = "name: app\nworkloads:\n  - name: sh\n    type: zmachine\n    data:\n      \
flist: FLIST\n      memory: 128M\n      env: { FROM_IMAGE: yes }\n      cmd: [sh, -c, 'echo ready; exec sleep 900']\n";

/// Runs `zos exec` as alice with `args`, stdin from `input`; returns (code, stdout, stderr).
fn exec(node: &Node, args: &[&str], input: &[u8]) -> (i32, String, String) {
    let mut cmd = node.cli("alice", &["exec"]);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `zos exec` for alice on the node, then `args`, as one shell string (for `script`).
fn shell_exec(node: &Node, args: &str) -> String {
    let cmd = node.cli("alice", &["exec"]);
    let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
    words.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    format!("{} {args}", words.join(" "))
}

#[test]
fn exec_and_cp_reach_the_owners_container_and_nothing_else() {
    if !common::is_root() || !common::have("qemu-system-x86_64") || !common::have("script") {
        return;
    }
    let node = Node::start("");
    ok(node
        .cli("alice", &["deploy"])
        .arg(node.write_yaml("app.yaml", APP)));
    // The process's own environment, stdout and stderr apart, and its exit code.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (code, out, err) = loop {
        let got = exec(
            &node,
            &[
                "app/sh",
                "--",
                "sh",
                "-c",
                "echo out=$FROM_IMAGE; echo err >&2; exit 3",
            ],
            b"",
        );
        if got.0 == 3 || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (3, "out=yes\n", "err\n")
    );

    // Stdin with -i, to its end; without -i the process reads nothing.
    let (code, out, _) = exec(&node, &["-i", "app/sh", "--", "wc", "-l"], b"a\nb\nc\n");
    assert_eq!((code, out.trim()), (0, "3"));
    let (code, out, _) = exec(&node, &["app/sh", "--", "wc", "-c"], b"ignored");
    assert_eq!((code, out.trim()), (0, "0"));
    // Flags change the environment, the directory and the user.
    let (code, out, _) = exec(
        &node,
        &[
            "-e",
            "A=1",
            "-w",
            "/tmp",
            "-u",
            "65534",
            "app/sh",
            "--",
            "sh",
            "-c",
            "echo $A $(pwd) $(id -u)",
        ],
        b"",
    );
    assert_eq!((code, out.trim()), (0, "1 /tmp 65534"));
    // A program that does not exist: 127 and why.
    let (code, _, err) = exec(&node, &["app/sh", "--", "no-such-program"], b"");
    assert_eq!(code, 127, "{err}");
    assert!(err.contains("no-such-program"), "{err}");

    // -t under a real terminal (script's pty): the process sees a terminal of our size;
    // -it carries typed lines to a shell and its exit code back.
    let out = output(Command::new("script").args([
        "-qec",
        &format!(
            "stty rows 33 cols 77; {}",
            shell_exec(&node, "-t app/sh -- sh -c 'tty; stty size'")
        ),
        "/dev/null",
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains("/dev/pts/") && text.contains("33 77"),
        "{text}"
    );
    let mut script = Command::new("script")
        .args(["-qec", &shell_exec(&node, "-it app/sh -- sh"), "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut typed = script.stdin.take().unwrap();
    typed.write_all(b"echo hi-$((6*7))\nexit 5\n").unwrap();
    let out = script.wait_with_output().unwrap();
    drop(typed);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("hi-42"), "{text}");
    assert_eq!(out.status.code(), Some(5), "{text}");

    // cp: 10 MiB both ways, byte for byte; a directory with a symlink, out whole.
    let dir = node.dir().join("cp");
    std::fs::create_dir_all(&dir).unwrap();
    let big: Vec<u8> = (0..10u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(dir.join("big"), &big).unwrap();
    ok(node
        .cli("alice", &["cp"])
        .arg(dir.join("big"))
        .arg("app/sh:/tmp/big"));
    let (code, out, _) = exec(&node, &["app/sh", "--", "wc", "-c", "/tmp/big"], b"");
    assert_eq!((code, out.split_whitespace().next()), (0, Some("10485760")));
    ok(node
        .cli("alice", &["cp", "app/sh:/tmp/big"])
        .arg(dir.join("back")));
    assert!(
        std::fs::read(dir.join("back")).unwrap() == big,
        "the copy differs"
    );
    let (code, _, _) = exec(
        &node,
        &[
            "app/sh",
            "--",
            "sh",
            "-c",
            "mkdir -p /tmp/d/sub && echo x > /tmp/d/sub/f && ln -s sub/f /tmp/d/link",
        ],
        b"",
    );
    assert_eq!(code, 0);
    ok(node.cli("alice", &["cp", "app/sh:/tmp/d"]).arg(&dir));
    assert_eq!(std::fs::read_to_string(dir.join("d/sub/f")).unwrap(), "x\n");
    assert_eq!(
        std::fs::read_link(dir.join("d/link")).unwrap(),
        std::path::Path::new("sub/f")
    );

    // A path that climbs is refused both ways, and nothing is left behind.
    let err = fails(
        node.cli("alice", &["cp"])
            .arg(dir.join("big"))
            .arg("app/sh:/tmp/../etc/x"),
    );
    assert!(err.contains("without '..'"), "{err}");
    let err = fails(
        node.cli("alice", &["cp", "app/sh:/tmp/../etc/passwd"])
            .arg(dir.join("p")),
    );
    assert!(err.contains("without '..'"), "{err}");
    assert!(!dir.join("p").exists());
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".zos-cp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Only the owner: bob has no deployment of that name.
    let err = fails(node.cli("bob", &["exec"]).args(["app/sh", "--", "true"]));
    assert!(err.contains("app"), "{err}");
    // A workload that is not a container is told so.
    let err = fails(
        node.cli("alice", &["exec"])
            .args(["app/nope", "--", "true"]),
    );
    assert!(err.contains("no workload"), "{err}");

    // A guest QEMU stopped (as it does by itself on a disk write error) cannot answer: exec
    // is refused at once instead of waiting for ever; running again, it answers.
    let vm = node
        .entries("vms")
        .into_iter()
        .find(|v| v.ends_with("-sh"))
        .expect("the machine's VM dir");
    let qmp = node.data().join("vms").join(vm).join("qmp.sock");
    common::qmp(&qmp, "stop");
    let err = fails(node.cli("alice", &["exec"]).args(["app/sh", "--", "true"]));
    assert!(
        err.contains("paused in QEMU") && err.contains("cannot answer"),
        "{err}"
    );
    common::qmp(&qmp, "cont");
    assert_eq!(exec(&node, &["app/sh", "--", "true"], b"").0, 0);
}

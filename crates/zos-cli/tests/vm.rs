//! End-to-end: busybox flists run as micro-VMs under real QEMU. The image config, exit codes,
//! the resources the guest sees, a persistent writable layer kept per VM, volumes, the
//! lifecycle with every step a separate `zos` process (a manager restart each time, reattached
//! through the VM record and QMP), crashes of QEMU, of virtiofsd and of the guest kernel,
//! clean refusals of bad input, and guest flushes that reach the disk.

mod common;
mod vm_common;

use common::{fails, ok};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use vm_common::{
    code_of, count_lines, describe, has_line, mounts_under, output_within, procs_mentioning, text,
    Fixture,
};

/// Whether `pid` is gone (or a zombie nobody reaped yet).
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

fn wait_gone(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gone(pid) {
        assert!(Instant::now() < deadline, "process {pid} did not die");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill9(pid: i32) {
    // SAFETY: kill has no memory preconditions.
    let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill -9 {pid}");
    wait_gone(pid);
}

#[test]
fn the_image_config_sets_the_process_and_flags_override_it() {
    if !common::is_root() || !common::have("qemu-system-x86_64") {
        return;
    }
    let f = Fixture::new();
    let fl = f.tagged(
        "img.fl",
        r#"{"entrypoint":["/bin/sh","-c"],"cmd":["echo hello $GREETING from $(pwd) as $(id -u):$(id -g)"],"env":["PATH=/bin","GREETING=zos"],"working_dir":"/srv","user":"1000:1001","os":"linux","architecture":"amd64"}"#,
    );
    let out = ok(f.zos("run").arg(&fl));
    assert!(
        has_line(&out, "hello zos from /srv as 1000:1001"),
        "entrypoint + cmd, env, working dir and user of the image expected:\n{out}"
    );
    // Arguments replace the cmd and keep the entrypoint; flags replace env, dir and user (a
    // user name resolved through the image's /etc/passwd and /etc/group).
    let out = ok(f.zos("run").arg(&fl).args([
        "--name",
        "over",
        "-e",
        "GREETING=you",
        "-w",
        "/etc",
        "-u",
        "app",
        "--",
        "echo override $GREETING in $(pwd) as $(id -u):$(id -g) on $(hostname)",
    ]));
    assert!(
        has_line(&out, "override you in /etc as 1000:1001 on over"),
        "overrides not applied:\n{out}"
    );
    assert!(!out.contains("hello"), "the image's cmd ran too:\n{out}");
    f.assert_no_vms_left("zos run");
}

#[test]
fn the_exit_code_is_the_containers() {
    if !common::is_root() || !common::have("qemu-system-x86_64") {
        return;
    }
    let f = Fixture::new();
    let out = f.run(&["--", "/bin/sh", "-c", "echo before; exit 3"]);
    assert_eq!(code_of(&out), 3, "{}", describe(&out));
    assert!(has_line(&text(&out.stdout), "before"), "{}", describe(&out));

    let out = f.run(&["--", "/bin/sh", "-c", "kill -TERM $$"]);
    assert_eq!(
        code_of(&out),
        143,
        "killed by SIGTERM is 128+15; {}",
        describe(&out)
    );

    // In the image, so the plan accepts it, but not executable: the guest cannot exec it.
    let out = f.run(&["--entrypoint", "/etc/passwd"]);
    assert_eq!(code_of(&out), 126, "{}", describe(&out));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("error:") && stderr.contains("/etc/passwd"),
        "a reason on stderr expected; {}",
        describe(&out)
    );
    f.assert_no_vms_left("zos run");
}

#[test]
fn the_guest_has_the_cpus_memory_and_hostname_asked_for() {
    if !common::is_root() || !common::have("qemu-system-x86_64") {
        return;
    }
    let f = Fixture::new();
    let out = ok(f.zos("run").arg(&f.fl).args([
        "--cpus",
        "2",
        "--memory",
        "300M",
        "--name",
        "sized",
        "--",
        "/bin/sh",
        "-c",
        "echo cpus=$(nproc); grep MemTotal /proc/meminfo; echo host=$(hostname)",
    ]));
    assert!(has_line(&out, "cpus=2"), "2 CPUs expected:\n{out}");
    assert!(
        has_line(&out, "host=sized"),
        "the hostname is the VM's name:\n{out}"
    );
    let kib: u64 = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in:\n{out}"));
    let mib = kib / 1024;
    assert!(
        (200..=300).contains(&mib),
        "MemTotal {mib} MiB for --memory 300M:\n{out}"
    );
    f.assert_no_vms_left("zos run");
}

#[test]
fn a_vm_keeps_its_writable_layer_across_starts_and_shares_it_with_no_other() {
    if !common::is_root() || !common::have("qemu-system-x86_64") {
        return;
    }
    let f = Fixture::new();
    let script = "cat /state 2>/dev/null; echo run >> /state; echo done";
    for name in ["a", "b"] {
        let out = ok(f
            .zos("vm")
            .arg("create")
            .args(["--name", name])
            .arg(&f.fl)
            .args(["--", "/bin/sh", "-c", script]));
        assert_eq!(out.trim(), name);
        assert_eq!(f.status(name).0, format!("{name} created"));
    }
    for boot in 1..=2 {
        let out = ok(f.zos("vm").args(["start", "a"]));
        assert_eq!(out.trim(), "a running", "boot {boot}");
        ok(f.zos("vm").args(["wait", "a", "--timeout", "5m"]));
        assert_eq!(f.status("a").0, "a exited (0)", "boot {boot}");
    }
    let logs = ok(f.zos("vm").args(["logs", "a"]));
    assert_eq!(count_lines(&logs, "done"), 2, "two boots expected:\n{logs}");
    assert_eq!(
        count_lines(&logs, "run"),
        1,
        "the second boot reads what the first wrote:\n{logs}"
    );
    let ps = ok(f.zos("vm").arg("ps"));
    let row = |name: &str| {
        ps.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} not listed:\n{ps}"))
            .to_string()
    };
    assert!(row("a").contains("exited (0)"), "{ps}");
    assert!(row("b").contains("created"), "{ps}");

    ok(f.zos("vm").args(["start", "b"]));
    ok(f.zos("vm").args(["wait", "b", "--timeout", "5m"]));
    let logs = ok(f.zos("vm").args(["logs", "b"]));
    assert!(has_line(&logs, "done"), "b did not run:\n{logs}");
    assert!(
        !has_line(&logs, "run"),
        "b sees a's writable layer:\n{logs}"
    );

    let out = ok(f.zos("vm").args(["rm", "a"]));
    assert_eq!(out.trim(), "a removed");
    assert!(!f.vm_dir("a").exists(), "the VM dir is still there");
    assert!(f.vm_dir("b").exists(), "rm a took b too");
    f.assert_nothing_left_of(&f.data());
    ok(f.zos("vm").args(["rm", "b"]));
    f.assert_no_vms_left("zos vm rm");
    fails(f.zos("vm").args(["status", "a"]));
}

#[test]
fn a_volume_outlives_the_vms_that_use_it() {
    if !common::is_root() || !common::have("qemu-system-x86_64") {
        return;
    }
    let f = Fixture::new();
    let out = ok(f.zos("volume").args(["create", "v1", "--size", "64M"]));
    assert_eq!(out.trim(), "v1");
    let err = fails(f.zos("volume").args(["create", "v1", "--size", "64M"]));
    assert!(err.contains("already exists"), "{err}");
    let ls = ok(f.zos("volume").arg("ls"));
    let row = ls
        .lines()
        .find(|l| l.split_whitespace().next() == Some("v1"))
        .unwrap_or_else(|| panic!("v1 not listed:\n{ls}"));
    assert!(row.contains("raw") && row.contains("64 MiB"), "{ls}");

    let out = ok(f.zos("run").arg(&f.fl).args([
        "-v",
        "v1:/data",
        "--",
        "/bin/sh",
        "-c",
        "echo kept > /data/f && echo wrote",
    ]));
    assert!(has_line(&out, "wrote"), "{out}");
    let out = ok(f.zos("run").arg(&f.fl).args([
        "-v",
        "v1:/data",
        "--",
        "/bin/sh",
        "-c",
        "echo read $(cat /data/f)",
    ]));
    assert!(
        has_line(&out, "read kept"),
        "the volume lost its file:\n{out}"
    );
    f.assert_no_vms_left("zos run");

    // A VM that holds the volume, even one never started, keeps it from being removed.
    ok(f.zos("vm")
        .args(["create", "--name", "holder", "-v", "v1:/data"])
        .arg(&f.fl)
        .args(["--", "/bin/true"]));
    let err = fails(f.zos("volume").args(["rm", "v1"]));
    assert!(err.contains("used by VM holder"), "{err}");
    ok(f.zos("vm").args(["rm", "holder"]));

    let out = ok(f.zos("volume").args(["rm", "v1"]));
    assert_eq!(out.trim(), "v1 removed");
    let ls = ok(f.zos("volume").arg("ls"));
    assert!(!ls.lines().skip(1).any(|l| l.starts_with("v1")), "{ls}");
    let left: Vec<_> = std::fs::read_dir(f.data().join("volumes"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "files left: {left:?}");
    let err = fails(
        f.zos("run")
            .arg(&f.fl)
            .args(["-v", "v1:/data", "--", "/bin/true"]),
    );
    assert!(err.contains("zos volume create"), "{err}");
}

#[test]
fn every_lifecycle_step_is_a_new_manager_that_reattaches() {
    if !common::is_root() || !common::have("qemu-system-x86_64") {
        return;
    }
    let f = Fixture::new();
    // zos-init opens its control port just after starting the process: "up" comes after a
    // pause, so a stop sent once it shows is not lost (see the ignored test below).
    let script = "sleep 1; echo up; exec sleep 1000";
    let out = ok(f
        .zos("run")
        .arg("-d")
        .args(["--name", "s"])
        .arg(&f.fl)
        .args(["--", "/bin/sh", "-c", script]));
    assert_eq!(out.trim(), "s", "zos run -d prints the name");
    assert_eq!(f.status("s").0, "s running");
    let err = fails(f.zos("vm").args(["start", "s"]));
    assert!(err.contains("already running"), "{err}");

    assert_eq!(ok(f.zos("vm").args(["pause", "s"])).trim(), "s paused");
    assert_eq!(f.status("s").0, "s paused");
    let err = fails(f.zos("vm").args(["pause", "s"]));
    assert!(err.contains("paused"), "{err}");
    assert_eq!(ok(f.zos("vm").args(["resume", "s"])).trim(), "s running");
    assert_eq!(f.status("s").0, "s running");

    // Once the container runs, a stop is its SIGTERM: `exec sleep` dies of it, 143. Had the
    // request been ignored, the timeout's kill would leave no exit report: "s stopped".
    f.wait_for_console("s", "up", 1);
    let out = ok(f.zos("vm").args(["stop", "s", "--timeout", "120s"]));
    assert_eq!(out.trim(), "s exited (143)", "the container's SIGTERM exit");
    assert_eq!(f.status("s").0, out.trim());
    f.assert_nothing_left_of(&f.vm_dir("s"));

    // Started again from the record, with its console kept.
    assert_eq!(ok(f.zos("vm").args(["start", "s"])).trim(), "s running");
    f.wait_for_console("s", "up", 2);
    assert_eq!(f.status("s").0, "s running");
    let json = ok(f.zos("vm").args(["status", "s", "--json"]));
    let info: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(info["state"], "running", "{json}");
    let pid = info["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("no pid: {json}"));
    assert_eq!(pid, i64::from(f.qemu_pid("s")));

    assert_eq!(ok(f.zos("vm").args(["rm", "s"])).trim(), "s removed");
    wait_gone(pid as i32);
    f.assert_no_vms_left("zos vm rm");
    f.assert_nothing_left_of(&f.data());
}

#[test]
fn a_stop_during_boot_is_not_lost() {
    if !common::is_root() || !common::have("qemu-system-x86_64") {
        return;
    }
    let f = Fixture::new();
    ok(f.zos("run")
        .arg("-d")
        .args(["--name", "early"])
        .arg(&f.fl)
        .args(["--", "sleep", "1000"]));
    // A lost request would end in QEMU being killed at the deadline: "stopped", not the
    // process's own SIGTERM exit.
    let out = ok(f.zos("vm").args(["stop", "early", "--timeout", "30s"]));
    assert_eq!(out.trim(), "early exited (143)");
}

#[test]
fn a_dead_qemu_or_virtiofsd_is_a_crash_and_everything_is_cleaned_up() {
    if !common::is_root() || !common::have("qemu-system-x86_64") {
        return;
    }
    let f = Fixture::new();
    let dir = f.vm_dir("k");
    ok(f.zos("run")
        .arg("-d")
        .args(["--name", "k"])
        .arg(&f.fl)
        .args(["--", "sleep", "1000"]));
    assert!(
        !mounts_under(&dir).is_empty(),
        "a running VM has its root mounted"
    );
    kill9(f.qemu_pid("k"));
    let (state, out) = f.status("k");
    assert_eq!(state, "k crashed", "{out}");
    assert!(out.contains("QEMU exited"), "{out}");
    f.assert_nothing_left_of(&dir);

    // A crashed VM starts again; then its virtiofsd dies, which takes QEMU down with it.
    assert_eq!(ok(f.zos("vm").args(["start", "k"])).trim(), "k running");
    let qemu = f.qemu_pid("k");
    let virtiofsd: Vec<i32> = procs_mentioning(&dir)
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("virtiofsd"))
        .map(|(pid, _)| pid)
        .collect();
    assert!(!virtiofsd.is_empty(), "no virtiofsd for {}", dir.display());
    for pid in virtiofsd {
        kill9(pid);
    }
    let (state, out) = f.status("k");
    assert_eq!(state, "k crashed", "{out}");
    assert!(
        out.contains("virtiofsd"),
        "the reason names virtiofsd: {out}"
    );
    assert!(
        gone(qemu),
        "QEMU {qemu} still runs without its root filesystem"
    );
    f.assert_nothing_left_of(&dir);
    ok(f.zos("vm").args(["rm", "k"]));
    f.assert_no_vms_left("zos vm rm");
}

#[test]
fn a_guest_kernel_panic_fails_the_run_with_the_console_tail() {
    if !common::is_root() || !common::have("qemu-system-x86_64") {
        return;
    }
    let f = Fixture::new();
    // The guest must power off by itself after a panic (panic=-1, -no-reboot).
    let run = output_within(
        f.zos("run")
            .arg(&f.fl)
            .args(["--", "/bin/sh", "-c", "echo c > /proc/sysrq-trigger"]),
        Duration::from_secs(60),
    );
    let out = run.unwrap_or_else(|out| {
        panic!(
            "QEMU still runs a minute after the guest panicked (stuck in the kernel's reboot \
             fallbacks; the kernel command line lacks reboot=t); {}",
            describe(&out)
        )
    });
    assert_eq!(code_of(&out), 1, "{}", describe(&out));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("panic"), "{}", describe(&out));
    assert!(
        stderr.contains("console around the panic")
            && stderr.contains("sysrq: Trigger a crash")
            && stderr.contains("Kernel panic - not syncing"),
        "the console tail is part of the error; {}",
        describe(&out)
    );
    assert!(
        stderr.contains("the guest kernel panicked"),
        "the reason says who panicked; {}",
        describe(&out)
    );
    f.assert_no_vms_left("a crashed zos run");
    f.assert_nothing_left_of(&f.data());
}

/// Runs `cmd` with `input` on its stdin: with `keep_open` the stdin stays open until `cmd`
/// exits (as a typist's terminal would), else it ends after the input. Killed, and the test
/// failed, after two minutes.
fn fed(cmd: &mut Command, input: &[u8], keep_open: bool) -> std::process::Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    // Its result (the open stdin) lives until joined.
    let feeding = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
        keep_open.then_some(stdin)
    });
    let pid = child.id() as i32;
    let watchdog = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !gone(pid) {
            if Instant::now() > deadline {
                // SAFETY: kill has no memory preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    });
    let out = child.wait_with_output().unwrap();
    drop(feeding.join());
    assert!(!watchdog.join().unwrap(), "hung: {}", describe(&out));
    out
}

/// `zos run ARGS…` on the fixture's flist as one shell command line, for `script`.
fn shell_run(f: &Fixture, args: &str) -> String {
    let cmd = f.zos("run");
    let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
    words.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    words.push(f.fl.to_string_lossy().into_owned());
    format!("{} {args}", words.join(" "))
}

#[test]
fn a_foreground_run_has_stdout_and_stderr_apart_and_stdin_and_a_terminal_when_asked() {
    if !common::is_root() || !common::have("qemu-system-x86_64") || !common::have("script") {
        return;
    }
    let f = Fixture::new();
    let out = f.run(&["--", "/bin/sh", "-c", "echo out; echo err >&2; exit 4"]);
    assert_eq!(code_of(&out), 4, "{}", describe(&out));
    assert!(has_line(&text(&out.stdout), "out"), "{}", describe(&out));
    assert!(has_line(&text(&out.stderr), "err"), "{}", describe(&out));
    assert!(!text(&out.stdout).contains("err"), "{}", describe(&out));

    // Without -i the process reads nothing (and does not wait for it); with -i it reads
    // ours to its end.
    let out = fed(
        f.zos("run")
            .arg(&f.fl)
            .args(["--", "/bin/sh", "-c", "wc -c"]),
        b"unread\n",
        true,
    );
    assert_eq!(text(&out.stdout).trim(), "0", "{}", describe(&out));
    let input: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let out = fed(
        f.zos("run").arg(&f.fl).args([
            "-i",
            "--",
            "/bin/sh",
            "-c",
            "read first; echo first=$first; wc -c",
        ]),
        &[b"hello\n", &input[..]].concat(),
        false,
    );
    assert!(out.status.success(), "{}", describe(&out));
    let got = text(&out.stdout);
    assert!(has_line(&got, "first=hello"), "{}", describe(&out));
    assert!(has_line(&got, "300000"), "all of stdin expected: {got}");

    // -t under a real terminal (script's pty): a terminal of our size; -it carries typed
    // lines to a shell, and its exit code back.
    let out = fed(
        Command::new("script").args([
            "-qec",
            &format!(
                "stty rows 33 cols 77; {}",
                shell_run(&f, "-t -- /bin/sh -c 'tty; stty size'")
            ),
            "/dev/null",
        ]),
        b"",
        true,
    );
    let got = text(&out.stdout);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(got.contains("/dev/pts/") && got.contains("33 77"), "{got}");
    let out = fed(
        Command::new("script").args(["-qec", &shell_run(&f, "-it -- /bin/sh"), "/dev/null"]),
        b"echo hi-$((6*7))\nexit 5\n",
        true,
    );
    assert!(text(&out.stdout).contains("hi-42"), "{}", describe(&out));
    assert_eq!(code_of(&out), 5, "{}", describe(&out));

    // A reader that stops early (`| head -1`) sends the process the SIGPIPE a pipe would.
    let out = output_within(
        Command::new("bash").arg("-c").arg(format!(
            "{} -- /bin/sh -c 'while true; do echo y; done' | head -1; echo zos=${{PIPESTATUS[0]}}",
            shell_run(&f, "")
        )),
        Duration::from_secs(120),
    )
    .unwrap_or_else(|out| panic!("zos run | head -1 hung; {}", describe(&out)));
    let got = text(&out.stdout);
    assert_eq!(
        got.lines().collect::<Vec<_>>(),
        ["y", "zos=141"],
        "{}",
        describe(&out)
    );

    // -t needs a terminal; -d has no one to attach.
    let err = fails(f.zos("run").arg(&f.fl).args(["-t", "--", "true"]));
    assert!(err.contains("-t needs a terminal"), "{err}");
    let out = output_within(
        f.zos("run").arg(&f.fl).args(["-d", "-i", "--", "true"]),
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(
        code_of(&out),
        2,
        "clap refuses -d with -i; {}",
        describe(&out)
    );
    f.assert_no_vms_left("zos run");
}

#[test]
fn bad_input_is_refused_before_anything_starts() {
    if !common::is_root() || !common::have("qemu-system-x86_64") {
        return;
    }
    let f = Fixture::new();
    let arm = f.tagged(
        "arm.fl",
        r#"{"cmd":["/bin/sh"],"os":"linux","architecture":"arm64"}"#,
    );
    let fl = f.fl.to_str().unwrap().to_string();
    let sh = ["--", "/bin/sh", "-c", "true"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![&fl], "no entrypoint or command"),
        (vec![&fl, "--", "/nope"], "\"/nope\" not found in the image"),
        (vec![&fl, "--", "nope"], "searched PATH="),
        (
            [&[fl.as_str(), "--cpus", "999"][..], &sh].concat(),
            "--cpus",
        ),
        ([&[fl.as_str(), "--cpus", "0"][..], &sh].concat(), "--cpus"),
        (
            [&[fl.as_str(), "--memory", "100T"][..], &sh].concat(),
            "MiB of memory",
        ),
        (
            [&[fl.as_str(), "--memory", "10M"][..], &sh].concat(),
            "at least 64 MiB",
        ),
        (
            [&[fl.as_str(), "-v", "missing:/x"][..], &sh].concat(),
            "zos volume create missing",
        ),
        (
            [&[fl.as_str(), "-v", "nopath"][..], &sh].concat(),
            "NAME:/PATH",
        ),
        (vec![arm.to_str().unwrap()], "linux/amd64"),
        ([&["/tmp/no/such.fl"][..], &sh].concat(), "not found"),
        (
            [&[fl.as_str(), "--name", "bad/name"][..], &sh].concat(),
            "bad VM name",
        ),
    ];
    for (args, want) in &cases {
        for sub in [&["run"][..], &["vm", "create"][..]] {
            let mut cmd = f.zos(sub[0]);
            cmd.args(&sub[1..]).args(args);
            let err = fails(&mut cmd);
            assert!(
                err.contains(want),
                "{sub:?} {args:?}: want {want:?} in: {err}"
            );
            f.assert_no_vms_left(&format!("{sub:?} {args:?}"));
        }
    }
    // A name already taken is refused, and the first VM is untouched.
    ok(f.zos("vm")
        .arg("create")
        .args(["--name", "one"])
        .arg(&f.fl)
        .args(sh));
    let err = fails(f.zos("run").args(["--name", "one"]).arg(&f.fl).args(sh));
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(f.status("one").0, "one created");
    ok(f.zos("vm").args(["rm", "one"]));
    f.assert_no_vms_left("zos vm rm");
}

#[test]
fn a_guest_fsync_on_a_volume_is_a_flush_of_the_volumes_host_file() {
    if !common::is_root() || !common::have("qemu-system-x86_64") {
        return;
    }
    let f = Fixture::new();
    ok(f.zos("volume").args(["create", "v1", "--size", "64M"]));
    // The guest waits for the host's go (a file the host puts into its root), so the flush
    // count is read before its write and fsync.
    let script = "echo up; while ! test -e /srv/go; do sleep 0.1; done; \
        echo flushed | dd of=/data/f conv=fsync 2>/dev/null && cat /data/f; exec sleep 1000";
    ok(f.zos("run")
        .arg("-d")
        .args(["--name", "w", "-v", "v1:/data"])
        .arg(&f.fl)
        .args(["--", "/bin/sh", "-c", script]));
    f.wait_for_console("w", "up", 1);
    let volume = f.data().join("volumes/v1.raw").display().to_string();
    // QEMU's view of the drive holding the volume: its cache mode, and how many flushes the
    // guest has sent it.
    let drive = |f: &Fixture| -> (serde_json::Value, u64) {
        let block = qmp(&f.vm_dir("w").join("qmp.sock"), "query-block");
        let stats = qmp(&f.vm_dir("w").join("qmp.sock"), "query-blockstats");
        let find = |list: &serde_json::Value, key: &str| -> String {
            list.as_array()
                .unwrap()
                .iter()
                .find(|d| d.to_string().contains(&volume))
                .unwrap_or_else(|| panic!("no drive of {volume} in {list}"))[key]
                .as_str()
                .unwrap_or_default()
                .to_string()
        };
        let device = find(&block, "device");
        let cache = block
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["device"] == device.as_str())
            .unwrap()["inserted"]["cache"]
            .clone();
        let flushes = stats
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["device"] == device.as_str())
            .unwrap_or_else(|| panic!("no stats of {device} in {stats}"))["stats"]
            ["flush_operations"]
            .as_u64()
            .unwrap();
        (cache, flushes)
    };
    let (cache, before) = drive(&f);
    // Flushes are passed on to the host file (cache=unsafe would say no-flush: true).
    assert_eq!(cache["no-flush"], false, "{cache}");
    assert_eq!(cache["writeback"], true, "{cache}");
    std::fs::write(f.vm_dir("w").join("root/srv/go"), "").unwrap();
    f.wait_for_console("w", "flushed", 1);
    let (_, after) = drive(&f);
    assert!(
        after > before,
        "the guest's fsync sent no flush to {volume}'s drive ({before} → {after})"
    );
    ok(f.zos("vm").args(["rm", "w"]));
}

/// One QMP command on `socket`; returns its `return`.
fn qmp(socket: &Path, command: &str) -> serde_json::Value {
    use std::io::Write;
    let stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
    let mut greeting = String::new();
    reader.read_line(&mut greeting).unwrap();
    let mut writer = stream;
    let mut answer = |line: &str| -> serde_json::Value {
        writer.write_all(line.as_bytes()).unwrap();
        loop {
            let mut text = String::new();
            reader.read_line(&mut text).unwrap();
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            if v.get("return").is_some() || v.get("error").is_some() {
                return v;
            }
        }
    };
    answer("{\"execute\":\"qmp_capabilities\"}\n");
    let v = answer(&format!("{{\"execute\":\"{command}\"}}\n"));
    v.get("return")
        .cloned()
        .unwrap_or_else(|| panic!("{command}: {v}"))
}

/// The whole path of an acknowledged write: guest page cache, virtio-blk, QEMU, host file, and
/// the journal replayed by the next guest. (A kill -9 of QEMU leaves the host page cache in
/// place, so this passes with cache=unsafe too; the flush test above is the one that shows
/// the drive passing the guest's flushes on to the file, which is what survives a host crash.)
#[test]
fn every_write_the_guest_fsynced_survives_a_kill_9_of_qemu() {
    if !common::is_root() || !common::have("qemu-system-x86_64") {
        return;
    }
    let f = Fixture::new();
    ok(f.zos("volume").args(["create", "v1", "--size", "64M"]));
    // Each file is acknowledged on the console only once its fsync returned; the writes go on
    // while QEMU is killed.
    let script = "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); \
        echo \"pattern $i $i $i\" | dd of=/data/f$i conv=fsync 2>/dev/null && echo acked $i; \
        done; exec sleep 1000";
    ok(f.zos("run")
        .arg("-d")
        .args(["--name", "d", "-v", "v1:/data"])
        .arg(&f.fl)
        .args(["--", "/bin/sh", "-c", script]));
    f.wait_for_console("d", "acked 5", 1);
    kill9(f.qemu_pid("d"));
    let console = std::fs::read_to_string(f.vm_dir("d").join("console.log")).unwrap();
    let acked = console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("acked "))
        .filter_map(|n| n.parse::<u32>().ok())
        .max()
        .unwrap();
    assert_eq!(f.status("d").0, "d crashed");
    ok(f.zos("vm").args(["rm", "d"]));

    // A new guest mounts the volume (replaying its journal) and reads every acknowledged file.
    let out = ok(f.zos("run").arg(&f.fl).args([
        "-v",
        "v1:/data",
        "--",
        "/bin/sh",
        "-c",
        &format!("i=0; while [ $i -lt {acked} ]; do i=$((i+1)); cat /data/f$i; done"),
    ]));
    for i in 1..=acked {
        assert!(
            has_line(&out, &format!("pattern {i} {i} {i}")),
            "write {i} of {acked} acknowledged was lost by the kill -9:\n{out}"
        );
    }
}

#[test]
fn every_vm_log_is_rotated_past_its_bound_when_the_vm_is_looked_at() {
    if !common::is_root() || !common::have("qemu-system-x86_64") {
        return;
    }
    let f = Fixture::new();
    ok(f.zos("run")
        .arg("-d")
        .args(["--name", "l"])
        .arg(&f.fl)
        .args(["--", "/bin/sh", "-c", "echo up; exec sleep 1000"]));
    f.wait_for_console("l", "up", 1);
    // Past the 1 MiB default bound, appended as the writers append.
    let logs = ["console.log", "mount.log", "virtiofsd.log"];
    for log in logs {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(f.vm_dir("l").join(log))
            .unwrap();
        std::io::Write::write_all(&mut file, &vec![b'x'; 3 << 19]).unwrap();
    }
    assert_eq!(f.status("l").0, "l running");
    for log in logs {
        let live = std::fs::metadata(f.vm_dir("l").join(log)).unwrap().len();
        assert!(live < 1 << 20, "{log} was not rotated: {live} bytes");
        let old = std::fs::metadata(f.vm_dir("l").join(format!("{log}.1")))
            .unwrap_or_else(|e| panic!("{log}.1: {e}"))
            .len();
        assert!(old >= 3 << 19, "{log}.1 has {old} bytes");
    }
    // The helpers write on into their rotated logs: the VM still stops cleanly.
    let out = ok(f.zos("vm").args(["stop", "l", "--timeout", "120s"]));
    assert_eq!(out.trim(), "l exited (143)");
    ok(f.zos("vm").args(["rm", "l"]));
}

#[test]
fn qemu_is_sandboxed_and_a_setuid_program_or_device_node_a_guest_plants_gives_nothing_on_the_host()
{
    if !common::is_root() || !common::have("qemu-system-x86_64") {
        return;
    }
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    let f = Fixture::new();
    // The host's own `id` (busybox drops setuid rights by itself, which would prove
    // nothing), carried in the image for the guest to make setuid root.
    let root = f.tmp.path().join("root");
    std::fs::copy("/usr/bin/id", root.join("srv/id")).unwrap();
    let fl = common::pack(&root, f.tmp.path(), "esc.fl");
    let plant = "cp /srv/id /suid && chmod 4755 /suid && mknod /blk b 7 0 && \
                 chmod 666 /blk && echo planted && sleep 600";
    ok(f.zos("vm")
        .args(["create", "--name", "esc"])
        .arg(&fl)
        .args(["--", "/bin/sh", "-c", plant]));
    ok(f.zos("vm").args(["start", "esc"]));
    f.wait_for_console("esc", "planted", 1);
    // QEMU runs under its seccomp sandbox (mode 2: a filter).
    let status = std::fs::read_to_string(format!("/proc/{}/status", f.qemu_pid("esc"))).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().eq(["Seccomp:", "2"])),
        "{status}"
    );
    let dir = f.vm_dir("esc");
    for place in ["rw/upper", "root"] {
        let suid = dir.join(place).join("suid");
        let meta = std::fs::metadata(&suid).unwrap();
        assert_eq!(
            meta.mode() & 0o4000,
            0o4000,
            "the bit is kept for the guest"
        );
        // Run as nobody through the open file (the VM's dirs are closed to nobody).
        let c = std::ffi::CString::new(suid.as_os_str().as_bytes()).unwrap();
        // SAFETY: open(2) of a valid NUL-terminated path; the fd is left inheritable on
        // purpose, for the child to exec through /proc/self/fd.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY) };
        assert!(fd >= 0, "opening {}", suid.display());
        let out = Command::new(format!("/proc/self/fd/{fd}"))
            .arg0("id")
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        // SAFETY: closes the fd opened above, used by nothing else.
        unsafe { libc::close(fd) };
        let id = text(&out.stdout);
        assert!(
            id.contains("uid=65534"),
            "{place}: {id} {}",
            text(&out.stderr)
        );
        assert!(
            !id.contains("euid=0"),
            "{place}: setuid root worked on the host: {id}"
        );
        let blk = dir.join(place).join("blk");
        let err = std::fs::File::open(&blk).expect_err("a guest's device node opened on the host");
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::PermissionDenied,
            "{place}: {err}"
        );
    }
    ok(f.zos("vm").args(["rm", "esc"]));
    f.assert_no_vms_left("zos vm rm");
}

/// `/proc/PID/status` as field → value.
fn proc_status(pid: i32) -> std::collections::HashMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"))
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn each_qemu_runs_jailed_as_its_own_uid_and_reaches_no_other_vms_files() {
    if !common::is_root() || !common::have("qemu-system-x86_64") {
        return;
    }
    use std::os::unix::process::CommandExt;
    let f = Fixture::new();
    for (vm, volume) in [("ja", "va"), ("jb", "vb")] {
        ok(f.zos("volume").args(["create", volume, "--size", "16M"]));
        ok(f.zos("vm")
            .args(["create", "--name", vm, "-v", &format!("{volume}:/data")])
            .arg(&f.fl)
            .args(["--", "/bin/sh", "-c", "echo up && sleep 600"]));
        ok(f.zos("vm").args(["start", vm]));
    }
    let (a, b) = (f.qemu_pid("ja"), f.qemu_pid("jb"));
    let (sa, sb) = (proc_status(a), proc_status(b));
    let uid = |s: &std::collections::HashMap<String, String>, field: &str| -> u32 {
        let ids: Vec<u32> = s[field]
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect();
        assert!(ids.iter().all(|&i| i == ids[0]), "{field}: {ids:?}");
        ids[0]
    };
    let uid_a = uid(&sa, "Uid");
    assert!(uid_a >= 1_700_000_000, "QEMU runs as uid {uid_a}");
    assert_eq!(uid(&sa, "Gid"), uid_a);
    assert_ne!(uid(&sb, "Uid"), uid_a, "two VMs share a uid");
    for field in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(sa[field], "0000000000000000", "{field}");
    }
    assert_eq!(sa["NoNewPrivs"], "1");
    assert_eq!(sa["Seccomp"], "2");

    // Its root holds the system read-only and this VM's own files, nothing else of the host.
    let root_a = PathBuf::from(format!("/proc/{a}/root"));
    let in_a = |p: &Path| root_a.join(p.strip_prefix("/").unwrap());
    assert!(root_a.join("usr/bin").is_dir());
    assert!(in_a(&f.vm_dir("ja").join("console.log")).is_file());
    for host_only in ["etc/passwd", "etc/shadow", "home", "proc", "sys", "var"] {
        assert!(
            !root_a.join(host_only).exists(),
            "{host_only} is in the jail"
        );
    }
    let volume_of = |vm: &str| -> PathBuf {
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(f.vm_dir(vm).join("vm.json")).unwrap()).unwrap();
        PathBuf::from(record["spec"]["disks"][0]["path"].as_str().unwrap())
    };
    assert!(
        in_a(&volume_of("ja")).is_file(),
        "its own volume is missing"
    );
    let theirs = [
        f.vm_dir("jb").join("console.log"),
        f.vm_dir("jb").join("vm.json"),
        volume_of("jb"),
        f.vm_dir("ja").join("vm.json"),
    ];
    for file in &theirs {
        assert!(!in_a(file).exists(), "{} is in A's jail", file.display());
    }
    // Its uid opens none of the other VM's files on the host either.
    for file in &theirs[..3] {
        let out = Command::new("cat")
            .arg(file)
            .uid(uid_a)
            .gid(uid_a)
            .output()
            .unwrap();
        assert!(!out.status.success(), "uid {uid_a} read {}", file.display());
        assert!(
            text(&out.stderr).contains("Permission denied"),
            "{}",
            text(&out.stderr)
        );
    }

    // virtiofsd serves from a sandbox of its own: its worker is filtered and sees only the
    // VM's root.
    let parent: i32 = std::fs::read_to_string(f.vm_dir("ja").join("virtiofs.sock.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let children = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
        .unwrap_or_default();
    let worker: i32 = children
        .split_whitespace()
        .next()
        .map_or(parent, |c| c.parse().unwrap());
    let sw = proc_status(worker);
    assert_eq!(sw["Seccomp"], "2", "virtiofsd {worker}");
    assert_eq!(sw["NoNewPrivs"], "1");
    let root_v = PathBuf::from(format!("/proc/{worker}/root"));
    assert!(root_v.join("bin/busybox").is_file(), "not the guest's root");
    assert!(!root_v.join("usr/bin/qemu-system-x86_64").exists());

    for vm in ["ja", "jb"] {
        ok(f.zos("vm").args(["stop", vm, "--timeout", "1s"]));
        ok(f.zos("vm").args(["rm", vm]));
    }
    f.assert_no_vms_left("zos vm rm");
}

#[test]
fn a_guest_that_reported_its_exit_but_does_not_power_off_is_ended_by_the_host() {
    if !common::is_root() || !common::have("qemu-system-x86_64") {
        return;
    }
    let f = Fixture::new();
    ok(f.zos("vm")
        .args(["create", "--name", "stuck"])
        .arg(&f.fl)
        .args(["--", "/bin/sh", "-c", "echo up && sleep 600"]));
    ok(f.zos("vm").args(["start", "stuck"]));
    f.wait_for_console("stuck", "up", 1);
    let qemu = f.qemu_pid("stuck");
    // What a guest stuck on its way out leaves: its exit report, and QEMU still running.
    std::fs::write(f.vm_dir("stuck").join("exit.json"), "{\"code\":7}\n").unwrap();
    let (line, _) = f.status("stuck");
    assert_eq!(line.split_whitespace().nth(1), Some("running"), "{line}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (line, all) = f.status("stuck");
        if line.contains("exited (7)") {
            break;
        }
        assert!(Instant::now() < deadline, "never ended:\n{all}");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(gone(qemu), "QEMU {qemu} still runs");
    ok(f.zos("vm").args(["rm", "stuck"]));
    f.assert_no_vms_left("zos vm rm");
}

//! Starting the container's process: PATH lookup, user, environment, then fork and exec.

use crate::sys::cpath;
use crate::user;
use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use zos_init::{ExitReport, Process};

/// Docker's default search path, used when the environment has no `PATH`.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the forked child was doing when it failed; sent back to the parent with the errno.
const STAGES: [&str; 8] = [
    "setsid",
    "redirecting stdin, stdout and stderr",
    "changing to the working directory",
    "setgroups",
    "setgid",
    "setuid",
    "exec",
    "taking the terminal",
];
const STAGE_EXEC: i32 = 6;

/// Where a started process's stdin, stdout and stderr go.
#[derive(Debug, Clone, Copy)]
pub enum Stdio {
    /// Stdin on /dev/null, stdout and stderr on init's (the console): the container's process.
    Console,
    /// All three on /dev/null: healthchecks.
    Quiet,
    /// These descriptors (left open in init; the child gets copies); with `tty`, stdin is a
    /// terminal the process takes as its controlling one.
    Given {
        /// Its stdin.
        stdin: RawFd,
        /// Its stdout.
        stdout: RawFd,
        /// Its stderr.
        stderr: RawFd,
        /// Whether stdin is a terminal.
        tty: bool,
    },
}

fn report(code: i32, error: String) -> ExitReport {
    ExitReport {
        code,
        error: Some(error),
    }
}

/// Finds `name` like a shell does: the first regular file with an execute bit in `path`
/// (relative entries are taken from `cwd`).
pub fn lookup(name: &str, path: &str, cwd: &Path) -> Option<PathBuf> {
    path.split(':').find_map(|dir| {
        let candidate = cwd.join(if dir.is_empty() { "." } else { dir }).join(name);
        let meta = std::fs::metadata(&candidate).ok()?;
        (meta.is_file() && meta.permissions().mode() & 0o111 != 0).then_some(candidate)
    })
}

fn cstrings(items: &[String], what: &str) -> Result<Vec<CString>, ExitReport> {
    items
        .iter()
        .map(|s| cpath(s).map_err(|_| report(125, format!("{what} {s:?} contains a NUL byte"))))
        .collect()
}

fn null_terminated(items: &[CString]) -> Vec<*const libc::c_char> {
    items
        .iter()
        .map(|s| s.as_ptr())
        .chain([std::ptr::null()])
        .collect()
}

/// Starts `process` as a new session with its stdio as `stdio` says. Returns its pid, or the
/// report to give when it cannot start.
pub fn spawn(process: &Process, stdio: Stdio) -> Result<libc::pid_t, ExitReport> {
    let argv0 = process
        .argv
        .first()
        .ok_or_else(|| report(125, "no command specified".into()))?;
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let user = user::resolve(&process.user, &read("/etc/passwd"), &read("/etc/group"))
        .map_err(|e| report(125, e))?;

    let mut env = process.env.clone();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", user.home));
    }
    let search = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    let cwd = Path::new("/").join(&process.cwd);
    // Docker creates a missing working directory.
    std::fs::create_dir_all(&cwd).map_err(|e| {
        report(
            125,
            format!("creating working directory {}: {e}", cwd.display()),
        )
    })?;
    let program = if argv0.contains('/') {
        PathBuf::from(argv0)
    } else {
        lookup(argv0, search, &cwd)
            .ok_or_else(|| report(127, format!("{argv0}: executable file not found in $PATH")))?
    };

    let c_program =
        cpath(&program).map_err(|_| report(125, format!("{argv0:?} contains a NUL byte")))?;
    let c_cwd =
        cpath(&cwd).map_err(|_| report(125, format!("{:?} contains a NUL byte", process.cwd)))?;
    let c_argv = cstrings(&process.argv, "argument")?;
    let c_env = cstrings(&env, "environment entry")?;
    let argv = null_terminated(&c_argv);
    let envp = null_terminated(&c_env);
    let groups: Vec<libc::gid_t> = user.groups.clone();
    let devnull = std::fs::File::open("/dev/null")
        .map_err(|e| report(125, format!("opening /dev/null: {e}")))?;
    let null = devnull.as_raw_fd();
    let (fd0, fd1, fd2, tty) = match stdio {
        Stdio::Console => (null, 1, 2, false),
        Stdio::Quiet => (null, null, null, false),
        Stdio::Given {
            stdin,
            stdout,
            stderr,
            tty,
        } => (stdin, stdout, stderr, tty),
    };
    let (err_read, err_write) = pipe().map_err(|e| report(125, format!("creating a pipe: {e}")))?;

    // SAFETY: between fork and exec the child makes only async-signal-safe calls on data
    // prepared above, so this holds also when other threads run (healthchecks).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(report(125, format!("fork: {}", io::Error::last_os_error())));
    }
    if pid == 0 {
        // SAFETY: every pointer refers to data that lives until exec or _exit.
        unsafe {
            let empty = crate::sys::sigset(&[]);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            let fd = err_write.as_raw_fd();
            if libc::setsid() < 0 {
                child_fail(fd, 0);
            }
            // dup2 of a descriptor onto itself keeps its close-on-exec flag: init's own 1
            // and 2 have none, and every other descriptor here is a different number.
            if libc::dup2(fd0, 0) < 0 || libc::dup2(fd1, 1) < 0 || libc::dup2(fd2, 2) < 0 {
                child_fail(fd, 1);
            }
            if tty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                child_fail(fd, 7);
            }
            if libc::chdir(c_cwd.as_ptr()) < 0 {
                child_fail(fd, 2);
            }
            if libc::setgroups(groups.len(), groups.as_ptr()) < 0 {
                child_fail(fd, 3);
            }
            if libc::setgid(user.gid) < 0 {
                child_fail(fd, 4);
            }
            if libc::setuid(user.uid) < 0 {
                child_fail(fd, 5);
            }
            libc::execve(c_program.as_ptr(), argv.as_ptr(), envp.as_ptr());
            child_fail(fd, STAGE_EXEC)
        }
    }
    drop(err_write);
    let mut msg = [0u8; 8];
    let mut got = 0;
    let mut pipe = std::fs::File::from(err_read);
    while got < msg.len() {
        match pipe.read(&mut msg[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    // EOF with nothing read: the pipe closed on exec, so the process is running.
    if got < msg.len() {
        return Ok(pid);
    }
    let mut status = 0;
    // SAFETY: `status` is a valid place to write; `pid` is our child, which has exited.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let stage = i32::from_ne_bytes([msg[0], msg[1], msg[2], msg[3]]);
    let errno = i32::from_ne_bytes([msg[4], msg[5], msg[6], msg[7]]);
    let err = io::Error::from_raw_os_error(errno);
    Err(match (stage, errno) {
        (STAGE_EXEC, libc::ENOENT) => report(127, format!("{argv0}: no such file or directory")),
        (STAGE_EXEC, libc::EACCES) => report(126, format!("{argv0}: permission denied")),
        (STAGE_EXEC, _) => report(126, format!("{argv0}: {err}")),
        _ => {
            let stage = usize::try_from(stage)
                .ok()
                .and_then(|s| STAGES.get(s))
                .unwrap_or(&"starting the process");
            report(125, format!("{stage}: {err}"))
        }
    })
}

/// In the forked child: sends the failed stage and errno to the parent, then exits.
fn child_fail(fd: libc::c_int, stage: i32) -> ! {
    let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&stage.to_ne_bytes());
    msg[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: `msg` is valid for its length; write and _exit are async-signal-safe.
    unsafe {
        libc::write(fd, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_finds_executables_only() {
        let dir = std::env::temp_dir().join(format!("zos-init-lookup-{}", std::process::id()));
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(a.join("tool"), "").unwrap();
        std::fs::write(b.join("tool"), "").unwrap();
        std::fs::set_permissions(b.join("tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!("{}:{}", a.display(), b.display());
        assert_eq!(lookup("tool", &path, Path::new("/")), Some(b.join("tool")));
        assert_eq!(lookup("none", &path, Path::new("/")), None);
        assert_eq!(lookup("tool", "b", &dir), Some(dir.join("b/tool")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

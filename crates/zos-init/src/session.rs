//! Sessions the host opens on the control console: processes beside the container's (`zos
//! exec`) and copies in and out (`zos cp`). Each has a number the host chose; its output
//! goes back as [`Framed`] lines on the same console, ending with one [`Output::Exit`].
//!
//! init is chrooted into the container's root by now, so every path a session names, `..`
//! and symlinks included, resolves inside that root.

use crate::exec::pipe;
use crate::shutdown::console_error;
use crate::supervise::MainProcess;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use zos_init::{Exec, Framed, Input, Open, Output, Process, WindowSize};

/// Most bytes one output line carries.
const CHUNK: usize = 32 * 1024;
/// How long a session's output may still arrive after its process ended (a background
/// child holding the pipe open must not hold the session forever).
const DRAIN: Duration = Duration::from_secs(2);

/// The open sessions and the console their output goes to.
pub struct Sessions {
    console: Mutex<File>,
    /// Bytes sent that the host has not acknowledged (see [`zos_init::WINDOW`]).
    in_flight: Mutex<u64>,
    acknowledged: Condvar,
    inboxes: Mutex<HashMap<u64, Sender<Input>>>,
    main: Arc<MainProcess>,
    /// Where an [`Open::Attach`] goes, for [`Sessions::attach`] to take (it may come
    /// before that waits).
    attach_asked: Sender<AttachAsked>,
    attach_wait: Mutex<Option<Receiver<AttachAsked>>>,
    /// Ends (a message or a hang-up) when the attached process's output has all been sent.
    attach_drained: Mutex<Option<Receiver<()>>>,
}

/// An attach the host asked for: its session, its terminal's size, and its input (taken
/// from the moment it was asked, so none sent before the process starts is lost).
type AttachAsked = (u64, Option<WindowSize>, Receiver<Input>);

impl Sessions {
    /// Sessions writing on `console` (the control console, open for writing), starting
    /// processes as `main`'s children.
    pub fn new(console: File, main: Arc<MainProcess>) -> Arc<Sessions> {
        let (attach_asked, attach_wait) = mpsc::channel();
        let sessions = Arc::new(Sessions {
            console: Mutex::new(console),
            in_flight: Mutex::new(0),
            acknowledged: Condvar::new(),
            inboxes: Mutex::default(),
            main,
            attach_asked,
            attach_wait: Mutex::new(Some(attach_wait)),
            attach_drained: Mutex::default(),
        });
        sessions.hello();
        sessions
    }

    /// Tells the host `zos-init` listens (see [`zos_init::HELLO`]).
    pub fn hello(&self) {
        self.send(zos_init::HELLO, Output::Stdout(Vec::new()));
    }

    /// Starts session `session`, on a thread of its own.
    pub fn open(self: &Arc<Self>, session: u64, open: Open) {
        let (inbox, input) = mpsc::channel();
        self.lock_inboxes().insert(session, inbox);
        if let Open::Attach { size } = open {
            let _ = self.attach_asked.send((session, size, input));
            return;
        }
        let me = Arc::clone(self);
        let started = std::thread::Builder::new()
            .name(format!("session-{session}"))
            .spawn(move || {
                let (code, error) = match open {
                    Open::Exec(exec) => me.exec(session, exec, input),
                    Open::CopyOut { path } => done(me.copy_out(session, &path)),
                    Open::CopyIn { path } => done(copy_in(&path, input)),
                    // Taken above: never started on a thread.
                    Open::Attach { .. } => (125, None),
                };
                me.lock_inboxes().remove(&session);
                me.send(session, Output::Exit { code, error });
            });
        if let Err(e) = started {
            self.lock_inboxes().remove(&session);
            let error = Some(format!("starting the session: {e}"));
            self.send(session, Output::Exit { code: 125, error });
        }
    }

    /// Starts the container's process once the host attaches (see [`GuestConfig::attach`]),
    /// its stdio relayed as the host's session and copied to the console; after a minute
    /// without, it starts on the console alone (the host went away). Returns its pid.
    ///
    /// [`GuestConfig::attach`]: zos_init::GuestConfig::attach
    pub fn attach(
        self: &Arc<Self>,
        attach: zos_init::GuestAttach,
        process: &Process,
    ) -> Result<libc::pid_t, zos_init::ExitReport> {
        let asked = self
            .attach_wait
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .and_then(|wait| wait.recv_timeout(Duration::from_secs(60)).ok());
        let Some((session, size, input)) = asked else {
            console_error("nobody attached within a minute: the process runs on the console");
            return crate::exec::spawn(process, crate::exec::Stdio::Console);
        };
        let exec = Exec {
            argv: process.argv.clone(),
            stdin: attach.stdin,
            tty: attach
                .tty
                .then(|| size.unwrap_or(WindowSize { rows: 24, cols: 80 })),
            ..Exec::default()
        };
        let process = with_exec(process.clone(), &exec);
        let pipes = Pipes::open(&exec).map_err(|e| zos_init::ExitReport {
            code: 125,
            error: Some(format!("setting up stdio: {e}")),
        })?;
        let pid = crate::exec::spawn(&process, pipes.child())?;
        let ends = pipes.into_parent();
        let (done, drained) = mpsc::channel();
        self.pump(session, ends.stdout, false, done.clone(), true);
        if let Some(stderr) = ends.stderr {
            self.pump(session, stderr, true, done, true);
        }
        *self
            .attach_drained
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(drained);
        feed(pid, ends.stdin, ends.terminal, input);
        Ok(pid)
    }

    /// Waits (at most `limit`) until the attached process's last output went to the host:
    /// the VM powers off next.
    pub fn drain_attached(&self, limit: Duration) {
        let Some(drained) = self
            .attach_drained
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        let deadline = std::time::Instant::now() + limit;
        // Each pump sends one message when done; all done is the channel's hang-up.
        while drained
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .is_ok()
        {}
        let console = self.console.lock().unwrap_or_else(|e| e.into_inner());
        let _ = crate::sys::drain(&*console);
    }

    /// Hands `input` to session `session`, if it is still open.
    pub fn input(&self, session: u64, input: Input) {
        if let Some(inbox) = self.lock_inboxes().get(&session) {
            let _ = inbox.send(input);
        }
    }

    /// The host read `bytes` more (or, with `None`, a new host attached: nothing is in
    /// flight).
    pub fn acknowledge(&self, bytes: Option<u64>) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        *in_flight = bytes.map_or(0, |n| in_flight.saturating_sub(n));
        self.acknowledged.notify_all();
    }

    fn lock_inboxes(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Sender<Input>>> {
        self.inboxes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes one line for the host. A console nobody listens on takes the line and drops
    /// it; one the host reads slowly holds the writer, which holds the process's pipe.
    fn send(&self, session: u64, output: Output) {
        let Ok(mut line) = serde_json::to_vec(&Framed { session, output }) else {
            return;
        };
        line.push(b'\n');
        let len = line.len() as u64;
        // Waits while the host is behind; with no host attached, until one attaches.
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        while *in_flight > 0 && *in_flight + len > zos_init::WINDOW {
            in_flight = self
                .acknowledged
                .wait(in_flight)
                .unwrap_or_else(|e| e.into_inner());
        }
        *in_flight += len;
        drop(in_flight);
        let mut console = self.console.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = console.write_all(&line) {
            drop(console);
            console_error(&format!("cannot write to the control console: {e}"));
        }
    }

    /// Runs `exec` and relays its stdio until it ends; returns its exit code.
    fn exec(
        self: &Arc<Self>,
        session: u64,
        exec: Exec,
        input: Receiver<Input>,
    ) -> (i32, Option<String>) {
        let process = with_exec(self.main.process(), &exec);
        let stdio = match Pipes::open(&exec) {
            Ok(stdio) => stdio,
            Err(e) => return (125, Some(format!("setting up stdio: {e}"))),
        };
        let (pid, exited) = match self.main.spawn_child(&process, stdio.child()) {
            Ok(started) => started,
            Err(report) => return (report.code, report.error),
        };
        let ParentEnds {
            stdin,
            stdout,
            stderr,
            terminal,
        } = stdio.into_parent();
        let (drained, pumps_done) = mpsc::channel();
        let mut pumps = 0;
        for (fd, err) in [(Some(stdout), false), (stderr, true)] {
            if let Some(fd) = fd {
                pumps += 1;
                self.pump(session, fd, err, drained.clone(), false);
            }
        }
        drop(drained);
        feed(pid, stdin, terminal, input);
        let code = exited.recv().unwrap_or(125);
        let deadline = std::time::Instant::now() + DRAIN;
        for _ in 0..pumps {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if pumps_done.recv_timeout(left).is_err() {
                break;
            }
        }
        (code, None)
    }

    /// Sends what `fd` yields as the session's stdout (or stderr) until it ends; with
    /// `tee`, also to init's own (the console, which is the container's log).
    fn pump(
        self: &Arc<Self>,
        session: u64,
        fd: OwnedFd,
        stderr: bool,
        done: Sender<()>,
        tee: bool,
    ) {
        let me = Arc::clone(self);
        let _ = std::thread::Builder::new()
            .name(format!("pump-{session}"))
            .spawn(move || {
                let mut file = File::from(fd);
                let mut buf = vec![0u8; CHUNK];
                loop {
                    match file.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            let data = buf[..n].to_vec();
                            if tee {
                                let _ = match stderr {
                                    true => io::stderr().write_all(&data),
                                    false => io::stdout()
                                        .write_all(&data)
                                        .and_then(|_| io::stdout().flush()),
                                };
                            }
                            let output = match stderr {
                                true => Output::Stderr(data),
                                false => Output::Stdout(data),
                            };
                            me.send(session, output);
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        // EIO: a terminal whose every other end closed.
                        Err(_) => break,
                    }
                }
                let _ = done.send(());
            });
    }

    /// Sends `path` as a tar archive on the session's stdout.
    fn copy_out(self: &Arc<Self>, session: u64, path: &str) -> Result<(), String> {
        let path = checked_path(path)?;
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|e| format!("{}: {}", path.display(), plain(&e)))?;
        let name = top_name(&path);
        let out = BufWriter::with_capacity(
            CHUNK,
            StdoutOf {
                sessions: Arc::clone(self),
                session,
            },
        );
        let mut tar = tar::Builder::new(out);
        tar.follow_symlinks(false);
        let added = match meta.is_dir() {
            true => tar.append_dir_all(&name, &path),
            false => tar.append_path_with_name(&path, &name),
        };
        added
            .and_then(|_| tar.into_inner())
            .and_then(|mut out| out.flush())
            .map_err(|e| format!("archiving {}: {}", path.display(), plain(&e)))
    }
}

/// An exit for a copy: 0, or 1 with what went wrong.
fn done(result: Result<(), String>) -> (i32, Option<String>) {
    match result {
        Ok(()) => (0, None),
        Err(e) => (1, Some(e)),
    }
}

/// The container's process changed as `exec` says: its argv, added environment, and its
/// working directory and user when given. A terminal gets `TERM=xterm` unless set, as
/// Docker does.
fn with_exec(mut process: Process, exec: &Exec) -> Process {
    process.argv = exec.argv.clone();
    let mut env = exec.env.clone();
    if exec.tty.is_some() && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    for entry in env {
        let key = entry.split('=').next().unwrap_or_default().to_string();
        process
            .env
            .retain(|e| e.split('=').next() != Some(key.as_str()));
        process.env.push(entry);
    }
    if let Some(cwd) = &exec.cwd {
        process.cwd = cwd.clone();
    }
    if let Some(user) = &exec.user {
        process.user = user.clone();
    }
    process
}

/// The descriptors of a session's process: the child's ends, and the parent's.
struct Pipes {
    child_stdin: OwnedFd,
    child_out: OwnedFd,
    child_err: Option<OwnedFd>,
    tty: bool,
    parent: ParentEnds,
}

/// init's ends of a session's stdio.
struct ParentEnds {
    /// Where stdin goes; `None` when the process reads /dev/null.
    stdin: Option<OwnedFd>,
    /// Its stdout (or terminal) to read.
    stdout: OwnedFd,
    /// Its stderr to read; `None` on a terminal.
    stderr: Option<OwnedFd>,
    /// The terminal's master, for its size.
    terminal: Option<OwnedFd>,
}

impl Pipes {
    /// Pipes, or a terminal of the asked size.
    fn open(exec: &Exec) -> io::Result<Pipes> {
        if let Some(size) = exec.tty {
            let (master, slave) = openpty(size)?;
            let dup = |fd: &OwnedFd| fd.try_clone();
            return Ok(Pipes {
                child_stdin: dup(&slave)?,
                child_out: dup(&slave)?,
                child_err: Some(slave),
                tty: true,
                parent: ParentEnds {
                    stdin: exec.stdin.then(|| dup(&master)).transpose()?,
                    stdout: dup(&master)?,
                    stderr: None,
                    terminal: Some(master),
                },
            });
        }
        let (stdin_read, stdin_write) = match exec.stdin {
            true => {
                let (r, w) = pipe()?;
                (r, Some(w))
            }
            false => (File::open("/dev/null")?.into(), None),
        };
        let (out_read, out_write) = pipe()?;
        let (err_read, err_write) = pipe()?;
        Ok(Pipes {
            child_stdin: stdin_read,
            child_out: out_write,
            child_err: Some(err_write),
            tty: false,
            parent: ParentEnds {
                stdin: stdin_write,
                stdout: out_read,
                stderr: Some(err_read),
                terminal: None,
            },
        })
    }

    /// What the child is given.
    fn child(&self) -> crate::exec::Stdio {
        let out = self.child_out.as_raw_fd();
        crate::exec::Stdio::Given {
            stdin: self.child_stdin.as_raw_fd(),
            stdout: out,
            stderr: self.child_err.as_ref().map_or(out, |e| e.as_raw_fd()),
            tty: self.tty,
        }
    }

    /// init's ends; the child's are closed here, so the parent sees end-of-file once the
    /// process (and whatever it started) let go of them.
    fn into_parent(self) -> ParentEnds {
        self.parent
    }
}

/// A terminal pair (master, slave) of `size`, neither inherited by later children.
fn openpty(size: WindowSize) -> io::Result<(OwnedFd, OwnedFd)> {
    let (mut master, mut slave) = (-1, -1);
    let ws = winsize(size);
    // SAFETY: the out-pointers are valid; a null name and termios are allowed.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openpty just opened both and nothing else owns them.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [&master, &slave] {
        // SAFETY: fcntl on an open descriptor.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok((master, slave))
}

fn winsize(size: WindowSize) -> libc::winsize {
    libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// Hands a session's input to its process until the host closes the session: stdin bytes,
/// its end, terminal sizes and signals.
fn feed(
    pid: libc::pid_t,
    stdin: Option<OwnedFd>,
    terminal: Option<OwnedFd>,
    input: Receiver<Input>,
) {
    let _ = std::thread::Builder::new()
        .name(format!("stdin-{pid}"))
        .spawn(move || {
            let mut stdin = stdin.map(File::from);
            for input in input {
                match input {
                    // A process that stopped reading ends its stdin for good.
                    Input::Stdin(data) => {
                        if stdin.as_mut().is_some_and(|s| s.write_all(&data).is_err()) {
                            stdin = None;
                        }
                    }
                    Input::StdinEnd => match &terminal {
                        // A terminal has no end of its own: ^D is what its line discipline
                        // reads as one.
                        Some(_) => {
                            if let Some(s) = stdin.as_mut() {
                                let _ = s.write_all(&[4]);
                            }
                        }
                        None => stdin = None,
                    },
                    Input::Resize(size) => {
                        if let Some(t) = &terminal {
                            let ws = winsize(size);
                            // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer.
                            unsafe { libc::ioctl(t.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
                        }
                    }
                    Input::Signal(n) => {
                        let _ = crate::sys::kill(pid, n);
                    }
                }
            }
        });
}

/// A session's stdout as a byte sink, a line per write.
struct StdoutOf {
    sessions: Arc<Sessions>,
    session: u64,
}

impl Write for StdoutOf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(CHUNK);
        self.sessions
            .send(self.session, Output::Stdout(buf[..n].to_vec()));
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Unpacks the archive arriving on stdin at `path` (see [`Open::CopyIn`]).
fn copy_in(path: &str, input: Receiver<Input>) -> Result<(), String> {
    let path = checked_path(path)?;
    let into = path.is_dir();
    if !into && !path.parent().is_some_and(Path::is_dir) {
        return Err(format!(
            "{}: no such directory to copy into",
            path.parent().unwrap_or(&path).display()
        ));
    }
    // Stdin until its end; other input (a resize, a signal) means nothing to a copy.
    let stdin = move || loop {
        match input.recv() {
            Ok(Input::Stdin(data)) => return Some(data),
            Ok(Input::StdinEnd) | Err(_) => return None,
            Ok(_) => {}
        }
    };
    let mut archive = tar::Archive::new(zos_init::ChunkReader::new(stdin));
    archive.set_preserve_permissions(true);
    archive.set_overwrite(true);
    let entries = archive
        .entries()
        .map_err(|e| format!("reading the archive: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("reading the archive: {e}"))?;
        let name = entry
            .path()
            .map_err(|e| format!("reading the archive: {e}"))?
            .into_owned();
        let dest = destination(&path, into, &name)?;
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("{}: {}", parent.display(), plain(&e)))?;
        }
        entry
            .unpack(&dest)
            .map_err(|e| format!("writing {}: {}", dest.display(), plain(&e)))?;
    }
    Ok(())
}

/// Where an archive entry `name` goes: under `path` when copying into a directory, else at
/// `path` with the archive's top entry renamed to it. A name that climbs out (`..`, `/`) is
/// refused.
fn destination(path: &Path, into: bool, name: &Path) -> Result<PathBuf, String> {
    let mut parts = Vec::new();
    for c in name.components() {
        match c {
            Component::Normal(part) => parts.push(part),
            Component::CurDir => {}
            _ => {
                return Err(format!(
                    "archive entry {} leads out of {}: refused",
                    name.display(),
                    path.display()
                ))
            }
        }
    }
    let skip = usize::from(!into);
    Ok(parts
        .iter()
        .skip(skip)
        .fold(path.to_path_buf(), |p, c| p.join(c)))
}

/// A session's path: absolute, without `..` (inside the container's root it could only
/// lead back to `/`, which is never what the user meant).
fn checked_path(path: &str) -> Result<PathBuf, String> {
    let p = Path::new(path);
    if !p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
        return Err(format!(
            "{path:?}: give an absolute path inside the container, without '..'"
        ));
    }
    Ok(p.to_path_buf())
}

/// The name of `path`'s top entry in an archive: its last component, `.` for `/`.
fn top_name(path: &Path) -> PathBuf {
    path.file_name().map_or_else(|| ".".into(), PathBuf::from)
}

/// An I/O error without Rust's "(os error N)" suffix.
fn plain(e: &io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_be_absolute_and_stay_put() {
        assert!(checked_path("/etc/hosts").is_ok());
        assert!(checked_path("etc/hosts").is_err());
        assert!(checked_path("/tmp/../etc").is_err());
    }

    #[test]
    fn entries_land_under_or_as_the_destination() {
        let dest = Path::new("/data");
        assert_eq!(
            destination(dest, true, Path::new("f/a")).unwrap(),
            PathBuf::from("/data/f/a")
        );
        assert_eq!(
            destination(dest, false, Path::new("f/a")).unwrap(),
            PathBuf::from("/data/a")
        );
        assert_eq!(
            destination(dest, false, Path::new("./f")).unwrap(),
            PathBuf::from("/data")
        );
        assert!(destination(dest, true, Path::new("../etc/passwd")).is_err());
        assert!(destination(dest, true, Path::new("/etc/passwd")).is_err());
    }

    #[test]
    fn exec_changes_what_it_names() {
        let base = Process {
            argv: vec!["sh".into()],
            env: vec!["PATH=/bin".into(), "A=1".into()],
            cwd: "/app".into(),
            user: "app".into(),
        };
        let exec = Exec {
            argv: vec!["env".into()],
            env: vec!["A=2".into()],
            tty: Some(WindowSize { rows: 5, cols: 9 }),
            ..Exec::default()
        };
        let p = with_exec(base, &exec);
        assert_eq!(p.argv, ["env"]);
        assert_eq!(p.env, ["PATH=/bin", "A=2", "TERM=xterm"]);
        assert_eq!((p.cwd.as_str(), p.user.as_str()), ("/app", "app"));
    }
}

//! Running the container's process: reaping every child, forwarding signals, obeying
//! [`Control`] lines from the host, and running its healthcheck.

use crate::exec::Stdio;
use crate::session::Sessions;
use crate::shutdown::console_error;
use crate::sys::{self, Reaped};
use std::collections::HashMap;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use zos_init::{Control, GuestConfig, GuestHealthcheck, Health, HealthReport, CONTROL_TTY};

/// How long a stopped process gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// The pause before reading the control console again after it read as end-of-file (a
/// hang-up), so such a console is not spun on.
const CONTROL_IDLE: Duration = Duration::from_millis(100);
/// Longest control line kept; anything longer is garbage.
const MAX_LINE: usize = 64 * 1024;

/// The container's main process. The pid is only cleared under the lock by the reaper, so a
/// signal sent under the lock never reaches a recycled pid.
pub struct MainProcess {
    pid: Mutex<Option<libc::pid_t>>,
    stopping: AtomicBool,
    /// How the container's process was started: sessions start theirs alike.
    process: zos_init::Process,
    /// Other children (healthchecks, sessions' processes), told their exit code when the
    /// reaper reaps them. A child is spawned and entered under this lock, so the reaper
    /// (which looks here under it too) never misses one that ended at once.
    children: Mutex<HashMap<libc::pid_t, mpsc::Sender<i32>>>,
}

impl MainProcess {
    fn signal(&self, signal: libc::c_int) {
        let pid = self.pid.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pid) = *pid {
            let _ = sys::kill(pid, signal);
        }
    }

    /// Reaps every ended child; returns the main process's exit code once it has ended.
    fn reap(&self) -> Option<i32> {
        let mut pid = self.pid.lock().unwrap_or_else(|e| e.into_inner());
        let mut code = None;
        while let Reaped::Child(child, status) = sys::reap_one() {
            if Some(child) == *pid {
                *pid = None;
                code = Some(sys::exit_code(status));
            } else if let Some(told) = self.lock_children().remove(&child) {
                let _ = told.send(sys::exit_code(status));
            }
        }
        code
    }

    fn lock_children(&self) -> std::sync::MutexGuard<'_, HashMap<libc::pid_t, mpsc::Sender<i32>>> {
        self.children.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The container's process as configured.
    pub fn process(&self) -> zos_init::Process {
        self.process.clone()
    }

    /// Starts `process` as a child other than the main one; its exit code arrives on the
    /// receiver once reaped.
    pub fn spawn_child(
        &self,
        process: &zos_init::Process,
        stdio: Stdio,
    ) -> Result<(libc::pid_t, mpsc::Receiver<i32>), zos_init::ExitReport> {
        let (told, ended) = mpsc::channel();
        let mut children = self.lock_children();
        let pid = crate::exec::spawn(process, stdio)?;
        children.insert(pid, told);
        Ok((pid, ended))
    }

    fn running(&self) -> bool {
        self.pid.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// SIGTERM now, SIGKILL after the grace period if it is still running.
    fn stop(self: &Arc<Self>) {
        self.signal(libc::SIGTERM);
        if !self.stopping.swap(true, Ordering::SeqCst) {
            let me = Arc::clone(self);
            let _ = std::thread::Builder::new()
                .name("stop".into())
                .spawn(move || {
                    std::thread::sleep(STOP_GRACE);
                    me.signal(libc::SIGKILL);
                });
        }
    }
}

impl MainProcess {
    /// The container's process of `config`, not started yet.
    pub fn new(config: &GuestConfig) -> Arc<MainProcess> {
        Arc::new(MainProcess {
            pid: Mutex::new(None),
            stopping: AtomicBool::new(false),
            process: config.process.clone(),
            children: Mutex::default(),
        })
    }
}

/// Opens the control console and reads it on a thread of its own for the life of the VM;
/// returns the sessions it serves (none without a console).
pub fn start_control(main: &Arc<MainProcess>) -> Option<Arc<Sessions>> {
    let file = open_control(Duration::from_secs(5))?;
    let sessions = match file.try_clone() {
        Ok(out) => Some(Sessions::new(out, Arc::clone(main))),
        Err(e) => {
            console_error(&format!("no sessions: cannot share {CONTROL_TTY}: {e}"));
            None
        }
    };
    let (control, serving) = (Arc::clone(main), sessions.clone());
    // Without the thread the host cannot signal the process, but it still runs.
    if let Err(e) = std::thread::Builder::new()
        .name("control".into())
        .spawn(move || read_control(&control, file, serving.as_ref()))
    {
        console_error(&format!("starting the control thread: {e}"));
    }
    sessions
}

/// Supervises `pid`, `main`'s process, until it ends and returns its exit code (`128 + N`
/// for signal N).
pub fn run(main: Arc<MainProcess>, pid: libc::pid_t, config: &GuestConfig) -> i32 {
    *main.pid.lock().unwrap_or_else(|e| e.into_inner()) = Some(pid);
    if let Some(check) = &config.healthcheck {
        let (me, check) = (Arc::clone(&main), check.clone());
        let mut process = config.process.clone();
        process.argv = check.argv.clone();
        if let Err(e) = std::thread::Builder::new()
            .name("health".into())
            .spawn(move || run_checks(&me, &check, &process))
        {
            console_error(&format!("starting the healthcheck thread: {e}"));
        }
    }
    let set = sys::waited_signals();
    loop {
        match sys::wait_signal(&set) {
            libc::SIGCHLD => {
                if let Some(code) = main.reap() {
                    return code;
                }
            }
            signal => main.signal(signal),
        }
    }
}

/// Opens the control console (read and write) in raw mode (no echo, no line editing), waiting up to `wait` for
/// its device: until virtio_console has probed it, opening fails with ENODEV.
fn open_control(wait: Duration) -> Option<std::fs::File> {
    let start = Instant::now();
    loop {
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(CONTROL_TTY);
        match opened {
            Ok(file) => {
                if let Err(e) = sys::make_raw(&file) {
                    console_error(&format!("cannot set {CONTROL_TTY} raw: {e}"));
                }
                return Some(file);
            }
            Err(_) if start.elapsed() < wait => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                console_error(&format!("no control console {CONTROL_TTY}: {e}"));
                return None;
            }
        }
    }
}

/// Reads [`Control`] lines from the control console for the life of the VM.
fn read_control(
    main: &Arc<MainProcess>,
    mut file: std::fs::File,
    sessions: Option<&Arc<Sessions>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        match file.read(&mut chunk) {
            Ok(0) => std::thread::sleep(CONTROL_IDLE),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                while let Some(end) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=end).collect();
                    handle_line(main, sessions, &line);
                }
                if buf.len() > MAX_LINE {
                    buf.clear();
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // ENODEV: the port was unplugged.
            Err(_) => return,
        }
    }
}

fn handle_line(main: &Arc<MainProcess>, sessions: Option<&Arc<Sessions>>, line: &[u8]) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim();
    if text.is_empty() {
        return;
    }
    match serde_json::from_str::<Control>(text) {
        Ok(Control::Signal(n)) => main.signal(n),
        Ok(Control::Stop) => main.stop(),
        Ok(Control::Open { session, open }) => match sessions {
            Some(s) => s.open(session, open),
            None => console_error("a session was asked for, but sessions could not start"),
        },
        Ok(Control::Input { session, input }) => {
            if let Some(s) = sessions {
                s.input(session, input);
            }
        }
        Ok(Control::Attach) => {
            if let Some(s) = sessions {
                s.acknowledge(None);
                s.hello();
            }
        }
        Ok(Control::Consumed(n)) => {
            if let Some(s) = sessions {
                s.acknowledge(Some(n));
            }
        }
        Err(e) => console_error(&format!("ignoring control line {text:?}: {e}")),
    }
}

/// Runs the healthcheck every interval while the process runs; tells the host each change
/// of health.
fn run_checks(main: &Arc<MainProcess>, check: &GuestHealthcheck, process: &zos_init::Process) {
    let started = Instant::now();
    let grace = Duration::from_secs(check.start_period_secs.into());
    let mut health = Health::Starting;
    tell(health);
    let mut failures = 0;
    loop {
        std::thread::sleep(Duration::from_secs(check.interval_secs.max(1).into()));
        if !main.running() {
            return;
        }
        let passed = check_once(
            main,
            process,
            Duration::from_secs(check.timeout_secs.into()),
        );
        let now = if passed {
            failures = 0;
            Health::Healthy
        } else if started.elapsed() < grace {
            continue;
        } else {
            failures += 1;
            match failures >= check.retries.max(1) {
                true => Health::Unhealthy,
                false => health,
            }
        };
        if now != health {
            health = now;
            tell(health);
        }
    }
}

/// Runs the check once: whether it exited 0 within `timeout` (else it is killed).
fn check_once(main: &MainProcess, process: &zos_init::Process, timeout: Duration) -> bool {
    let Ok((pid, ended)) = main.spawn_child(process, Stdio::Quiet) else {
        return false;
    };
    match ended.recv_timeout(timeout) {
        Ok(code) => code == 0,
        Err(_) => {
            let _ = sys::kill(pid, libc::SIGKILL);
            false
        }
    }
}

/// Writes the health line for the host.
fn tell(health: Health) {
    let line = serde_json::to_string(&HealthReport { health }).unwrap_or_default();
    if let Err(e) = crate::shutdown::write_status(&line) {
        console_error(&format!("cannot report health to the host: {e}"));
    }
}

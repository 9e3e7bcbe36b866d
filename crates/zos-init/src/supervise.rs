//! Running the container's process: reaping every child, forwarding signals, and obeying
//! [`Control`] lines from the host.

use crate::shutdown::console_error;
use crate::sys::{self, Reaped};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use zos_init::{Control, CONTROL_TTY};

/// How long a stopped process gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// The pause before reading the control console again after it read as end-of-file (a
/// hang-up), so such a console is not spun on.
const CONTROL_IDLE: Duration = Duration::from_millis(100);
/// Longest control line kept; anything longer is garbage.
const MAX_LINE: usize = 64 * 1024;

/// The container's main process. The pid is only cleared under the lock by the reaper, so a
/// signal sent under the lock never reaches a recycled pid.
struct MainProcess {
    pid: Mutex<Option<libc::pid_t>>,
    stopping: AtomicBool,
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
            }
        }
        code
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

/// Supervises `pid` until it ends and returns its exit code (`128 + N` for signal N).
pub fn run(pid: libc::pid_t) -> i32 {
    let main = Arc::new(MainProcess {
        pid: Mutex::new(Some(pid)),
        stopping: AtomicBool::new(false),
    });
    let control = Arc::clone(&main);
    // Without the thread the host cannot signal the process, but it still runs.
    if let Err(e) = std::thread::Builder::new()
        .name("control".into())
        .spawn(move || read_control(&control))
    {
        console_error(&format!("starting the control thread: {e}"));
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

/// Opens the control console in raw mode (no echo, no line editing), waiting up to `wait` for
/// its device: until virtio_console has probed it, opening fails with ENODEV.
fn open_control(wait: Duration) -> Option<std::fs::File> {
    let start = Instant::now();
    loop {
        let opened = std::fs::OpenOptions::new()
            .read(true)
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
fn read_control(main: &Arc<MainProcess>) {
    let Some(mut file) = open_control(Duration::from_secs(5)) else {
        return;
    };
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        match file.read(&mut chunk) {
            Ok(0) => std::thread::sleep(CONTROL_IDLE),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                while let Some(end) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=end).collect();
                    handle_line(main, &line);
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

fn handle_line(main: &Arc<MainProcess>, line: &[u8]) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim();
    if text.is_empty() {
        return;
    }
    match serde_json::from_str::<Control>(text) {
        Ok(Control::Signal(n)) => main.signal(n),
        Ok(Control::Stop) => main.stop(),
        Err(e) => console_error(&format!("ignoring control line {text:?}: {e}")),
    }
}

//! The host's end of a container's control console: control lines (stop, signals) and
//! sessions (exec, copies) that `zos-init` answers with [`Framed`] lines.
//!
//! QEMU serves the console on one listening socket and talks to one connection at a time,
//! so a process keeps one [`Link`] per VM and every session and control line of that
//! process shares it; a second process's connection waits in the socket's backlog until
//! the first lets go (its lines are delivered then). The node is the one process that
//! manages its VMs, so its sessions never wait on each other.

use super::record::{load, VmState, CONTROL, QMP};
use super::Vmm;
use crate::qmp::Qmp;
use crate::spec::Boot;
use crate::{Error, Result};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};
use zos_init::{Control, Framed, Input, Open, Output};

/// Longest line read from the guest: a chunk of 32 KiB in base64, with room to spare.
const MAX_LINE: usize = 256 * 1024;
/// How long a session waits for a guest that has not answered yet (it may be booting).
const GUEST_WAIT: Duration = Duration::from_secs(60);

/// The open links of this process, by VM directory.
fn links() -> &'static Mutex<HashMap<PathBuf, Arc<Link>>> {
    static LINKS: OnceLock<Mutex<HashMap<PathBuf, Arc<Link>>>> = OnceLock::new();
    LINKS.get_or_init(Mutex::default)
}

/// One connection to a VM's control console, and where its sessions' output goes.
struct Link {
    dir: PathBuf,
    writer: Mutex<UnixStream>,
    sessions: Mutex<HashMap<u64, Sender<Output>>>,
    /// Whether the guest has said anything on this link (see [`zos_init::HELLO`]).
    heard: Mutex<bool>,
    heard_now: Condvar,
}

impl Link {
    /// This process's link to the VM in `dir`, connected now if there is none.
    fn of(dir: &Path) -> Result<Arc<Link>> {
        let mut all = links().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(link) = all.get(dir) {
            return Ok(Arc::clone(link));
        }
        let path = dir.join(CONTROL);
        let stream = UnixStream::connect(&path).map_err(|e| {
            Error::io(
                format!(
                    "connecting to the guest's control channel {}",
                    path.display()
                ),
                e,
            )
        })?;
        let reader = stream
            .try_clone()
            .map_err(|e| Error::io("sharing the control connection".into(), e))?;
        let link = Arc::new(Link {
            dir: dir.to_path_buf(),
            writer: Mutex::new(stream),
            sessions: Mutex::default(),
            heard: Mutex::new(false),
            heard_now: Condvar::new(),
        });
        // A sender that died mid-line left a fragment on the console: a newline ends it (an
        // empty or broken line is ignored) and what follows arrives whole. Then the guest
        // learns that what it sent before is not waiting for acknowledgement any more.
        link.write_raw(b"\n")?;
        link.announce()?;
        let reading = Arc::clone(&link);
        std::thread::Builder::new()
            .name("guest-console".into())
            .spawn(move || reading.read(reader))
            .map_err(|e| Error::io("starting the console reader".into(), e))?;
        all.insert(dir.to_path_buf(), Arc::clone(&link));
        Ok(link)
    }

    /// Sends one control line; a link whose VM went away is dropped and the line sent on
    /// a new one (the VM may have been started again).
    fn send_to(dir: &Path, control: &Control) -> Result<()> {
        let line = line_of(control)?;
        let link = Link::of(dir)?;
        if link.write_raw(&line).is_ok() {
            return Ok(());
        }
        link.close();
        Link::of(dir)?.write_raw(&line)
    }

    /// Tells the guest a host is here ([`Control::Attach`]); it answers with a hello.
    fn announce(&self) -> Result<()> {
        self.write_raw(&line_of(&Control::Attach)?)
    }

    /// Waits until the guest has answered on this link, announcing again every second (a
    /// guest still booting loses what it is sent before it opens its console).
    fn await_guest(&self, wait: Duration) -> Result<()> {
        let deadline = Instant::now() + wait;
        let mut heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        while !*heard {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Invalid(format!(
                    "the guest's zos-init did not answer on its control console within {}s \
                     (still booting? see its console)",
                    wait.as_secs()
                )));
            }
            drop(heard);
            self.announce()?;
            heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
            heard = self
                .heard_now
                .wait_timeout(heard, left.min(Duration::from_secs(1)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(())
    }

    fn write_raw(&self, bytes: &[u8]) -> Result<()> {
        self.writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_all(bytes)
            .map_err(|e| Error::io("sending to the guest".into(), e))
    }

    /// Hands each line from the guest to its session, until the console closes (QEMU
    /// exited): then every session still open ends.
    fn read(self: Arc<Self>, stream: UnixStream) {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        let mut unacknowledged = 0;
        loop {
            if unacknowledged >= zos_init::ACK_EVERY {
                let ack = Control::Consumed(std::mem::take(&mut unacknowledged));
                if line_of(&ack).and_then(|l| self.write_raw(&l)).is_err() {
                    break;
                }
            }
            line.clear();
            match (&mut reader)
                .take(MAX_LINE as u64)
                .read_until(b'\n', &mut line)
            {
                Ok(0) | Err(_) => break,
                Ok(_) if line.last() != Some(&b'\n') && line.len() >= MAX_LINE => {
                    // Too long to be ours: skip to the next newline.
                    let mut rest = Vec::new();
                    if reader.read_until(b'\n', &mut rest).unwrap_or(0) == 0 {
                        break;
                    }
                    unacknowledged += (line.len() + rest.len()) as u64;
                }
                Ok(n) => {
                    unacknowledged += n as u64;
                    *self.heard.lock().unwrap_or_else(|e| e.into_inner()) = true;
                    self.heard_now.notify_all();
                    if let Ok(framed) = serde_json::from_slice::<Framed>(&line) {
                        self.deliver(framed);
                    }
                }
            }
        }
        self.close();
    }

    fn deliver(&self, framed: Framed) {
        let mut sessions = self.lock_sessions();
        let over = matches!(framed.output, Output::Exit { .. });
        if let Some(to) = sessions.get(&framed.session) {
            // A session whose reader is gone is over for us.
            if to.send(framed.output).is_err() || over {
                sessions.remove(&framed.session);
            }
        }
    }

    /// Forgets this link: its sessions end (their receivers see the end), and the next use
    /// connects anew.
    fn close(&self) {
        let mut all = links().lock().unwrap_or_else(|e| e.into_inner());
        if all.get(&self.dir).is_some_and(|l| std::ptr::eq(&**l, self)) {
            all.remove(&self.dir);
        }
        drop(all);
        self.lock_sessions().clear();
        // Whoever waits for a hello stops waiting: the link is gone.
        self.heard_now.notify_all();
        let _ = self
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .shutdown(std::net::Shutdown::Both);
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Sender<Output>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `control` as one line of the console's protocol.
fn line_of(control: &Control) -> Result<Vec<u8>> {
    let mut line = serde_json::to_vec(control).map_err(|e| Error::Invalid(e.to_string()))?;
    line.push(b'\n');
    Ok(line)
}

/// Sends one line to `zos-init` over the container's control console.
pub(super) fn send_control(dir: &Path, control: &Control) -> Result<()> {
    Link::send_to(dir, control)
}

/// A session in a container: feed it with [`Session::send`], read what it sends with
/// [`Session::recv`] (one thread may feed while another reads). Dropped before its exit,
/// its process is killed.
pub struct Session {
    id: u64,
    link: Arc<Link>,
    output: Mutex<Receiver<Output>>,
    over: AtomicBool,
}

impl Session {
    /// Input for the session.
    pub fn send(&self, input: Input) -> Result<()> {
        Link::send_to(
            &self.link.dir,
            &Control::Input {
                session: self.id,
                input,
            },
        )
    }

    /// The session's next output; `None` once it is over. A VM that stopped ends its
    /// sessions with an exit of 137 and says so.
    pub fn recv(&self) -> Option<Output> {
        let output = self.output.lock().unwrap_or_else(|e| e.into_inner());
        if self.over.load(Ordering::SeqCst) {
            return None;
        }
        let output = output.recv().unwrap_or_else(|_| Output::Exit {
            code: 137,
            error: Some("the VM stopped".into()),
        });
        self.over
            .store(matches!(output, Output::Exit { .. }), Ordering::SeqCst);
        Some(output)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if !self.over.load(Ordering::SeqCst) {
            self.link.lock_sessions().remove(&self.id);
            let _ = self.send(Input::Signal(libc::SIGKILL));
        }
    }
}

/// A session number no other session of this process used, unlikely to be one another
/// process's session still sends output for.
fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    (u64::from(std::process::id()) << 32) | NEXT.fetch_add(1, Ordering::Relaxed)
}

impl Vmm {
    /// Opens a session in a running container VM (a VM-mode guest has no `zos-init` to
    /// talk to: reach it over its network).
    pub fn open_session(&self, name: &str, open: Open) -> Result<Session> {
        let link = Link::of(&self.container(name)?)?;
        link.await_guest(GUEST_WAIT)?;
        open_on(link, open)
    }

    /// Attaches to the process of a container started with `attach` set (see
    /// [`zos_init::GuestConfig::attach`]): once `zos-init` listens (within `wait`: it may
    /// be booting), it starts the process with this session as its stdio, of terminal size
    /// `size`.
    pub fn attach(
        &self,
        name: &str,
        size: Option<zos_init::WindowSize>,
        wait: Duration,
    ) -> Result<Session> {
        let link = Link::of(&self.container(name)?)?;
        link.await_guest(wait)?;
        open_on(link, Open::Attach { size })
    }

    /// The directory of `name`, a running container VM.
    fn container(&self, name: &str) -> Result<PathBuf> {
        let dir = self.existing(name)?;
        let info = self.status(name)?;
        if !info.state.is_active() {
            return Err(Error::State {
                name: name.into(),
                state: info.state.to_string(),
                what: "start it first".into(),
            });
        }
        // A stopped guest never answers: a session opened on it would wait for ever.
        if info.state == VmState::Paused {
            return Err(Error::State {
                name: name.into(),
                state: info.state.to_string(),
                what: format!("resume it first (`zos vm resume {name}`)"),
            });
        }
        // QEMU also stops a guest by itself, on a disk write error (werror=stop).
        let qemu = Qmp::connect(&dir.join(QMP)).and_then(|mut q| q.status())?;
        if qemu != "running" {
            let why = match qemu.as_str() {
                "io-error" => ": QEMU stopped it on a disk write error (is the host's disk full?)",
                _ => "",
            };
            return Err(Error::State {
                name: name.into(),
                state: format!("{qemu} in QEMU"),
                what: format!("its guest cannot answer{why}"),
            });
        }
        if !matches!(load(&dir)?.spec.boot, Boot::Container { .. }) {
            return Err(Error::Invalid(format!(
                "VM {name:?} boots its own kernel or disk: no zos-init to run sessions in; \
                 reach it over its network (SSH)"
            )));
        }
        Ok(dir)
    }
}

/// Opens a session on `link`.
fn open_on(link: Arc<Link>, open: Open) -> Result<Session> {
    let id = next_id();
    let (to, output) = mpsc::channel();
    link.lock_sessions().insert(id, to);
    let dir = link.dir.clone();
    let session = Session {
        id,
        link,
        output: Mutex::new(output),
        over: AtomicBool::new(false),
    };
    Link::send_to(&dir, &Control::Open { session: id, open })?;
    Ok(session)
}

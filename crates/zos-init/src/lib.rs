//! The contract between the host and `zos-init`, PID 1 of every zos container micro-VM.
//!
//! The host appends a tiny cpio archive holding [`CONFIG_PATH`] to the shared initramfs (Linux
//! unpacks concatenated archives as one), so each VM gets its own configuration without
//! rebuilding the base image. `zos-init` reads it, brings the guest up and runs the process;
//! when the process ends it writes one [`ExitReport`] line to the serial port [`STATUS_TTY`]
//! and powers the VM off. The host sends [`Control`] lines on the virtio console
//! [`CONTROL_TTY`]; sessions (exec, copies) answer on it with [`Framed`] lines.

use serde::{Deserialize, Serialize};

/// Where the per-VM config lives in the initramfs.
pub const CONFIG_PATH: &str = "/zos/config.json";
/// The serial port the exit report is written to: the second UART, which the host gives a
/// file. Not a virtio-serial port: each of those fills 4 MiB of guest RAM with receive
/// buffers for a line that only ever goes out.
pub const STATUS_TTY: &str = "/dev/ttyS1";
/// The index of [`STATUS_TTY`] among the machine's UARTs (QEMU's `isa-serial,index=`).
pub const STATUS_UART: u8 = 1;
/// The virtio console the host sends [`Control`] lines on. A console rather than a named
/// virtio-serial port: a single port needs no control queue, whose receive buffers would
/// hold another 4 MiB of guest RAM.
pub const CONTROL_TTY: &str = "/dev/hvc0";
/// The virtio-fs tag of the container's root filesystem.
pub const ROOT_TAG: &str = "rootfs";
/// The virtio serial of the kit disk: the read-only ext4 image of the guest kernel's
/// `modules/` (its `lib/modules/<release>`) and `config` (its `boot/config-<release>`), one
/// file every container VM shares.
pub const KIT_SERIAL: &str = "zos-kit";

/// Everything `zos-init` needs to know about its VM.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GuestConfig {
    /// Kernel modules to load, in order: paths inside the initramfs.
    pub modules: Vec<String>,
    /// The guest's hostname.
    pub hostname: String,
    /// Extra disks to mount once the root is up.
    #[serde(default)]
    pub disks: Vec<GuestDisk>,
    /// The process to run as the container.
    pub process: Process,
    /// The guest's network; `None`: only `lo`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<GuestNetwork>,
    /// Files written into the container's root (after its disks are mounted) before the
    /// process starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<GuestFile>,
    /// A check `zos-init` runs in the container now and then; its health goes to the host
    /// as [`HealthReport`] lines on [`STATUS_TTY`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<GuestHealthcheck>,
    /// The host attaches to the process (`zos run` in the foreground): it starts once the
    /// host asked ([`Open::Attach`]), its stdio relayed as that session (and still copied
    /// to the console, for the log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attach: Option<GuestAttach>,
    /// The kernel release whose kit disk ([`KIT_SERIAL`]) is attached: its modules are
    /// shown read-only at `/lib/modules/<release>` and its config at
    /// `/boot/config-<release>` in the container, so `modprobe` and config checks work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kit_release: Option<String>,
}

/// How the host attaches to the container's process.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct GuestAttach {
    /// The host sends stdin.
    pub stdin: bool,
    /// The process gets a terminal (its size comes with [`Open::Attach`]).
    pub tty: bool,
}

/// The session number of `zos-init`'s hello, one line of empty stdout: sent when it opens
/// the control console and at each [`Control::Attach`]. Lines sent to a guest that has not
/// opened its console yet are lost, so the host opens sessions only once it heard one.
pub const HELLO: u64 = 0;

/// A healthcheck, run as the container's process is (its user, environment and working
/// directory), its output discarded: exit 0 is a pass.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GuestHealthcheck {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Seconds between the end of one check and the start of the next.
    pub interval_secs: u32,
    /// Seconds a check may take before it is killed and counted as failed.
    pub timeout_secs: u32,
    /// Failures in a row that make the container unhealthy.
    pub retries: u32,
    /// Seconds after start during which failures do not count.
    pub start_period_secs: u32,
}

/// How a container with a healthcheck is doing.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// No check has passed yet.
    Starting,
    /// The last check passed.
    Healthy,
    /// `retries` checks in a row failed.
    Unhealthy,
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        })
    }
}

/// The line `zos-init` writes on [`STATUS_TTY`] when the container's health changes (the
/// host takes the last one; the exit report, which has a `code`, is told apart).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthReport {
    /// The container's health now.
    pub health: Health,
}

/// A file `zos-init` writes inside the container's root: it is chrooted there by then, so no
/// path leads outside it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GuestFile {
    /// Absolute path inside the container.
    pub path: String,
    /// What it holds.
    pub content: String,
    /// Its permission bits.
    pub mode: u32,
}

/// What `zos-init` configures before starting the process: interfaces (found by MAC),
/// `/etc/resolv.conf` and `/etc/hosts`, written inside the container's root.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct GuestNetwork {
    /// The interfaces.
    pub interfaces: Vec<GuestInterface>,
    /// Resolvers for `/etc/resolv.conf`; empty: the image's file is left as it is.
    #[serde(default)]
    pub dns: Vec<std::net::IpAddr>,
    /// Extra `/etc/hosts` lines (after localhost and the guest's own name).
    #[serde(default)]
    pub hosts: Vec<HostEntry>,
}

/// One guest interface.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GuestInterface {
    /// Its MAC, `aa:bb:cc:dd:ee:ff`: how the guest finds it.
    pub mac: String,
    /// Its address.
    pub address: std::net::Ipv4Addr,
    /// Prefix length of its network.
    pub prefix: u8,
    /// Its IPv6 address (a /64), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address6: Option<std::net::Ipv6Addr>,
    /// The default route through it, if any.
    #[serde(default)]
    pub gateway: Option<std::net::Ipv4Addr>,
    /// Its MTU.
    pub mtu: u32,
    /// More routes through it (a private network's whole range, when the default route
    /// goes elsewhere).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<GuestRoute>,
}

/// A route: `to/prefix` through the gateway `via`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GuestRoute {
    /// The destination network.
    pub to: std::net::Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// The gateway.
    pub via: std::net::Ipv4Addr,
}

/// An `/etc/hosts` line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HostEntry {
    /// The address.
    pub ip: std::net::IpAddr,
    /// Its names.
    pub names: Vec<String>,
}

/// A virtio-blk disk to mount inside the guest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GuestDisk {
    /// The disk's virtio serial number, found in `/sys/block/vd*/serial` (at most 20 bytes).
    pub serial: String,
    /// Absolute path inside the container where the disk is mounted (created if missing).
    pub mount_at: String,
    /// Filesystem type, e.g. `ext4`.
    pub fstype: String,
}

/// The container's process, resolved by the host from the image config and the user's flags.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Process {
    /// Program and arguments; `argv[0]` is looked up in the process's `PATH` if it has no `/`.
    pub argv: Vec<String>,
    /// Environment as `KEY=VALUE` strings, exactly as given to the process.
    pub env: Vec<String>,
    /// Working directory inside the container.
    pub cwd: String,
    /// `user`, `uid`, `user:group` or `uid:gid`, resolved against the container's
    /// `/etc/passwd` and `/etc/group`; empty means root.
    #[serde(default)]
    pub user: String,
}

/// The single line `zos-init` writes on [`STATUS_TTY`] before powering off.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExitReport {
    /// The container's exit code; `128 + N` when it was killed by signal N (as Docker reports).
    pub code: i32,
    /// Set when the process could not be started at all (then `code` is 126 or 127, as a
    /// shell reports), or the guest could not be set up (then `code` is 125).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A line the host sends on [`CONTROL_TTY`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Control {
    /// Deliver this signal number to the container's process.
    Signal(i32),
    /// Clean power-down: SIGTERM to the process, then power off once it has exited.
    Stop,
    /// Start a session: a process beside the container's, or a copy in or out. What it
    /// sends comes back as [`Framed`] lines with the same number.
    Open {
        /// Chosen by the host, unique on this VM for as long as the session lasts.
        session: u64,
        /// What to start.
        open: Open,
    },
    /// Input for a session.
    Input {
        /// The session.
        session: u64,
        /// The input.
        input: Input,
    },
    /// A host connected: nothing sent before is in flight any more (see [`WINDOW`]);
    /// `zos-init` answers with a hello ([`HELLO`]).
    Attach,
    /// The host has read this many more bytes of what `zos-init` sent.
    Consumed(u64),
}

/// Most bytes of [`Framed`] lines `zos-init` has in flight to the host. QEMU drops what a
/// virtio console writes while the host's socket is full (only named ports are throttled,
/// and those cost guest RAM), so the guest never sends more than the host acknowledged
/// ([`Control::Consumed`]) plus this, well under a socket's buffer (~200 KiB).
pub const WINDOW: u64 = 96 * 1024;
/// How many bytes the host reads before it acknowledges them.
pub const ACK_EVERY: u64 = 16 * 1024;

/// What a session does.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Open {
    /// Run a process in the container, as its process runs (user, environment, working
    /// directory), with what [`Exec`] changes.
    Exec(Exec),
    /// Send `path` (a file or a directory, symlinks kept as links) as a tar archive on
    /// stdout, its one top entry named after the path's last component.
    CopyOut {
        /// Absolute path inside the container.
        path: String,
    },
    /// Unpack the tar archive that arrives on stdin at `path`: into it when it is a
    /// directory, else as it (the archive's top entry renamed).
    CopyIn {
        /// Absolute path inside the container.
        path: String,
    },
    /// Start the container's process (configured with [`GuestConfig::attach`]) with its
    /// stdio as this session.
    Attach {
        /// The terminal's size, when it gets one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<WindowSize>,
    },
}

/// A process to run beside the container's.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Exec {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// `KEY=VALUE` entries added to (or replacing those of) the container's environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Working directory; the container's when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// User, as [`Process::user`]; the container's when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Whether stdin comes from [`Input::Stdin`] (else it is /dev/null).
    #[serde(default)]
    pub stdin: bool,
    /// A terminal of this size instead of pipes: stdout and stderr are then one stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<WindowSize>,
}

/// A terminal's size.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct WindowSize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// Input to a session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Input {
    /// Bytes for its stdin.
    Stdin(#[serde(with = "base64_bytes")] Vec<u8>),
    /// Its stdin ends.
    StdinEnd,
    /// Its terminal's new size.
    Resize(WindowSize),
    /// A signal for its process.
    Signal(i32),
}

/// A byte source over chunks that arrive one at a time (a session's stdin, an archive
/// relayed line by line), ending when `next` returns `None`.
pub struct ChunkReader<F> {
    next: F,
    pending: Vec<u8>,
    at: usize,
}

impl<F: FnMut() -> Option<Vec<u8>>> ChunkReader<F> {
    /// Reads the chunks `next` hands out.
    pub fn new(next: F) -> ChunkReader<F> {
        ChunkReader {
            next,
            pending: Vec::new(),
            at: 0,
        }
    }
}

impl<F: FnMut() -> Option<Vec<u8>>> std::io::Read for ChunkReader<F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.pending.len() {
            match (self.next)() {
                Some(chunk) => (self.pending, self.at) = (chunk, 0),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.pending.len() - self.at);
        buf[..n].copy_from_slice(&self.pending[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// What a session sends back.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Output {
    /// Bytes its process wrote to stdout (or its terminal).
    Stdout(#[serde(with = "base64_bytes")] Vec<u8>),
    /// Bytes its process wrote to stderr.
    Stderr(#[serde(with = "base64_bytes")] Vec<u8>),
    /// The session is over: the exit code (`128 + N` for signal N), and why it failed when
    /// it could not run at all (then 126, 127, or 125 as for the container's process).
    Exit {
        /// The exit code.
        code: i32,
        /// What went wrong, if the session could not do its work.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

/// A line `zos-init` writes on [`CONTROL_TTY`]: one session's output.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Framed {
    /// The session.
    pub session: u64,
    /// What it sent.
    pub output: Output,
}

/// Bytes as base64 text: session data travels in JSON lines, so a partial line a dead
/// sender left behind is ended by the next newline and never read as data.
pub mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `bytes` as base64.
    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    /// Reads base64 into bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_chunk_reader_yields_every_byte_in_order_across_small_and_empty_chunks() {
        let mut chunks = vec![b"ab".to_vec(), Vec::new(), b"cdefg".to_vec()].into_iter();
        let mut reader = ChunkReader::new(move || chunks.next());
        let mut buf = [0u8; 3];
        let mut got = Vec::new();
        loop {
            let n = reader.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"abcdefg");
    }
}

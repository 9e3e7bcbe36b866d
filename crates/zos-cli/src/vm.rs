//! `zos run`, `zos vm …` and `zos volume …`: argument parsing and printing around `zos-vmm`.

use crate::mount::{default_cache_dir, nix_is_root, parse_size};
use crate::session::{read_stdin, watch_resizes, Terminal};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use zos_init::{GuestAttach, Input, Output};
use zos_net::PortMap;
use zos_types::ByteSize;
use zos_vmm::disk::{self, DiskFormat};
use zos_vmm::host::Accel;
use zos_vmm::image::Overrides;
use zos_vmm::spec::{Boot, DiskAttach, FlistSource, NetSpec, SeedSpec, VmRequest, VmSpec};
use zos_vmm::{VmInfo, VmState, Vmm, VmmConfig};

/// Where VMs, volumes and the block cache live.
#[derive(Args, Clone)]
pub struct Place {
    /// Data directory: VMs in DIR/vms, volumes in DIR/volumes [default: /var/lib/zos as root,
    /// else ~/.local/share/zos]
    #[arg(long, env = "ZOS_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// Block cache shared by all flist mounts [default: /var/cache/zos/blocks as root]
    #[arg(long, env = "ZOS_CACHE_DIR", global = true)]
    cache: Option<PathBuf>,
}

impl Place {
    fn data_dir(&self) -> PathBuf {
        if let Some(d) = &self.data_dir {
            return d.clone();
        }
        if nix_is_root() {
            return PathBuf::from("/var/lib/zos");
        }
        let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
        home.join(".local/share/zos")
    }

    fn volumes(&self) -> PathBuf {
        self.data_dir().join("volumes")
    }

    fn vmm(&self) -> Result<Vmm> {
        let root = std::path::absolute(self.data_dir().join("vms"))?;
        let zos = std::env::current_exe().context("finding the zos binary")?;
        let cache = self.cache.clone().unwrap_or_else(default_cache_dir);
        Ok(Vmm::new(VmmConfig::new(
            root,
            zos,
            std::path::absolute(cache)?,
        ))?)
    }
}

/// How to build a VM from an flist (shared by `zos run` and `zos vm create`).
#[derive(Args)]
pub struct VmArgs {
    /// The flist to run (made by `zos flist pack` or `zos flist import`)
    flist: PathBuf,
    /// Name of the VM [default: generated]
    #[arg(long)]
    name: Option<String>,
    /// Virtual CPUs
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Guest memory, like 256M or 2G
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    memory: u64,
    /// Size limit of the container's writable layer
    #[arg(long, default_value = "2G", value_parser = parse_size)]
    root_size: u64,
    /// Set an environment variable (repeatable), overriding the image's
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Mount a volume (see `zos volume create`) at a path in the container (repeatable)
    #[arg(long = "volume", short = 'v', value_name = "NAME:/PATH")]
    volumes: Vec<String>,
    /// Replace the image's entrypoint (a program, split on spaces)
    #[arg(long)]
    entrypoint: Option<String>,
    /// Working directory inside the container
    #[arg(long, short = 'w')]
    workdir: Option<String>,
    /// User to run as: name, uid, name:group or uid:gid
    #[arg(long, short = 'u')]
    user: Option<String>,
    /// Hostname of the guest [default: the VM's name]
    #[arg(long)]
    hostname: Option<String>,
    /// Accelerator: auto picks kvm only where hardware virtualization exists, else tcg
    #[arg(long, default_value = "auto")]
    accel: Accel,
    /// Read blocks from these stores instead of the flist's own (repeatable)
    #[arg(long = "store", value_name = "URL")]
    stores: Vec<String>,
    /// VM mode: an SSH public key file for cloud-init (repeatable)
    #[arg(long = "ssh-key", value_name = "FILE")]
    ssh_keys: Vec<PathBuf>,
    /// VM mode: a cloud-init user-data file
    #[arg(long, value_name = "FILE")]
    user_data: Option<PathBuf>,
    /// Container mode: `default` joins the host's local network (10.77.0.0/16 on the bridge
    /// zos0, NATed out through the host), `none` leaves only `lo` [default: default as root,
    /// none otherwise: taps and NAT need root]
    #[arg(long, value_name = "default|none", value_parser = ["default", "none"])]
    network: Option<String>,
    /// Publish a guest port on the host (repeatable, Docker's syntax): HOST:GUEST or
    /// IP:HOST:GUEST, optionally /tcp (the default) or /udp; reachable on the host's
    /// addresses, 127.0.0.1 included; a host port already taken is refused before boot
    #[arg(long = "publish", short = 'p', value_name = "[IP:]HOST:GUEST[/PROTO]", value_parser = parse_port)]
    ports: Vec<PortMap>,
    /// Command and arguments, replacing the image's CMD
    #[arg(last = true)]
    command: Vec<String>,
}

fn parse_port(s: &str) -> Result<PortMap, String> {
    PortMap::parse(s).map_err(|e| e.to_string())
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    crate::flist::parse_pair(s).map_err(|e| e.to_string())
}

impl VmArgs {
    /// Turns the flags into a spec, checking the flist and volumes before anything starts.
    fn spec(&self, name: &str, place: &Place) -> Result<VmSpec> {
        let flist = std::path::absolute(&self.flist)?;
        if !flist.is_file() {
            bail!("flist {} not found", self.flist.display());
        }
        let mut seed = SeedSpec::default();
        for key in &self.ssh_keys {
            let text = std::fs::read_to_string(key)
                .with_context(|| format!("reading SSH key {}", key.display()))?;
            seed.ssh_keys.extend(
                text.lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(str::to_string),
            );
        }
        if let Some(path) = &self.user_data {
            seed.user_data = Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading user-data {}", path.display()))?,
            );
        }
        let network = match self.network.as_deref() {
            Some("none") if !self.ports.is_empty() => {
                bail!("--publish needs a network: drop --network none")
            }
            Some("none") => None,
            None if !nix_is_root() && self.ports.is_empty() => None,
            _ if !nix_is_root() => bail!(
                "the local network (--network default, --publish) needs root: run as root, or pass --network none"
            ),
            _ => Some(NetSpec {
                ports: self.ports.clone(),
                ..NetSpec::default()
            }),
        };
        let disks = self
            .volumes
            .iter()
            .map(|v| volume_attach(place, v))
            .collect::<Result<Vec<_>>>()?;
        Ok(VmRequest {
            flist: FlistSource {
                path: flist,
                stores: self.stores.clone(),
            },
            cpus: self.cpus,
            memory: self.memory,
            hostname: self.hostname.clone().unwrap_or_else(|| name.to_string()),
            accel: self.accel,
            overrides: Overrides {
                entrypoint: self
                    .entrypoint
                    .as_ref()
                    .map(|e| e.split_whitespace().map(str::to_string).collect()),
                cmd: self.command.clone(),
                env: self.env.clone(),
                workdir: self.workdir.clone(),
                user: self.user.clone(),
                root_size: self.root_size,
                seed,
                files: Vec::new(),
                healthcheck: None,
            },
            disks,
            network,
        }
        .plan()?)
    }

    fn name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("vm-{:08x}", fastrand::u32(..)))
    }
}

/// `NAME:/path` → the volume's disk, which must exist.
fn volume_attach(place: &Place, spec: &str) -> Result<DiskAttach> {
    let Some((name, path)) = spec.split_once(':') else {
        bail!("--volume {spec:?}: expected NAME:/PATH");
    };
    if !path.starts_with('/') {
        bail!("--volume {spec:?}: the mount path must be absolute");
    }
    let (file, format) = find_volume(place, name)?.with_context(|| {
        format!("--volume {spec:?}: no volume named {name:?}; create it with `zos volume create {name} --size 1G`")
    })?;
    Ok(DiskAttach {
        path: file,
        format,
        mount_at: path.to_string(),
    })
}

fn find_volume(place: &Place, name: &str) -> Result<Option<(PathBuf, DiskFormat)>> {
    check_volume_name(name)?;
    for format in [DiskFormat::Raw, DiskFormat::Qcow2] {
        let file = place.volumes().join(format!("{name}.{}", format.as_qemu()));
        if file.exists() {
            return Ok(Some((file, format)));
        }
    }
    Ok(None)
}

fn check_volume_name(name: &str) -> Result<()> {
    if !zos_vmm::is_valid_name(name) {
        bail!("bad volume name {name:?}: use 1-64 letters, digits, '-' and '_'");
    }
    Ok(())
}

/// How `zos run` in the foreground connects your stdio to the container's process.
#[derive(Args)]
pub struct RunStdio {
    /// Send stdin to the process (without it, the process reads nothing)
    #[arg(long, short = 'i')]
    interactive: bool,
    /// Give the process a terminal the size of yours (stdin must be one); its stdout and
    /// stderr then arrive as one stream
    #[arg(long, short = 't')]
    tty: bool,
}

/// Runs `zos run`: boot, relay the process's stdio (or, for a VM-mode guest, its console),
/// exit with the container's code, remove the VM.
pub fn run(args: VmArgs, place: Place, detach: bool, stdio: RunStdio) -> Result<ExitCode> {
    let vmm = place.vmm()?;
    let name = args.name();
    let mut spec = args.spec(&name, &place)?;
    let terminal = match stdio.tty {
        true => Some(Terminal::of_stdin().context(
            "-t needs a terminal on stdin: drop -t, or run zos under one (a shell, tmux, script)",
        )?),
        false => None,
    };
    let attached = match &mut spec.boot {
        Boot::Container { attach, .. } if !detach => {
            *attach = Some(GuestAttach {
                stdin: stdio.interactive,
                tty: stdio.tty,
            });
            true
        }
        _ if stdio.interactive || stdio.tty => bail!(
            "-i and -t relay a container's process; {} boots its own kernel or disk: reach it \
             over SSH (--ssh-key), or drop -i/-t to follow its console",
            args.flist.display()
        ),
        _ => false,
    };
    vmm.create(&name, spec)?;
    if let Err(e) = vmm.start(&name) {
        let _ = vmm.delete(&name);
        return Err(e.into());
    }
    if detach {
        println!("{name}");
        return Ok(ExitCode::SUCCESS);
    }
    // A reader that goes away (`zos run … | head`) must not kill us with the VM still up:
    // a write then fails, and the VM is dealt with below.
    // SAFETY: SIG_IGN is a valid disposition; nothing here relies on SIGPIPE's default.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let result = match attached {
        true => attach(&vmm, &name, stdio.interactive, terminal),
        false => follow(&vmm, &name),
    };
    if let Err(e) = vmm.delete(&name) {
        eprintln!("warning: removing VM {name}: {e}");
    }
    finish(result?)
}

/// Passes the first Ctrl-C (or SIGTERM) to the container's process and stops the VM at the
/// second, until stopped.
struct Forwarder {
    handle: signal_hook::iterator::Handle,
    thread: std::thread::JoinHandle<()>,
}

impl Forwarder {
    fn stop(self) {
        self.handle.close();
        let _ = self.thread.join();
    }
}

fn forward_signals(vmm: &Vmm, name: &str) -> Result<Forwarder> {
    let interrupts = Arc::new(AtomicUsize::new(0));
    let mut signals = signal_hook::iterator::Signals::new([libc::SIGINT, libc::SIGTERM])
        .context("installing signal handlers")?;
    let handle = signals.handle();
    let seen = interrupts.clone();
    let forward_to = name.to_string();
    let vmm_root = vmm.config().clone();
    let thread = std::thread::spawn(move || {
        let Ok(vmm) = Vmm::new(vmm_root) else { return };
        for sig in signals.forever() {
            if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                let _ = vmm.signal(&forward_to, sig);
            } else {
                let _ = vmm.stop(&forward_to, Duration::ZERO);
            }
        }
    });
    Ok(Forwarder { handle, thread })
}

/// Streams the console until the VM is no longer active; signals go as [`forward_signals`]
/// says.
fn follow(vmm: &Vmm, name: &str) -> Result<VmInfo> {
    let forwarder = forward_signals(vmm, name)?;
    let mut follower = zos_vmm::console::Follower::new(&vmm.console_path(name)?);
    let mut out = std::io::stdout();
    let info = loop {
        let info = vmm.status(name)?;
        let bytes = follower.read_new()?;
        if !bytes.is_empty() {
            out.write_all(&bytes)?;
            out.flush()?;
        }
        if !info.state.is_active() {
            break info;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    forwarder.stop();
    Ok(info)
}

/// Relays the container's process (started once we attach) to our stdio until the VM
/// powers off: stdout and stderr apart, stdin with `interactive`, a terminal of our size
/// with `terminal`. A guest that cannot be reached is followed on its console instead.
fn attach(vmm: &Vmm, name: &str, interactive: bool, terminal: Option<Terminal>) -> Result<VmInfo> {
    let size = terminal.as_ref().map(|t| {
        let size = t.size();
        zos_init::WindowSize {
            rows: size.rows,
            cols: size.cols,
        }
    });
    let session = match vmm.attach(name, size, Duration::from_secs(60)) {
        Ok(session) => Arc::new(session),
        Err(e) => {
            // zos-init starts the process on its console a minute after nobody attached.
            eprintln!("warning: cannot attach to {name} ({e}); following its console");
            return follow(vmm, name);
        }
    };
    let forwarder = forward_signals(vmm, name)?;
    if interactive {
        let to = Arc::clone(&session);
        read_stdin(move |chunk| {
            let input = chunk.map_or(Input::StdinEnd, Input::Stdin);
            to.send(input).is_ok()
        });
    }
    if terminal.is_some() {
        let to = Arc::clone(&session);
        watch_resizes(move |size| {
            let (rows, cols) = (size.rows, size.cols);
            to.send(Input::Resize(zos_init::WindowSize { rows, cols }))
                .is_ok()
        });
    }
    // Keys go to the container's terminal as typed, ^C included.
    let raw = match (&terminal, interactive) {
        (Some(t), true) => Some(t.raw()?),
        _ => None,
    };
    let (mut stdout, mut stderr) = (std::io::stdout(), std::io::stderr());
    // Until the console closes: QEMU exited. Once our stdout is closed (`zos run … | head`)
    // the process gets the SIGPIPE a pipe's writer would, and the rest is read and dropped
    // so that it is never held up by us.
    let mut open = true;
    while let Some(output) = session.recv() {
        match output {
            Output::Stdout(data)
                if open
                    && stdout
                        .write_all(&data)
                        .and_then(|_| stdout.flush())
                        .is_err() =>
            {
                open = false;
                let _ = vmm.signal(name, libc::SIGPIPE);
            }
            Output::Stderr(data) => {
                let _ = stderr.write_all(&data).and_then(|_| stderr.flush());
            }
            _ => {}
        }
    }
    drop(raw);
    let info = loop {
        let info = vmm.status(name)?;
        if !info.state.is_active() {
            break info;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    forwarder.stop();
    Ok(info)
}

/// The exit code of `zos run`: the container's, like `docker run`; 125 when the VM failed.
fn finish(info: VmInfo) -> Result<ExitCode> {
    match info.state {
        VmState::Exited { code, error } => {
            if let Some(e) = error {
                eprintln!("error: {e}");
            }
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(255)))
        }
        VmState::Stopped => Ok(ExitCode::SUCCESS),
        VmState::Crashed { reason } => bail!("VM {} failed: {reason}", info.name),
        other => bail!("VM {} ended in an unexpected state: {other}", info.name),
    }
}

/// `zos vm …`: the lifecycle of VMs one step at a time.
#[derive(Subcommand)]
pub enum VmCommand {
    /// Create a VM from an flist without starting it
    Create {
        #[command(flatten)]
        vm: Box<VmArgs>,
    },
    /// Start a created or stopped VM (its writable layer is kept across stop and start)
    Start {
        /// The VM
        name: String,
    },
    /// Power a VM down cleanly (SIGTERM to a container's process), killing it after --timeout
    Stop {
        /// The VM
        name: String,
        /// How long the guest gets to power off
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Freeze a running VM's CPUs
    Pause {
        /// The VM
        name: String,
    },
    /// Thaw a paused VM
    Resume {
        /// The VM
        name: String,
    },
    /// Remove a VM and everything it had (processes, mounts, writable layer); stops it first
    Rm {
        /// The VM
        name: String,
    },
    /// List VMs
    Ps {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Show one VM's state, spec and host memory use
    Status {
        /// The VM
        name: String,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Print a VM's console log
    Logs {
        /// The VM
        name: String,
        /// Keep printing as the console grows, until the VM stops
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Wait until a VM is no longer running; exit with its container's exit code
    Wait {
        /// The VM
        name: String,
        /// Give up (exit 1, the VM left running) after this long, e.g. 5m
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
    },
}

/// Runs `zos vm …`.
pub fn vm(cmd: VmCommand, place: Place) -> Result<ExitCode> {
    let vmm = place.vmm()?;
    match cmd {
        VmCommand::Create { vm } => {
            let name = vm.name();
            let spec = vm.spec(&name, &place)?;
            vmm.create(&name, spec)?;
            println!("{name}");
        }
        VmCommand::Start { name } => print_state(&vmm.start(&name)?),
        VmCommand::Stop { name, timeout } => print_state(&vmm.stop(&name, timeout)?),
        VmCommand::Pause { name } => print_state(&vmm.pause(&name)?),
        VmCommand::Resume { name } => print_state(&vmm.resume(&name)?),
        VmCommand::Rm { name } => {
            vmm.delete(&name)?;
            println!("{name} removed");
        }
        VmCommand::Ps { json } => {
            let all = vmm.list()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                println!(
                    "{:<20} {:<12} {:<16} {:>4} {:>8} {:>10}",
                    "NAME", "STATE", "MODE", "CPUS", "MEMORY", "HOST MEM"
                );
                for i in all {
                    println!(
                        "{:<20} {:<12} {:<16} {:>4} {:>7}M {:>10}",
                        i.name,
                        i.state.to_string(),
                        i.spec.boot.mode(),
                        i.spec.cpus,
                        i.spec.memory_mib,
                        i.memory_bytes
                            .map_or("-".into(), |b| format!("{:.1}M", b as f64 / 1048576.0))
                    );
                }
            }
        }
        VmCommand::Status { name, json } => {
            let info = vmm.status(&name)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                print_state(&info);
                if let VmState::Crashed { reason } = &info.state {
                    println!("{reason}");
                }
                print_network(&info);
            }
        }
        VmCommand::Logs { name, follow } => {
            let mut follower = zos_vmm::console::Follower::new(&vmm.console_path(&name)?);
            let mut out = std::io::stdout();
            loop {
                out.write_all(&follower.read_new()?)?;
                out.flush()?;
                if !follow || !vmm.status(&name)?.state.is_active() {
                    out.write_all(&follower.read_new()?)?;
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        VmCommand::Wait { name, timeout } => {
            let info = vmm.wait(&name, timeout)?;
            if info.state.is_active() {
                bail!(
                    "{name} is still {} after {}; it was left as it is",
                    info.state,
                    humantime::format_duration(timeout.unwrap_or_default())
                );
            }
            return finish(info);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_state(info: &VmInfo) {
    println!("{} {}", info.name, info.state);
}

/// The VM's address and published ports, one line each.
fn print_network(info: &VmInfo) {
    let Some(iface) = info.spec.network().and_then(|n| n.interface.as_ref()) else {
        println!("network: none");
        return;
    };
    println!(
        "address: {}/{} on {} (gateway {}, mac {})",
        iface.ip, iface.prefix, iface.bridge, iface.gateway, iface.mac
    );
    for p in &iface.ports {
        println!("port: {p}");
    }
}

/// `zos volume …`: disks that outlive VMs, mounted with `--volume NAME:/path`.
#[derive(Subcommand)]
pub enum VolumeCommand {
    /// Create a volume: a disk image formatted ext4
    Create {
        /// Name of the volume
        name: String,
        /// Size, like 512M or 10G
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// raw (a sparse file) or qcow2 (grows as written)
        #[arg(long, default_value = "raw")]
        format: DiskFormat,
    },
    /// List volumes
    Ls,
    /// Remove a volume and its data
    Rm {
        /// Name of the volume
        name: String,
    },
}

/// Runs `zos volume …`.
pub fn volume(cmd: VolumeCommand, place: Place) -> Result<ExitCode> {
    let dir = place.volumes();
    match cmd {
        VolumeCommand::Create { name, size, format } => {
            if find_volume(&place, &name)?.is_some() {
                bail!("a volume named {name:?} already exists");
            }
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let file = dir.join(format!("{name}.{}", format.as_qemu()));
            disk::create_disk(&file, size, format)?;
            println!("{name}");
        }
        VolumeCommand::Ls => {
            println!(
                "{:<24} {:<6} {:>10} {:>10}",
                "NAME", "FORMAT", "SIZE", "ON DISK"
            );
            let mut entries: Vec<PathBuf> = match std::fs::read_dir(&dir) {
                Ok(d) => d.flatten().map(|e| e.path()).collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
            };
            entries.sort();
            for path in entries {
                let Some(stem) = path.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
                    continue;
                };
                if stem.starts_with('.') {
                    continue; // a create in progress, or one a crash interrupted
                }
                let info = match disk::disk_info(&path) {
                    Ok(info) => info,
                    Err(e) => {
                        eprintln!("warning: {}: {e}", path.display());
                        continue;
                    }
                };
                println!(
                    "{:<24} {:<6} {:>10} {:>10}",
                    stem,
                    info.format.as_qemu(),
                    ByteSize(info.virtual_size).to_string(),
                    ByteSize(info.actual_size).to_string()
                );
            }
        }
        VolumeCommand::Rm { name } => {
            let (file, _) =
                find_volume(&place, &name)?.with_context(|| format!("no volume named {name:?}"))?;
            // A VM keeps its volumes in its record, stopped or not: removing one under it
            // would lose the data it expects to find on its next start.
            let this = std::fs::canonicalize(&file).ok();
            let users: Vec<String> = place
                .vmm()?
                .list()?
                .into_iter()
                .filter(|vm| {
                    vm.spec
                        .disks
                        .iter()
                        .any(|d| std::fs::canonicalize(&d.path).ok() == this)
                })
                .map(|vm| vm.name)
                .collect();
            if !users.is_empty() {
                bail!(
                    "volume {name:?} is used by VM {}; remove {} first (zos vm rm NAME)",
                    users.join(", "),
                    if users.len() == 1 { "it" } else { "them" }
                );
            }
            remove_volume(&file)?;
            println!("{name} removed");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn remove_volume(file: &Path) -> Result<()> {
    std::fs::remove_file(file).with_context(|| format!("removing {}", file.display()))
}

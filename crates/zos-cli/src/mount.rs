//! `zos flist mount` / `umount`: serve an flist through FUSE, in the foreground or as a
//! daemon that reports back only once the mount is ready.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use zos_flist::cache::BlockCache;
use zos_flist::store::{Allowance, IpNet, StoreError, StorePolicy};
use zos_flist::Flist;

/// Arguments of `zos flist mount`.
#[derive(Args)]
pub struct MountArgs {
    /// The .fl file
    flist: PathBuf,
    /// Empty directory to mount on
    mountpoint: PathBuf,
    /// Block cache directory, shared by all mounts [default: /var/cache/zos/blocks as root,
    /// else ~/.cache/zos/blocks]
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Largest size of the block cache; least recently used blocks are evicted beyond it
    #[arg(long, default_value = "2G", value_parser = parse_size)]
    cache_size: u64,
    /// Return once the mount is ready (or failed), leaving the filesystem served in the
    /// background until `zos flist umount`
    #[arg(long)]
    daemon: bool,
    /// With --daemon: where the background process writes its log
    #[arg(long, requires = "daemon")]
    log: Option<PathBuf>,
    /// Read blocks from these stores instead of the ones recorded in the flist (repeatable)
    #[arg(long = "store", value_name = "URL")]
    stores: Vec<String>,
    /// Reach stores as a node does for a stranger's flist: never a loopback, link-local,
    /// unspecified, multicast or broadcast address, nor one of this host's own (names are
    /// judged by every address they resolve to), nor a path on this host (dir:// stores,
    /// Redis sockets); except what --allow-store-net / --allow-store-dir allow
    #[arg(long)]
    restrict_stores: bool,
    /// With --restrict-stores: a network its stores may reach anyway, as a CIDR or one
    /// address (repeatable), e.g. 127.0.0.0/8
    #[arg(long = "allow-store-net", value_name = "CIDR", requires = "restrict_stores",
          value_parser = StorePolicy::parse_net)]
    allow_store_nets: Vec<IpNet>,
    /// With --restrict-stores: a directory whose dir:// stores and Redis sockets may be used
    /// (absolute, repeatable)
    #[arg(
        long = "allow-store-dir",
        value_name = "DIR",
        requires = "restrict_stores"
    )]
    allow_store_dirs: Vec<PathBuf>,
    /// Internal: print "ready" on stdout once mounted, then detach stdout (used by --daemon)
    #[arg(long, hide = true)]
    ready_on_stdout: bool,
}

/// Arguments of `zos flist umount`.
#[derive(Args)]
pub struct UmountArgs {
    /// Where the flist is mounted
    mountpoint: PathBuf,
    /// Detach now even if files are still open (they keep working until closed)
    #[arg(long)]
    lazy: bool,
}

pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    zos_types::ByteSize::parse(s).map(|b| b.0)
}

pub(crate) fn default_cache_dir() -> PathBuf {
    if nix_is_root() {
        return PathBuf::from("/var/cache/zos/blocks");
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("zos/blocks")
}

pub(crate) fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `zos flist mount`.
pub fn mount(args: MountArgs) -> Result<ExitCode> {
    if args.daemon {
        return daemonize(&args);
    }
    // Signals first: a SIGTERM right after mounting must unmount, not leave a dead mount.
    let mut signals = signal_hook::iterator::Signals::new([libc::SIGINT, libc::SIGTERM])
        .context("installing signal handlers")?;
    let mounted = match start(&args) {
        Ok(m) => m,
        Err(e) => {
            if args.ready_on_stdout {
                // The daemon's parent reads stdout, not the log: tell it what went wrong.
                println!("{e:#}");
            }
            return Err(e);
        }
    };
    // Unmount on Ctrl-C / SIGTERM; the session then ends and wait() returns.
    let mountpoint = args.mountpoint.clone();
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            if let Err(e) = zos_flist::mount::unmount(&mountpoint, true) {
                tracing::error!("unmount on signal: {e}");
            }
        }
    });

    if args.ready_on_stdout {
        println!("ready");
        std::io::stdout().flush()?;
        detach_stdout()?;
    } else {
        eprintln!(
            "mounted {} on {} (Ctrl-C or `zos flist umount {}` to stop)",
            args.flist.display(),
            args.mountpoint.display(),
            args.mountpoint.display()
        );
    }
    mounted.wait()?;
    Ok(ExitCode::SUCCESS)
}

impl MountArgs {
    /// The store policy asked for with --restrict-stores.
    fn policy(&self) -> Result<Option<StorePolicy>> {
        if !self.restrict_stores {
            return Ok(None);
        }
        StorePolicy::new(self.allow_store_nets.clone(), self.allow_store_dirs.clone())
            .map(Some)
            .map_err(|e| anyhow::anyhow!("--allow-store-dir: {e}"))
    }
}

/// A refused store's error, with the flag that would let it through.
fn with_allow_hint(e: anyhow::Error) -> anyhow::Error {
    match e.downcast_ref::<StoreError>() {
        Some(StoreError::Refused { allow, .. }) => {
            let flag = match allow {
                Allowance::Net(_) => "--allow-store-net",
                Allowance::Dir(_) => "--allow-store-dir",
            };
            anyhow::anyhow!("{e}; if the store is trusted, allow it with {flag} {allow}")
        }
        _ => e,
    }
}

/// Opens the flist, its stores and the cache, and mounts.
fn start(args: &MountArgs) -> Result<zos_flist::mount::Mounted> {
    let flist = Flist::open(&args.flist)?;
    let policy = args.policy()?.map(Arc::new);
    let router = crate::flist::router_for_with(&flist, &args.stores, policy.as_ref())
        .map_err(with_allow_hint)?;
    let cache_dir = args.cache.clone().unwrap_or_else(default_cache_dir);
    let cache = BlockCache::open(&cache_dir, args.cache_size, router)
        .with_context(|| format!("opening the block cache at {}", cache_dir.display()))?;
    zos_flist::mount::mount(
        flist,
        Arc::new(cache),
        &args.mountpoint,
        &zos_flist::mount::MountOptions::default(),
    )
    .with_context(|| {
        format!(
            "mounting {} on {}",
            args.flist.display(),
            args.mountpoint.display()
        )
    })
}

/// Points stdout at /dev/null, so the parent that waited for "ready" can go away without the
/// daemon dying of a broken pipe later.
fn detach_stdout() -> Result<()> {
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .context("opening /dev/null")?;
    // SAFETY: dup2 onto fd 1 with a valid open descriptor; stdout was flushed above.
    let r = unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 1) };
    if r < 0 {
        bail!("detaching stdout: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Starts `zos flist mount … --ready-on-stdout` in its own process group and waits for its
/// first line: "ready" means mounted, anything else (or nothing) is the error.
fn daemonize(args: &MountArgs) -> Result<ExitCode> {
    let exe = std::env::current_exe().context("finding the zos binary")?;
    let cache = args.cache.as_deref().map(absolute).transpose()?;
    let policy = args.policy()?;
    let log = match &args.log {
        Some(path) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening log {}", path.display()))?,
        ),
        None => Stdio::null(),
    };
    let (mut child, lines, first) = zos_vmm::FlistMount {
        zos: &exe,
        flist: &absolute(&args.flist)?,
        at: &absolute(&args.mountpoint)?,
        cache: cache.as_deref(),
        cache_size: args.cache_size,
        stores: &args.stores,
        policy: policy.as_ref(),
    }
    .start(log)
    .context("starting the mount process")?;
    match first {
        Some(line) if line == "ready" => {
            println!(
                "mounted {} on {} (pid {})",
                args.flist.display(),
                args.mountpoint.display(),
                child.id()
            );
            Ok(ExitCode::SUCCESS)
        }
        first => {
            let status = child.wait().context("waiting for the mount process")?;
            let mut message: Vec<String> = first.into_iter().collect();
            message.extend(lines.map_while(|l| l.ok()));
            if message.is_empty() {
                bail!("mount process exited ({status}) before the mount was ready");
            }
            bail!("{}", message.join("\n").trim_start_matches("error: "))
        }
    }
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))
}

/// Runs `zos flist umount`.
pub fn umount(args: UmountArgs) -> Result<ExitCode> {
    zos_flist::mount::unmount(&args.mountpoint, args.lazy)?;
    Ok(ExitCode::SUCCESS)
}

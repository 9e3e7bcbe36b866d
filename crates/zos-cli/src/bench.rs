//! `zos bench …`: benchmarks that print a table next to a floor measured in the same run.
//!
//! The zos steps run the real `zos` binary as child processes, so each one is measured the way
//! a user runs it (startup included) and its peak memory is that child's alone.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use serde::Serialize;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// Benchmarks, each printing one table.
#[derive(Subcommand)]
pub enum BenchCommand {
    /// Time micro-VM starts and measure their memory against a bare QEMU boot
    ///
    /// Packs two images (busybox; busybox plus a 1 GiB file) whose image config prints a
    /// marker, then measures, interleaved over --runs: a bare `qemu-system-x86_64` boot of the
    /// boot kit's kernel and initramfs until `/init` prints (the floor), and `zos run` of each
    /// image until the marker reaches its stdout (create, flist mount, overlay, virtiofsd,
    /// QEMU, boot, entrypoint). Then ten `zos run` at once (time until all exited), and host
    /// memory per idle 256 MiB container: PSS of QEMU, virtiofsd and the flist mount, mean
    /// over three. Target: `zos run` within 1.25x of the bare boot (medians).
    #[command(after_help = "Examples:\n  zos bench vm\n  zos bench vm --runs 5 --json")]
    Vm {
        /// Work directory (default: a fresh directory under /var/tmp)
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Keep the work directory
        #[arg(long)]
        keep: bool,
        /// Repetitions of each timed boot (the median is reported)
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Time the node: API throughput and latency, restart, deploy-to-running
    ///
    /// Starts a `zos node run` in a fresh work dir, then measures: zmount-only deployments
    /// accepted per second through the API (signed beforehand; 4 clients; signature check,
    /// admission and a database transaction each), the time until their disks are made,
    /// p50/p99 latency of signed GETs, the node's restart time with all of them stored
    /// (SIGTERM, start, until the API answers), and, interleaved over --runs, `zos run` of a
    /// busybox image until its output (the floor) against deploying the same image as a
    /// zmachine until its output shows in the API's log. Targets: >= 1000 deployments/s;
    /// deploy-to-running within 1.1x of `zos run` (medians).
    #[command(after_help = "Examples:\n  zos bench node\n  zos bench node --count 200 --runs 1")]
    Node {
        /// How many deployments to send (and keep stored for the restart)
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
        count: u32,
        /// Repetitions of the deploy-to-running comparison (the median is reported)
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Keep the work directory
        #[arg(long)]
        keep: bool,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Time flist pack, unpack and mount against `cp -a` and local reads of the same tree
    ///
    /// Generates a deterministic tree (20,000 text-like files of 1-16 KiB in 200 directories,
    /// plus four 128 MiB files that are half random, half repetitive), then measures, each as
    /// a child process: `cp -a` of the tree (the floor), `zos flist pack` into a new, empty
    /// dir:// store, `zos flist unpack` into a fresh directory (checked against the tree with
    /// `diff -r`), the store size, and a second pack into that same store after changing 1% of
    /// the small files (how many blocks the store already had). Each timed step runs `--runs`
    /// times, every time on fresh state so it does the same work, with the repetitions
    /// interleaved (cp, pack, unpack, cp, pack, unpack, …) so a slow phase of the disk hits all
    /// steps alike; `sync` runs before each. Prints the median wall time of each step, the
    /// throughput from it, the min-max range, the peak RSS (max over the runs), and whether the
    /// targets are met, judged on the medians: pack >= 0.5x and unpack >= 0.7x the throughput of
    /// `cp -a`, peak RSS < 256 MiB. A missed target is reported, not an error; a failing step or
    /// an unpacked tree that differs from the source is.
    ///
    /// Then a second table, "mount", times `zos flist mount --daemon` (FUSE) with the same
    /// runs and medians, each row next to its floor measured in the same run: a cold read of a
    /// 128 MiB random file through a fresh mount with a fresh, empty cache, a warm (second) read
    /// and a third read (by then served by passthrough from the cache's whole copy) through the
    /// same mount, all against a warm read of the same file on local disk
    /// (open + read to the end in 1 MiB chunks, in-process); `find -printf '%s %m %u %T@\n'`
    /// over the tree through a fresh mount against the same on the local tree; `ls -f` and
    /// `ls -l` of a 100,000-entry directory (its own flist) through a fresh mount against the
    /// local directory; and lazy start, `mount --daemon` until it returns plus reading one small
    /// file, of a ~1 GiB image against a ~10 MiB one (same store, fresh cache each). Targets:
    /// warm read >= 0.7x local throughput, find and ls within 3x local time, the 1 GiB lazy
    /// start within 1.2x the 10 MiB one. Every mount is unmounted, also on errors. Without a
    /// usable FUSE (no /dev/fuse or no fusermount3) the table is skipped with the reason.
    #[command(
        after_help = "Examples:\n  zos bench flist\n  zos bench flist --scale 0.01 --json\n  \
zos bench flist --runs 5\n  \
zos bench flist --dir /mnt/nvme/bench --keep"
    )]
    Flist {
        /// Work directory (must be empty or not exist; needs about 2x the tree size plus one
        /// store of ~0.5x the tree per run, plus ~1.1 GB for the mount table, ~3.6 GB at scale
        /// 1 with 3 runs). Default: a fresh directory under /var/tmp
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Keep the generated trees, the flists, and the last run's copy, unpacked tree and store
        /// instead of removing them (earlier runs' are removed as the benchmark goes, and so are
        /// the mount table's mountpoints and caches)
        #[arg(long)]
        keep: bool,
        /// How many times to time each step; the table shows the median and the min-max range
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
        runs: u32,
        /// Multiply the number of files and the file sizes by this (0.01: 200 small files in 2
        /// directories and four 1.28 MiB files; the 100,000-entry directory keeps at least
        /// 1,000), to run a quick version
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Print the results as JSON instead of a table
        #[arg(long)]
        json: bool,
    },
}

/// Runs one benchmark command.
pub fn run(cmd: BenchCommand) -> Result<ExitCode> {
    match cmd {
        BenchCommand::Vm {
            dir,
            keep,
            runs,
            json,
        } => crate::bench_vm::bench_vm(dir, keep, runs, json),
        BenchCommand::Node {
            count,
            runs,
            keep,
            json,
        } => crate::bench_node::bench_node(count as usize, runs, keep, json),
        BenchCommand::Flist {
            dir,
            keep,
            scale,
            runs,
            json,
        } => bench_flist(dir, keep, scale, runs, json),
    }
}

const MIB: u64 = 1024 * 1024;
/// Seed of the generated tree: fixed so every run (and every machine) packs the same bytes.
const SEED: u64 = 0x7a05_f115_7be4_c401;
/// Seed of the rewritten 1%: different from SEED so the new content differs from the old.
const CHANGE_SEED: u64 = 0xc4a9_6ed0_0000_0001;

/// Targets from the issue: zos should cost at most ~2x (pack) and ~1.4x (unpack) a plain copy.
const PACK_TARGET: f64 = 0.5;
const UNPACK_TARGET: f64 = 0.7;
const RSS_TARGET_MIB: f64 = 256.0;
/// Mount targets from the issue: a warm read close to local disk, metadata walks within 3x of
/// local, and start-up that does not grow with the image (nothing fetched before first use).
const WARM_READ_TARGET: f64 = 0.7;
const METADATA_TARGET: f64 = 3.0;
const LAZY_START_TARGET: f64 = 1.2;

/// Seed of the mount table's random files: not SEED, so they share no blocks with the tree.
const MOUNT_SEED: u64 = 0x3c1d_90a7_5e2b_8f64;
/// Read size of the in-process reads, the size the issue names.
const READ_CHUNK: usize = MIB as usize;
/// Random files added to the tree's big files to make the ~1 GiB lazy-start image.
const LAZY_EXTRA_FILES: usize = 4;
/// The small file both lazy-start images hold, read right after mounting.
const HOSTNAME: &str = "etc/hostname";
const HOSTNAME_TEXT: &[u8] = b"zos-bench\n";

/// Small English-ish vocabulary: content built from it compresses roughly like source or text.
const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "with",
    "was",
    "on",
    "be",
    "at",
    "by",
    "this",
    "had",
    "not",
    "are",
    "but",
    "from",
    "or",
    "have",
    "an",
    "they",
    "which",
    "one",
    "you",
    "were",
    "all",
    "we",
    "when",
    "your",
    "can",
    "said",
    "there",
    "use",
    "each",
    "node",
    "block",
    "store",
    "container",
    "image",
    "file",
    "directory",
    "network",
    "kernel",
    "config",
    "value",
    "return",
    "error",
    "struct",
    "function",
    "string",
    "buffer",
    "package",
    "version",
    "install",
    "service",
    "deploy",
    "mount",
    "//",
    "{",
    "}",
    "=",
    "0",
    "1",
    "#",
];

/// Shape of the generated tree, derived from `--scale`.
#[derive(Serialize, Clone, Copy)]
struct Shape {
    small_files: usize,
    dirs: usize,
    big_files: usize,
    big_file_bytes: u64,
}

impl Shape {
    fn new(scale: f64) -> Result<Shape> {
        if !scale.is_finite() || scale <= 0.0 {
            bail!("--scale {scale}: must be a positive number, e.g. 0.01 or 1");
        }
        // At least one of each so a tiny scale still exercises every code path.
        let count = |n: f64| ((n * scale).round() as usize).max(1);
        Ok(Shape {
            small_files: count(20_000.0),
            dirs: count(200.0),
            big_files: 4,
            big_file_bytes: ((128.0 * MIB as f64 * scale).round() as u64).max(1),
        })
    }
}

/// One line of the table.
#[derive(Serialize)]
struct Row {
    step: String,
    /// Median over the runs.
    seconds: Option<f64>,
    /// Wall seconds of each run, in run order (empty for a row that times nothing).
    seconds_per_run: Vec<f64>,
    /// From the median seconds.
    mb_per_s: Option<f64>,
    /// Max over the runs.
    peak_rss_mib: Option<f64>,
    notes: String,
}

/// One target from the issue and whether this run met it.
#[derive(Serialize)]
struct Target {
    name: String,
    value: f64,
    target: String,
    met: bool,
}

/// Block counts of the second pack, the dedup row's numbers.
#[derive(Serialize)]
struct Dedup {
    changed_files: usize,
    blocks: u64,
    blocks_sent: u64,
    blocks_present: u64,
    dedup_ratio: f64,
}

/// Everything `--json` prints.
#[derive(Serialize)]
struct Report {
    tree: Shape,
    runs: usize,
    tree_bytes: u64,
    store_bytes: u64,
    store_blocks: u64,
    fl_bytes: u64,
    second_pack: Dedup,
    rows: Vec<Row>,
    targets: Vec<Target>,
    /// The mount table; absent when skipped (then `mount_skipped` says why) or failed.
    mount: Option<MountReport>,
    mount_skipped: Option<String>,
}

/// Shape of the mount table's inputs, derived from `--scale` and the tree.
#[derive(Serialize, Clone, Copy)]
struct MountShape {
    /// The file read cold and warm: random, so no block of it dedups.
    read_file_bytes: u64,
    /// Entries under the tree, what `find` walks.
    tree_entries: u64,
    /// Empty files in the directory `ls` lists.
    dir_entries: usize,
    lazy_big_bytes: u64,
    lazy_small_bytes: u64,
}

impl MountShape {
    fn new(scale: f64, shape: &Shape) -> MountShape {
        let lazy_small_data = ((10.0 * MIB as f64 * scale).round() as u64).max(1);
        MountShape {
            read_file_bytes: shape.big_file_bytes,
            tree_entries: 0,
            // At least 1,000, so a quick run still lists a directory big enough to time.
            dir_entries: ((100_000.0 * scale).round() as usize).max(1000),
            lazy_big_bytes: (shape.big_files + LAZY_EXTRA_FILES) as u64 * shape.big_file_bytes
                + HOSTNAME_TEXT.len() as u64,
            lazy_small_bytes: lazy_small_data + HOSTNAME_TEXT.len() as u64,
        }
    }
}

/// One line of the mount table: a step through the mount next to its floor.
#[derive(Serialize)]
struct MountRow {
    step: String,
    /// Median over the runs.
    seconds: f64,
    seconds_per_run: Vec<f64>,
    /// What the floor is.
    floor: String,
    floor_seconds: f64,
    floor_seconds_per_run: Vec<f64>,
    /// seconds / floor_seconds (of the medians): above 1 is slower than the floor.
    time_ratio: f64,
    /// From the median seconds, for the rows that read a file.
    mb_per_s: Option<f64>,
    floor_mb_per_s: Option<f64>,
    /// Peak RSS (VmHWM) of the mount daemon, max over the runs; absent when not known.
    daemon_peak_rss_mib: Option<f64>,
    notes: String,
}

/// The mount table and its targets.
#[derive(Serialize)]
struct MountReport {
    shape: MountShape,
    rows: Vec<MountRow>,
    targets: Vec<Target>,
}

/// The work directory; removes what the benchmark wrote when dropped, unless kept.
struct WorkDir {
    root: PathBuf,
    /// Whether we created `root` (then it goes too), or it existed empty (then only its contents).
    created: bool,
    keep: bool,
}

impl WorkDir {
    fn new(dir: Option<PathBuf>, keep: bool) -> Result<WorkDir> {
        let (root, created) = match dir {
            Some(d) => {
                let created = match std::fs::read_dir(&d) {
                    Ok(mut entries) => {
                        // Refuse a non-empty directory: cleanup removes everything in it.
                        if entries.next().is_some() {
                            bail!("--dir {}: must be empty or not exist", d.display());
                        }
                        false
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        std::fs::create_dir_all(&d)
                            .with_context(|| format!("creating {}", d.display()))?;
                        true
                    }
                    Err(e) => return Err(e).with_context(|| format!("reading {}", d.display())),
                };
                (d, created)
            }
            None => (fresh_temp_dir()?, true),
        };
        // Absolute, because the store URL (dir:///…) is recorded in the flist and read back.
        let root = root
            .canonicalize()
            .with_context(|| format!("resolving {}", root.display()))?;
        Ok(WorkDir {
            root,
            created,
            keep,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kept work directory {}", self.root.display());
            return;
        }
        let result = if self.created {
            std::fs::remove_dir_all(&self.root)
        } else {
            std::fs::read_dir(&self.root).and_then(|entries| {
                for e in entries {
                    let p = e?.path();
                    if p.is_dir() {
                        std::fs::remove_dir_all(&p)?;
                    } else {
                        std::fs::remove_file(&p)?;
                    }
                }
                Ok(())
            })
        };
        if let Err(e) = result {
            eprintln!("warning: cleaning up {}: {e}", self.root.display());
        }
    }
}

/// A new directory under /var/tmp (not /tmp: that is often a small tmpfs, and RAM would skew
/// the numbers).
fn fresh_temp_dir() -> Result<PathBuf> {
    let base = Path::new("/var/tmp");
    let mut rng = fastrand::Rng::new();
    for _ in 0..16 {
        let p = base.join(format!(
            "zos-bench-{}-{:08x}",
            std::process::id(),
            rng.u32(..)
        ));
        match std::fs::create_dir(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", p.display())),
        }
    }
    bail!(
        "could not create a fresh directory under {}",
        base.display()
    )
}

fn progress(msg: &str) {
    eprintln!("{msg}");
}

/// Flushes dirty pages so writeback of one step is not billed to the next.
fn sync() {
    // SAFETY: sync(2) takes no arguments, touches no memory of ours and cannot fail.
    unsafe { libc::sync() };
}

fn bench_flist(
    dir: Option<PathBuf>,
    keep: bool,
    scale: f64,
    runs: u32,
    json: bool,
) -> Result<ExitCode> {
    let shape = Shape::new(scale)?;
    let n = usize::try_from(runs).context("--runs out of range")?;
    let exe = std::env::current_exe().context("finding the zos binary to benchmark")?;
    let work = WorkDir::new(dir, keep)?;
    progress(&format!("work directory {}", work.root.display()));

    let tree = work.path("tree");
    progress(&format!(
        "generating tree… ({} small files in {} dirs, {} x {:.2} MiB)",
        shape.small_files,
        shape.dirs,
        shape.big_files,
        shape.big_file_bytes as f64 / MIB as f64
    ));
    let tree_bytes = generate_tree(&tree, &shape)?;
    // Outputs of a run are removed once no longer needed, so the work directory holds one copy
    // at a time; with --keep, the last run's stay for inspection.
    let discard = |path: &Path, run: usize| -> Result<()> {
        if keep && run + 1 == n {
            return Ok(());
        }
        std::fs::remove_dir_all(path).with_context(|| format!("removing {}", path.display()))
    };
    let pack_cmd = |fl: &Path, store_url: &str| {
        let mut cmd = Command::new(&exe);
        cmd.args(["flist", "pack"])
            .arg(&tree)
            .arg("-o")
            .arg(fl)
            .args(["--store", store_url, "--quiet", "--json"]);
        cmd
    };

    // Every repetition starts from fresh state (new copy target, new empty store and .fl, new
    // unpack target), so each does the same work; interleaving them spreads slow disk phases
    // (writeback) over all steps instead of one.
    let mut cps = Vec::with_capacity(n);
    let mut packs = Vec::with_capacity(n);
    let mut pack_numbers = Vec::with_capacity(n);
    let mut unpacks = Vec::with_capacity(n);
    let mut stores = Vec::with_capacity(n);
    let mut first_store = None;
    for r in 0..n {
        let run = format!("run {}/{n}", r + 1);

        progress(&format!("{run}: cp -a…"));
        let copy = work.path(&format!("cp-{}", r + 1));
        sync();
        cps.push(measure(
            Command::new("cp").arg("-a").arg(&tree).arg(&copy),
            "cp -a",
        )?);
        discard(&copy, r)?;

        progress(&format!("{run}: pack…"));
        let store = work.path(&format!("store-{}", r + 1));
        let store_url = format!("dir://{}", store.display());
        let fl = work.path(&format!("a-{}.fl", r + 1));
        sync();
        let pack = measure(&mut pack_cmd(&fl, &store_url), "zos flist pack")?;
        pack_numbers.push(PackNumbers::parse(&pack.stdout)?);
        packs.push(pack);
        if r == 0 {
            // Before the second pack adds the changed files' blocks.
            let (bytes, blocks) = dir_usage(&store)?;
            let fl_bytes = std::fs::metadata(&fl)
                .with_context(|| format!("reading {}", fl.display()))?
                .len();
            first_store = Some((bytes, blocks, fl_bytes));
        }

        progress(&format!("{run}: unpack…"));
        let out = work.path(&format!("out-{}", r + 1));
        sync();
        unpacks.push(measure(
            Command::new(&exe)
                .args(["flist", "unpack"])
                .arg(&fl)
                .arg(&out)
                .arg("--quiet"),
            "zos flist unpack",
        )?);
        // A fast unpack that restores the wrong bytes is worthless, so a difference fails the
        // run. Every run's unpack is checked: with the trees still in the page cache it is
        // cheap next to the steps themselves.
        progress(&format!("{run}: diff -r (checking the unpacked tree)…"));
        let diff = measure(
            Command::new("diff")
                .args(["-r", "-q", "--no-dereference"])
                .arg(&tree)
                .arg(&out),
            "diff -r of the source tree and the unpacked tree",
        )?;
        progress(&format!(
            "{run}: diff -r: identical ({:.1} s)",
            diff.seconds
        ));
        discard(&out, r)?;
        stores.push((store, store_url));
    }

    // Each repetition packs the changed tree into the store its own first pack filled, so each
    // finds the same blocks present.
    let changed = change_small_files(&tree, &shape)?;
    let mut packs2 = Vec::with_capacity(n);
    let mut pack2_numbers = Vec::with_capacity(n);
    for (r, (store, store_url)) in stores.iter().enumerate() {
        progress(&format!(
            "run {}/{n}: pack after changing {changed} small files (1%)…",
            r + 1
        ));
        let fl = work.path(&format!("b-{}.fl", r + 1));
        sync();
        let pack2 = measure(&mut pack_cmd(&fl, store_url), "zos flist pack (1% changed)")?;
        pack2_numbers.push(PackNumbers::parse(&pack2.stdout)?);
        packs2.push(pack2);
        // The last store stays for the mount table: its flist matches the tree as it is now.
        if r + 1 < n {
            discard(store, r)?;
        }
    }

    let (last_store, last_url) = stores
        .last()
        .context("no run was made (--runs must be at least 1)")?;
    let (mount, mount_skipped) = match fuse_unusable() {
        Some(reason) => {
            progress(&format!("mount table skipped: {reason}"));
            (Ok(None), Some(reason))
        }
        None => {
            let inputs = MountInputs {
                exe: &exe,
                work: &work,
                tree: &tree,
                tree_fl: &work.path(&format!("b-{n}.fl")),
                store_url: last_url,
                shape: MountShape::new(scale, &shape),
                big_files: shape.big_files,
                runs: n,
                keep,
            };
            (bench_mount(&inputs).map(Some), None)
        }
    };
    discard(last_store, n - 1)?;

    let (store_bytes, store_blocks, fl_bytes) =
        first_store.context("no run was made (--runs must be at least 1)")?;
    let (Some(r1), Some(r2)) = (pack_numbers.first(), pack2_numbers.first()) else {
        bail!("no run was made (--runs must be at least 1)");
    };
    let dedup = Dedup {
        changed_files: changed,
        blocks: r2.blocks,
        blocks_sent: r2.blocks_sent,
        blocks_present: r2.blocks_present,
        dedup_ratio: if r2.blocks == 0 {
            0.0
        } else {
            r2.blocks_present as f64 / r2.blocks as f64
        },
    };
    let cp = Timing::of(&cps);
    let pack1 = Timing::of(&packs);
    let unpack = Timing::of(&unpacks);
    let pack2 = Timing::of(&packs2);
    let mb_s = |secs: f64| tree_bytes as f64 / 1e6 / secs;
    let timed = |step: &str, t: &Timing, notes: String| Row {
        step: step.into(),
        seconds: Some(t.median),
        seconds_per_run: t.seconds.clone(),
        mb_per_s: Some(mb_s(t.median)),
        peak_rss_mib: Some(t.peak_rss_mib),
        notes: format!("{}; {notes}", t.spread()),
    };
    let rows = vec![
        timed("cp -a", &cp, "the floor: same tree, same run".into()),
        timed(
            "pack",
            &pack1,
            format!(
                "new store: {} files, {} blocks, {} sent{}",
                r1.files,
                r1.blocks,
                r1.blocks_sent,
                PackNumbers::differences(&pack_numbers)
            ),
        ),
        timed("unpack", &unpack, "fresh target; diff -r: identical".into()),
        Row {
            step: "store size".into(),
            seconds: None,
            seconds_per_run: Vec::new(),
            mb_per_s: None,
            peak_rss_mib: None,
            notes: format!(
                "store {:.1} MiB in {} blocks + .fl {:.2} MiB = {:.3}x tree ({:.1} MiB)",
                store_bytes as f64 / MIB as f64,
                store_blocks,
                fl_bytes as f64 / MIB as f64,
                (store_bytes + fl_bytes) as f64 / tree_bytes as f64,
                tree_bytes as f64 / MIB as f64
            ),
        },
        timed(
            "pack (1% changed)",
            &pack2,
            format!(
                "{changed} files changed: {} blocks, {} sent, {} present, dedup {:.3}{}",
                dedup.blocks,
                dedup.blocks_sent,
                dedup.blocks_present,
                dedup.dedup_ratio,
                PackNumbers::differences(&pack2_numbers)
            ),
        ),
    ];

    // Throughput ratios equal inverse time ratios: both move the same tree bytes.
    let pack_ratio = cp.median / pack1.median;
    let unpack_ratio = cp.median / unpack.median;
    let max_rss = [&pack1, &unpack, &pack2]
        .iter()
        .map(|t| t.peak_rss_mib)
        .fold(0.0, f64::max);
    let targets = vec![
        Target {
            name: "pack / cp -a throughput".into(),
            value: pack_ratio,
            target: format!(">= {PACK_TARGET}x"),
            met: pack_ratio >= PACK_TARGET,
        },
        Target {
            name: "unpack / cp -a throughput".into(),
            value: unpack_ratio,
            target: format!(">= {UNPACK_TARGET}x"),
            met: unpack_ratio >= UNPACK_TARGET,
        },
        Target {
            name: "max peak RSS of zos (MiB)".into(),
            value: max_rss,
            target: format!("< {RSS_TARGET_MIB} MiB"),
            met: max_rss < RSS_TARGET_MIB,
        },
    ];

    let report = Report {
        tree: shape,
        runs: n,
        tree_bytes,
        store_bytes,
        store_blocks,
        fl_bytes,
        second_pack: dedup,
        rows,
        targets,
        mount: None,
        mount_skipped,
    };
    // A failed mount table still prints the first table (its numbers are good), then fails.
    let (report, mount_error) = match mount {
        Ok(m) => (Report { mount: m, ..report }, None),
        Err(e) => (report, Some(e)),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    if let Some(e) = mount_error {
        return Err(e.context("mount table"));
    }
    // Missed targets are findings, not failures: the run itself succeeded.
    Ok(ExitCode::SUCCESS)
}

/// What the mount table needs from the first one.
struct MountInputs<'a> {
    exe: &'a Path,
    work: &'a WorkDir,
    /// The tree as it is now (after the 1% change), the local side of `find`.
    tree: &'a Path,
    /// The flist of that tree, in `store_url`.
    tree_fl: &'a Path,
    /// Where the mount table's own images go too, so every mount reads the same kind of store.
    store_url: &'a str,
    shape: MountShape,
    big_files: usize,
    runs: usize,
    keep: bool,
}

/// Why FUSE cannot be used here, if it cannot.
fn fuse_unusable() -> Option<String> {
    // Opening it is the real test: it can exist yet be denied (unprivileged containers).
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        return Some(format!("cannot open /dev/fuse: {e}"));
    }
    let on_path = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|d| d.join("fusermount3").is_file())
    });
    if !on_path {
        return Some("fusermount3 not found on PATH".to_owned());
    }
    None
}

/// A `zos flist mount --daemon`; unmounted lazily when dropped unless `finish` unmounted it,
/// so an error between mounting and unmounting never leaves a mount behind.
struct Mount {
    exe: PathBuf,
    point: PathBuf,
    cache: PathBuf,
    /// The background process serving the mount, from what `--daemon` printed.
    daemon: Option<u32>,
    unmounted: bool,
}

impl Mount {
    /// Mounts `fl` on a new directory `point` with a new, empty cache `cache`; returns the
    /// mount and the wall seconds of `zos flist mount --daemon` (it returns once mounted).
    fn start(exe: &Path, fl: &Path, point: &Path, cache: &Path) -> Result<(Mount, f64)> {
        for d in [point, cache] {
            std::fs::create_dir(d).with_context(|| format!("creating {}", d.display()))?;
        }
        // The guard exists before the mount does, so even a failure after the kernel has the
        // mount (reading the command's output) unmounts it.
        let mut mount = Mount {
            exe: exe.to_owned(),
            point: point.to_owned(),
            cache: cache.to_owned(),
            daemon: None,
            unmounted: false,
        };
        let out = measure(
            Command::new(exe)
                .args(["flist", "mount"])
                .arg(fl)
                .arg(point)
                .arg("--daemon")
                .arg("--cache")
                .arg(cache),
            "zos flist mount --daemon",
        )?;
        mount.daemon = daemon_pid(&out.stdout);
        Ok((mount, out.seconds))
    }

    /// Peak RSS of the daemon so far (VmHWM), read before unmounting: it is not our child, so
    /// wait4 cannot report it.
    fn peak_rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.daemon?)).ok()?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()?;
        Some(kib / 1024.0)
    }

    /// Unmounts, waits for the daemon to exit (so its teardown is not billed to the next
    /// step), and removes the mountpoint and the cache.
    fn finish(mut self) -> Result<()> {
        measure(
            Command::new(&self.exe)
                .args(["flist", "umount"])
                .arg(&self.point),
            "zos flist umount",
        )?;
        self.unmounted = true;
        if let Some(pid) = self.daemon {
            wait_for_exit(pid);
        }
        std::fs::remove_dir(&self.point)
            .with_context(|| format!("removing {}", self.point.display()))?;
        std::fs::remove_dir_all(&self.cache)
            .with_context(|| format!("removing {}", self.cache.display()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.unmounted || !is_mounted(&self.point) {
            return;
        }
        // Lazy: an error path may still hold a file open on the mount; a plain unmount would
        // then fail with EBUSY and leave it behind.
        let status = Command::new(&self.exe)
            .args(["flist", "umount", "--lazy"])
            .arg(&self.point)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => eprintln!(
                "warning: zos flist umount --lazy {}: {s}",
                self.point.display()
            ),
            Err(e) => eprintln!(
                "warning: zos flist umount --lazy {}: {e}",
                self.point.display()
            ),
        }
    }
}

/// Whether something is mounted on `point`: it sits on another device than its parent.
fn is_mounted(point: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(parent) = point.parent() else {
        return false;
    };
    match (std::fs::symlink_metadata(point), std::fs::metadata(parent)) {
        (Ok(p), Ok(q)) => p.dev() != q.dev(),
        (Err(e), _) if e.kind() == std::io::ErrorKind::NotFound => false,
        // E.g. ENOTCONN from a mount whose daemon died: still mounted, still to be undone.
        _ => true,
    }
}

/// The pid in "mounted X on Y (pid N)", what `zos flist mount --daemon` prints.
fn daemon_pid(stdout: &[u8]) -> Option<u32> {
    let text = String::from_utf8_lossy(stdout);
    let (_, rest) = text.rsplit_once("(pid ")?;
    rest.split(')').next()?.trim().parse().ok()
}

/// Waits (up to 10 s) until process `pid`, which is not our child, is gone or a zombie.
fn wait_for_exit(pid: u32) {
    let stat = format!("/proc/{pid}/stat");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match std::fs::read_to_string(&stat) {
            Err(_) => return,
            // The state follows the command name, which is in parentheses and may hold any
            // byte, so look after the last ')'.
            Ok(s) => {
                if s.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
                {
                    return;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("warning: mount daemon {pid} still running 10 s after unmount");
}

/// Opens `path` and reads it to the end in READ_CHUNK reads; returns the wall seconds of both.
/// Fails unless exactly `expected` bytes came back, so a short read cannot pass for a fast one.
fn timed_read(path: &Path, expected: u64, buf: &mut [u8]) -> Result<f64> {
    let started = Instant::now();
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut total = 0u64;
    loop {
        match f.read(buf) {
            Ok(0) => break,
            Ok(k) => total += k as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    if total != expected {
        bail!(
            "{}: read {total} bytes, expected {expected}",
            path.display()
        );
    }
    Ok(seconds)
}

/// Number of entries under `dir` (not counting `dir`), without following symlinks.
fn count_entries(dir: &Path) -> Result<u64> {
    let mut count = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let e = e.with_context(|| format!("reading {}", d.display()))?;
            count += 1;
            if e.file_type()
                .with_context(|| format!("reading {}", e.path().display()))?
                .is_dir()
            {
                stack.push(e.path());
            }
        }
    }
    Ok(count)
}

/// `size` random bytes: incompressible and unlike any other file, so every block is fetched.
fn write_random(path: &Path, size: u64, rng: &mut fastrand::Rng) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = BufWriter::with_capacity(READ_CHUNK, file);
    let mut buf = vec![0u8; READ_CHUNK];
    let mut left = size;
    while left > 0 {
        let n = left.min(READ_CHUNK as u64) as usize;
        rng.fill(&mut buf[..n]);
        w.write_all(&buf[..n])
            .with_context(|| format!("writing {}", path.display()))?;
        left -= n as u64;
    }
    w.flush()
        .with_context(|| format!("writing {}", path.display()))
}

fn create_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))
}

/// Seconds of the median of `step` over `floor`; the table's "x floor".
fn time_ratio(step: &Timing, floor: &Timing) -> f64 {
    step.median / floor.median
}

fn max_rss(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Generates the mount table's images, packs them into the first table's last store, and
/// times each row and its floor `runs` times, interleaved.
fn bench_mount(inp: &MountInputs) -> Result<MountReport> {
    let MountInputs {
        exe,
        work,
        tree,
        tree_fl,
        store_url,
        mut shape,
        big_files,
        runs: n,
        keep,
    } = *inp;
    let pack = |src: &Path, fl: &Path| -> Result<()> {
        progress(&format!("mount table: packing {}…", src.display()));
        measure(
            Command::new(exe)
                .args(["flist", "pack"])
                .arg(src)
                .arg("-o")
                .arg(fl)
                .args(["--store", store_url, "--quiet"]),
            "zos flist pack",
        )
        .map(|_| ())
    };

    // The ~1 GiB image: the tree's big files (hard links, to spare the disk) plus random ones;
    // its first random file is also the one read cold and warm.
    progress("mount table: generating images…");
    let big = work.path("lazy-big");
    create_dir(&big.join("etc"))?;
    write_file(&big.join(HOSTNAME), HOSTNAME_TEXT)?;
    create_dir(&big.join("big"))?;
    for b in 0..big_files {
        let name = format!("big{b}.bin");
        let (from, to) = (tree.join("big").join(&name), big.join("big").join(&name));
        std::fs::hard_link(&from, &to)
            .with_context(|| format!("linking {} to {}", to.display(), from.display()))?;
    }
    create_dir(&big.join("rand"))?;
    for b in 0..LAZY_EXTRA_FILES {
        write_random(
            &big.join("rand").join(format!("rand{b}.bin")),
            shape.read_file_bytes,
            &mut file_rng(MOUNT_SEED, b),
        )?;
    }
    let read_rel = Path::new("rand/rand0.bin");
    let local_file = big.join(read_rel);

    let small = work.path("lazy-small");
    create_dir(&small.join("etc"))?;
    write_file(&small.join(HOSTNAME), HOSTNAME_TEXT)?;
    write_random(
        &small.join("data.bin"),
        shape.lazy_small_bytes - HOSTNAME_TEXT.len() as u64,
        &mut file_rng(MOUNT_SEED, usize::MAX),
    )?;

    let many = work.path("many");
    create_dir(&many)?;
    for i in 0..shape.dir_entries {
        let p = many.join(format!("e{i:06}"));
        std::fs::File::create(&p).with_context(|| format!("creating {}", p.display()))?;
    }

    let (big_fl, small_fl, many_fl) = (
        work.path("lazy-big.fl"),
        work.path("lazy-small.fl"),
        work.path("many.fl"),
    );
    pack(&big, &big_fl)?;
    pack(&small, &small_fl)?;
    pack(&many, &many_fl)?;
    shape.tree_entries = count_entries(tree)?;

    let mut buf = vec![0u8; READ_CHUNK];
    let find = |dir: &Path| {
        let mut cmd = Command::new("find");
        // Stats every entry (size, mode, owner, mtime), as a metadata-heavy walk does.
        cmd.arg(dir).args(["-printf", "%s %m %u %T@\\n"]);
        cmd
    };
    let ls = |flag: &str, dir: &Path| {
        let mut cmd = Command::new("ls");
        cmd.arg(flag).arg(dir);
        cmd
    };
    let (mut local_read, mut cold, mut warm, mut read_rss) = (vec![], vec![], vec![], None);
    let mut settled = vec![];
    let (mut find_local, mut find_mount, mut find_rss) = (vec![], vec![], None);
    let (mut lsf_local, mut lsf_mount, mut lsl_local, mut lsl_mount, mut ls_rss) =
        (vec![], vec![], vec![], vec![], None);
    let (mut lazy_big, mut lazy_small, mut lazy_rss) = (vec![], vec![], None);
    for r in 0..n {
        let run = format!("mount run {}/{n}", r + 1);
        let fresh = |tag: &str| {
            (
                work.path(&format!("mnt-{tag}-{}", r + 1)),
                work.path(&format!("cache-{tag}-{}", r + 1)),
            )
        };

        progress(&format!(
            "{run}: local read, cold and warm read via a mount…"
        ));
        sync();
        // The floor is a warm local read: the first read only fills the page cache.
        timed_read(&local_file, shape.read_file_bytes, &mut buf)?;
        local_read.push(timed_read(&local_file, shape.read_file_bytes, &mut buf)?);
        let (point, cache) = fresh("read");
        let (m, _) = Mount::start(exe, &big_fl, &point, &cache)?;
        let through = point.join(read_rel);
        cold.push(timed_read(&through, shape.read_file_bytes, &mut buf)?);
        warm.push(timed_read(&through, shape.read_file_bytes, &mut buf)?);
        // By now the cache holds the file whole, so this open is served by FUSE passthrough
        // from the cache's copy (the 2nd open pays for dropping the FUSE page cache).
        settled.push(timed_read(&through, shape.read_file_bytes, &mut buf)?);
        // Untimed: fast reads of the wrong bytes would be worthless.
        measure_quiet(
            Command::new("cmp").arg(&local_file).arg(&through),
            "cmp of the file read through the mount and the local file",
        )?;
        read_rss = max_rss(read_rss, m.peak_rss_mib());
        m.finish()?;

        progress(&format!(
            "{run}: find over the tree, local and via a mount…"
        ));
        sync();
        // Warm-up, untimed: the floor is the walk with the local metadata cached.
        measure_quiet(&mut find(tree), "find (warm-up)")?;
        find_local.push(measure_quiet(&mut find(tree), "find")?.seconds);
        let (point, cache) = fresh("find");
        let (m, _) = Mount::start(exe, tree_fl, &point, &cache)?;
        find_mount.push(measure_quiet(&mut find(&point), "find through the mount")?.seconds);
        let seen = count_entries(&point)?;
        if seen != shape.tree_entries {
            bail!(
                "{}: {seen} entries through the mount, {} in the tree",
                point.display(),
                shape.tree_entries
            );
        }
        find_rss = max_rss(find_rss, m.peak_rss_mib());
        m.finish()?;

        progress(&format!("{run}: ls -f and ls -l, local and via a mount…"));
        sync();
        for (flag, local, mounted) in [
            ("-f", &mut lsf_local, &mut lsf_mount),
            ("-l", &mut lsl_local, &mut lsl_mount),
        ] {
            let what = format!("ls {flag}");
            measure_quiet(&mut ls(flag, &many), &format!("{what} (warm-up)"))?;
            local.push(measure_quiet(&mut ls(flag, &many), &what)?.seconds);
            // A fresh mount for each, so ls -l does not find what ls -f already looked up.
            let (point, cache) = fresh(&format!("ls{flag}"));
            let (m, _) = Mount::start(exe, &many_fl, &point, &cache)?;
            mounted.push(
                measure_quiet(&mut ls(flag, &point), &format!("{what} through the mount"))?.seconds,
            );
            let seen = count_entries(&point)?;
            if seen != shape.dir_entries as u64 {
                bail!(
                    "{}: {seen} entries through the mount, {} in the directory",
                    point.display(),
                    shape.dir_entries
                );
            }
            ls_rss = max_rss(ls_rss, m.peak_rss_mib());
            m.finish()?;
        }

        progress(&format!(
            "{run}: lazy start of the big and the small image…"
        ));
        // Alternate which goes first, so neither always runs right after the other's teardown.
        let order = if r % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for is_big in order {
            let (fl, tag) = if is_big {
                (&big_fl, "lazy-big")
            } else {
                (&small_fl, "lazy-small")
            };
            sync();
            let (point, cache) = fresh(tag);
            let (m, mount_seconds) = Mount::start(exe, fl, &point, &cache)?;
            let started = Instant::now();
            let path = point.join(HOSTNAME);
            let got =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let seconds = mount_seconds + started.elapsed().as_secs_f64();
            if got != HOSTNAME_TEXT {
                bail!("{}: unexpected content {got:?}", path.display());
            }
            lazy_rss = max_rss(lazy_rss, m.peak_rss_mib());
            m.finish()?;
            if is_big {
                lazy_big.push(seconds);
            } else {
                lazy_small.push(seconds);
            }
        }
    }

    if !keep {
        for d in [&big, &small, &many] {
            std::fs::remove_dir_all(d).with_context(|| format!("removing {}", d.display()))?;
        }
    }

    // Peak RSS of these timings is not a child's: the mount daemon's is tracked separately.
    let t = |secs: Vec<f64>| Timing::of_seconds(secs, 0.0);
    let (local_read, cold, warm, settled) = (t(local_read), t(cold), t(warm), t(settled));
    let (find_local, find_mount) = (t(find_local), t(find_mount));
    let (lsf_local, lsf_mount) = (t(lsf_local), t(lsf_mount));
    let (lsl_local, lsl_mount) = (t(lsl_local), t(lsl_mount));
    let (lazy_big, lazy_small) = (t(lazy_big), t(lazy_small));
    let mb_s = |secs: f64| shape.read_file_bytes as f64 / 1e6 / secs;
    let row = |step: String,
               m: &Timing,
               floor: String,
               f: &Timing,
               reads: bool,
               rss: Option<f64>,
               notes: &str| MountRow {
        notes: match f.range(3) {
            Some(range) => format!(
                "{notes}; floor: {floor}; {}, floor {range}",
                m.spread_prec(3)
            ),
            None => format!("{notes}; floor: {floor}; 1 run"),
        },
        step,
        seconds: m.median,
        seconds_per_run: m.seconds.clone(),
        floor,
        floor_seconds: f.median,
        floor_seconds_per_run: f.seconds.clone(),
        time_ratio: time_ratio(m, f),
        mb_per_s: reads.then(|| mb_s(m.median)),
        floor_mb_per_s: reads.then(|| mb_s(f.median)),
        daemon_peak_rss_mib: rss,
    };
    let file = human(shape.read_file_bytes);
    let local_floor = "local read, warm (2nd of 2)".to_owned();
    let rows = vec![
        row(
            format!("cold read {file}"),
            &cold,
            local_floor.clone(),
            &local_read,
            true,
            read_rss,
            "fresh mount, empty cache; random data, no block dedups",
        ),
        row(
            format!("warm read {file}"),
            &warm,
            local_floor.clone(),
            &local_read,
            true,
            read_rss,
            "2nd read, same mount (passthrough where the kernel has it); cmp: identical",
        ),
        row(
            format!("3rd read {file}"),
            &settled,
            local_floor,
            &local_read,
            true,
            read_rss,
            "same mount, passthrough from the cache's whole copy",
        ),
        row(
            format!("find + stat, {} entries", shape.tree_entries),
            &find_mount,
            "same, local tree, warm".into(),
            &find_local,
            false,
            find_rss,
            "fresh mount; find -printf '%s %m %u %T@\\n'; entry count matches",
        ),
        row(
            format!("ls -f, {} entries", shape.dir_entries),
            &lsf_mount,
            "same, local dir, warm".into(),
            &lsf_local,
            false,
            ls_rss,
            "fresh mount; entry count matches",
        ),
        row(
            format!("ls -l, {} entries", shape.dir_entries),
            &lsl_mount,
            "same, local dir, warm".into(),
            &lsl_local,
            false,
            ls_rss,
            "fresh mount; entry count matches",
        ),
        row(
            format!("lazy start, {} image", human(shape.lazy_big_bytes)),
            &lazy_big,
            format!("lazy start, {} image", human(shape.lazy_small_bytes)),
            &lazy_small,
            false,
            lazy_rss,
            "fresh cache + mount; mount --daemon returns, then read etc/hostname",
        ),
    ];
    // Throughput ratio = inverse time ratio: both read the same bytes.
    let warm_ratio = local_read.median / warm.median;
    let at_most = |name: &str, value: f64, target: f64| Target {
        name: name.into(),
        value,
        target: format!("<= {target}x"),
        met: value <= target,
    };
    let targets = vec![
        Target {
            name: "warm read / local throughput".into(),
            value: warm_ratio,
            target: format!(">= {WARM_READ_TARGET}x"),
            met: warm_ratio >= WARM_READ_TARGET,
        },
        at_most(
            "find + stat through mount / local time",
            time_ratio(&find_mount, &find_local),
            METADATA_TARGET,
        ),
        at_most(
            "ls -f through mount / local time",
            time_ratio(&lsf_mount, &lsf_local),
            METADATA_TARGET,
        ),
        at_most(
            "ls -l through mount / local time",
            time_ratio(&lsl_mount, &lsl_local),
            METADATA_TARGET,
        ),
        at_most(
            &format!(
                "lazy start {} / {} image time",
                human(shape.lazy_big_bytes),
                human(shape.lazy_small_bytes)
            ),
            time_ratio(&lazy_big, &lazy_small),
            LAZY_START_TARGET,
        ),
    ];
    Ok(MountReport {
        shape,
        rows,
        targets,
    })
}

/// One step's measurements over all runs.
struct Timing {
    seconds: Vec<f64>,
    median: f64,
    peak_rss_mib: f64,
}

impl Timing {
    fn of(runs: &[Measured]) -> Timing {
        Timing::of_seconds(
            runs.iter().map(|m| m.seconds).collect(),
            runs.iter().map(Measured::peak_rss_mib).fold(0.0, f64::max),
        )
    }

    /// From wall seconds timed some other way (in-process reads, a mount plus a read).
    fn of_seconds(seconds: Vec<f64>, peak_rss_mib: f64) -> Timing {
        let mut sorted = seconds.clone();
        sorted.sort_by(f64::total_cmp);
        let mid = sorted.len() / 2;
        let median = match sorted.len() {
            0 => f64::NAN,
            len if len % 2 == 1 => sorted[mid],
            _ => (sorted[mid - 1] + sorted[mid]) / 2.0,
        };
        Timing {
            seconds,
            median,
            peak_rss_mib,
        }
    }

    /// "median of 3, range 2.10–4.05 s", or "1 run".
    fn spread(&self) -> String {
        self.spread_prec(2)
    }

    /// "2.10–4.05 s" with `prec` decimals; None for a single run, which has no range.
    fn range(&self, prec: usize) -> Option<String> {
        if self.seconds.len() < 2 {
            return None;
        }
        let min = self.seconds.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self
            .seconds
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        Some(format!("{min:.prec$}–{max:.prec$} s"))
    }

    /// `spread` with `prec` decimals: the mount table's steps can take milliseconds.
    fn spread_prec(&self, prec: usize) -> String {
        match self.range(prec) {
            None => "1 run".to_owned(),
            Some(range) => format!("median of {}, range {range}", self.seconds.len()),
        }
    }
}

fn print_table(r: &Report) {
    let s = &r.tree;
    println!(
        "zos bench flist: {} small files in {} dirs + {} x {:.2} MiB files = {:.1} MB",
        s.small_files,
        s.dirs,
        s.big_files,
        s.big_file_bytes as f64 / MIB as f64,
        r.tree_bytes as f64 / 1e6
    );
    match r.runs {
        1 => println!("seconds = wall time of 1 run"),
        n => {
            println!("seconds = median wall time of {n} runs, each on fresh state (range in notes)")
        }
    }
    println!("MB/s = tree bytes / median seconds (1 MB = 1e6 bytes); peak RSS = max ru_maxrss of that child process over the runs");
    println!();
    let header = ["step", "seconds", "MB/s", "peak RSS MiB", "notes"];
    let cells: Vec<[String; 5]> = r
        .rows
        .iter()
        .map(|row| {
            [
                row.step.clone(),
                fmt(row.seconds, 2),
                fmt(row.mb_per_s, 1),
                fmt(row.peak_rss_mib, 1),
                row.notes.clone(),
            ]
        })
        .collect();
    print_grid(header, &cells);
    println!();
    print_targets(&r.targets);
    println!();
    match (&r.mount, &r.mount_skipped) {
        (Some(m), _) => print_mount_table(m, r.runs),
        (None, Some(reason)) => println!("mount table skipped: {reason}"),
        // Failed: the error that follows says why.
        (None, None) => {}
    }
}

fn fmt(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".to_owned(), |v| format!("{v:.prec$}"))
}

fn print_targets(targets: &[Target]) {
    for t in targets {
        println!(
            "{}: {:.2} (target {}: {})",
            t.name,
            t.value,
            t.target,
            if t.met { "target met" } else { "NOT met" }
        );
    }
}

fn print_mount_table(m: &MountReport, runs: usize) {
    let s = &m.shape;
    println!(
        "zos bench flist, mount (zos flist mount --daemon, FUSE): {} file read, {} entries walked, \
{} entries listed, lazy start of a {} vs a {} image",
        human(s.read_file_bytes),
        s.tree_entries,
        s.dir_entries,
        human(s.lazy_big_bytes),
        human(s.lazy_small_bytes)
    );
    match runs {
        1 => println!("seconds = wall time of 1 run; floor s = the floor's, same run"),
        n => println!(
            "seconds = median wall time of {n} runs, each on a fresh mount with a fresh, empty \
cache (range in notes); floor s = the floor's median, same runs"
        ),
    }
    println!(
        "x floor = seconds / floor s (above 1 is slower); MB/s = file bytes / median seconds; \
mount RSS = max VmHWM of the mount daemon over the runs"
    );
    println!();
    let header = [
        "step",
        "seconds",
        "floor s",
        "x floor",
        "MB/s",
        "floor MB/s",
        "mount RSS MiB",
        "notes",
    ];
    let cells: Vec<[String; 8]> = m
        .rows
        .iter()
        .map(|row| {
            [
                row.step.clone(),
                format!("{:.3}", row.seconds),
                format!("{:.3}", row.floor_seconds),
                format!("{:.2}", row.time_ratio),
                fmt(row.mb_per_s, 1),
                fmt(row.floor_mb_per_s, 1),
                fmt(row.daemon_peak_rss_mib, 1),
                row.notes.clone(),
            ]
        })
        .collect();
    print_grid(header, &cells);
    println!();
    print_targets(&m.targets);
}

/// Prints a table: the first and last columns (text) left-aligned, the others (numbers)
/// right-aligned so digits line up.
fn print_grid<const N: usize>(header: [&str; N], cells: &[[String; N]]) {
    let mut width = header.map(|h| h.chars().count());
    for c in cells {
        for (w, v) in width.iter_mut().zip(c) {
            *w = (*w).max(v.chars().count());
        }
    }
    let line = |c: [&str; N]| {
        let mut out = String::new();
        for (i, (v, w)) in c.iter().zip(width).enumerate() {
            if i == N - 1 {
                // No padding after the last column: it would only add trailing spaces.
                out.push_str(v);
            } else if i == 0 {
                out.push_str(&format!("{v:<w$} | "));
            } else {
                out.push_str(&format!("{v:>w$} | "));
            }
        }
        println!("{out}");
    };
    line(header);
    let rule: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
    println!("{}", rule.join("-+-"));
    for c in cells {
        line(c.each_ref().map(String::as_str));
    }
}

/// "128.0 MiB", "1.0 GiB": sizes as the issue names them.
fn human(bytes: u64) -> String {
    let b = bytes as f64;
    let k = 1024.0;
    if b >= k * k * k {
        format!("{:.1} GiB", b / (k * k * k))
    } else if b >= k * k {
        format!("{:.1} MiB", b / (k * k))
    } else if b >= k {
        format!("{:.1} KiB", b / k)
    } else {
        format!("{bytes} B")
    }
}

/// The fields of `zos flist pack --json` the report uses.
#[derive(PartialEq)]
struct PackNumbers {
    files: u64,
    blocks: u64,
    blocks_sent: u64,
    blocks_present: u64,
}

impl PackNumbers {
    fn parse(stdout: &[u8]) -> Result<PackNumbers> {
        let v: serde_json::Value =
            serde_json::from_slice(stdout).context("parsing the JSON printed by zos flist pack")?;
        let field = |name: &str| {
            v.get(name)
                .and_then(serde_json::Value::as_u64)
                .with_context(|| format!("zos flist pack --json printed no number {name:?}"))
        };
        Ok(PackNumbers {
            files: field("files")?,
            blocks: field("blocks")?,
            blocks_sent: field("blocks_sent")?,
            blocks_present: field("blocks_present")?,
        })
    }

    /// "" when every run packed the same numbers (they should: each starts from the same
    /// state), else a note listing each run's, since the row shows the first run's.
    fn differences(runs: &[PackNumbers]) -> String {
        if runs.windows(2).all(|w| w[0] == w[1]) {
            return String::new();
        }
        let each: Vec<String> = runs
            .iter()
            .map(|p| {
                format!(
                    "{}/{}/{}/{}",
                    p.files, p.blocks, p.blocks_sent, p.blocks_present
                )
            })
            .collect();
        format!(
            " (run 1; runs differ, files/blocks/sent/present: {})",
            each.join(", ")
        )
    }
}

/// What one child process cost.
struct Measured {
    seconds: f64,
    /// ru_maxrss of the child alone, in KiB (Linux's unit).
    peak_rss_kib: u64,
    stdout: Vec<u8>,
}

impl Measured {
    fn peak_rss_mib(&self) -> f64 {
        self.peak_rss_kib as f64 / 1024.0
    }
}

/// Runs `cmd` to completion and returns its wall time, peak RSS and stdout; fails if it does
/// not exit 0. Reaps the child with wait4(2) rather than `Child::wait`, because only wait4
/// returns the resource usage of that one child (getrusage(RUSAGE_CHILDREN) would mix in
/// every earlier child).
fn measure(cmd: &mut Command, what: &str) -> Result<Measured> {
    measure_with(cmd, what, Stdio::piped())
}

/// `measure` with stdout to /dev/null: for listings whose output is not the point, and which
/// should not pay for a pipe the floor does not have either.
fn measure_quiet(cmd: &mut Command, what: &str) -> Result<Measured> {
    measure_with(cmd, what, Stdio::null())
}

fn measure_with(cmd: &mut Command, what: &str, stdout: Stdio) -> Result<Measured> {
    cmd.stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::inherit());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {what}: {cmd:?}"))?;
    // Drain stdout before reaping: a child blocked on a full pipe would never exit.
    let mut stdout = Vec::new();
    let read = match child.stdout.take() {
        Some(mut pipe) => pipe.read_to_end(&mut stdout).map(|_| ()),
        None => Ok(()),
    };
    let pid = libc::pid_t::try_from(child.id()).context("child pid out of range")?;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is a C struct of integer fields, for which all-zero bytes are valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pid is our own child, which nothing has reaped yet (std never waited for
        // it); status and usage are valid, exclusive pointers for the duration of the call.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err).with_context(|| format!("waiting for {what}"));
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    // The child is reaped, so it must never be waited for again; Child's Drop neither waits
    // nor kills, so dropping it here only closes what is left of its handles.
    drop(child);
    read.with_context(|| format!("reading the output of {what}"))?;
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        let how = if libc::WIFEXITED(status) {
            format!("exit status {}", libc::WEXITSTATUS(status))
        } else {
            format!("killed by signal {}", libc::WTERMSIG(status))
        };
        let text = String::from_utf8_lossy(&stdout);
        let mut shown: Vec<&str> = text.lines().take(20).collect();
        if text.lines().count() > shown.len() {
            shown.push("…");
        }
        let out = if shown.is_empty() {
            String::new()
        } else {
            format!("; its output:\n{}", shown.join("\n"))
        };
        bail!("{what} failed ({how}): {cmd:?}{out}");
    }
    Ok(Measured {
        seconds,
        peak_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
        stdout,
    })
}

/// Path of small file `i`: spread round-robin over the directories.
fn small_path(tree: &Path, shape: &Shape, i: usize) -> PathBuf {
    tree.join(format!("d{:03}", i % shape.dirs))
        .join(format!("f{i:05}.txt"))
}

/// Each file gets its own generator, so one file can be regenerated without the others.
fn file_rng(seed: u64, i: usize) -> fastrand::Rng {
    fastrand::Rng::with_seed(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// `size` bytes of words and spaces with a newline every ~10 words.
fn text(rng: &mut fastrand::Rng, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 16);
    while out.len() < size {
        out.extend_from_slice(WORDS[rng.usize(..WORDS.len())].as_bytes());
        out.push(if rng.usize(..10) == 0 { b'\n' } else { b' ' });
    }
    out.truncate(size);
    out
}

fn write_file(path: &Path, data: &[u8]) -> Result<()> {
    std::fs::write(path, data).with_context(|| format!("writing {}", path.display()))
}

/// Writes the tree and returns its total content bytes.
fn generate_tree(tree: &Path, shape: &Shape) -> Result<u64> {
    let mut total = 0u64;
    for d in 0..shape.dirs {
        let p = tree.join(format!("d{d:03}"));
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
    }
    for i in 0..shape.small_files {
        let mut rng = file_rng(SEED, i);
        let size = rng.usize(1024..=16 * 1024);
        write_file(&small_path(tree, shape, i), &text(&mut rng, size))?;
        total += size as u64;
    }
    let big = tree.join("big");
    std::fs::create_dir_all(&big).with_context(|| format!("creating {}", big.display()))?;
    for b in 0..shape.big_files {
        let path = big.join(format!("big{b}.bin"));
        write_big(
            &path,
            shape.big_file_bytes,
            &mut file_rng(SEED, usize::MAX - b),
        )?;
        total += shape.big_file_bytes;
    }
    Ok(total)
}

/// A big file: the first half random (incompressible, no dedup), the second half one 4 KiB
/// pattern repeated (compresses and dedups to almost nothing), so both block paths are timed.
fn write_big(path: &Path, size: u64, rng: &mut fastrand::Rng) -> Result<()> {
    const CHUNK: usize = MIB as usize;
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = BufWriter::with_capacity(CHUNK, file);
    let mut buf = vec![0u8; CHUNK];
    let half = size / 2;
    let mut left = half;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        rng.fill(&mut buf[..n]);
        w.write_all(&buf[..n])
            .with_context(|| format!("writing {}", path.display()))?;
        left -= n as u64;
    }
    let mut pattern = [0u8; 4096];
    rng.fill(&mut pattern);
    // CHUNK is a multiple of 4 KiB, so the pattern repeats seamlessly across chunks.
    for (i, byte) in buf.iter_mut().enumerate() {
        *byte = pattern[i % pattern.len()];
    }
    let mut left = size - half;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        w.write_all(&buf[..n])
            .with_context(|| format!("writing {}", path.display()))?;
        left -= n as u64;
    }
    w.flush()
        .with_context(|| format!("writing {}", path.display()))
}

/// Rewrites 1% of the small files (at least one) with different text of the same size, so
/// tree bytes and throughput stay comparable; returns how many were changed.
fn change_small_files(tree: &Path, shape: &Shape) -> Result<usize> {
    let n = shape.small_files;
    let count = (n / 100).max(1);
    for k in 0..count {
        // Spread over the whole tree (every directory at full scale), not one corner of it.
        let i = k * n / count;
        let size = file_rng(SEED, i).usize(1024..=16 * 1024);
        let mut rng = file_rng(CHANGE_SEED, i);
        write_file(&small_path(tree, shape, i), &text(&mut rng, size))?;
    }
    Ok(count)
}

/// Total bytes and number of regular files under `dir`.
fn dir_usage(dir: &Path) -> Result<(u64, u64)> {
    let (mut bytes, mut files) = (0, 0);
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let e = e.with_context(|| format!("reading {}", d.display()))?;
            let m = e
                .metadata()
                .with_context(|| format!("reading {}", e.path().display()))?;
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                bytes += m.len();
                files += 1;
            }
        }
    }
    Ok((bytes, files))
}

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
use std::time::Instant;

/// Benchmarks, each printing one table.
#[derive(Subcommand)]
pub enum BenchCommand {
    /// Time flist pack and unpack against `cp -a` of the same generated tree
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
    #[command(
        after_help = "Examples:\n  zos bench flist\n  zos bench flist --scale 0.01 --json\n  \
zos bench flist --runs 5\n  \
zos bench flist --dir /mnt/nvme/bench --keep"
    )]
    Flist {
        /// Work directory (must be empty or not exist; needs about 2x the tree size plus one
        /// store of ~0.5x the tree per run, ~2.5 GB at scale 1 with 3 runs). Default: a fresh
        /// directory under /var/tmp
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Keep the generated tree, the flists, and the last run's copy, unpacked tree and store
        /// instead of removing them (earlier runs' are removed as the benchmark goes)
        #[arg(long)]
        keep: bool,
        /// How many times to time each step; the table shows the median and the min-max range
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
        runs: u32,
        /// Multiply the number of files and the big-file size by this (0.01: 200 small files
        /// in 2 directories and four 1.28 MiB files), to run a quick version
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
        discard(store, r)?;
    }

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
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    // Missed targets are findings, not failures: the run itself succeeded.
    Ok(ExitCode::SUCCESS)
}

/// One step's measurements over all runs.
struct Timing {
    seconds: Vec<f64>,
    median: f64,
    peak_rss_mib: f64,
}

impl Timing {
    fn of(runs: &[Measured]) -> Timing {
        let seconds: Vec<f64> = runs.iter().map(|m| m.seconds).collect();
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
            peak_rss_mib: runs.iter().map(Measured::peak_rss_mib).fold(0.0, f64::max),
        }
    }

    /// "median of 3, range 2.10–4.05 s", or "1 run".
    fn spread(&self) -> String {
        let min = self.seconds.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self
            .seconds
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        match self.seconds.len() {
            1 => "1 run".to_owned(),
            n => format!("median of {n}, range {min:.2}–{max:.2} s"),
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
    let fmt = |v: Option<f64>, prec: usize| v.map_or("-".to_owned(), |v| format!("{v:.prec$}"));
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
    let mut width = header.map(str::len);
    for c in &cells {
        for (w, v) in width.iter_mut().zip(c) {
            *w = (*w).max(v.chars().count());
        }
    }
    let line = |c: [&str; 5]| {
        // Step and notes are text (left-aligned); the numbers right-align so digits line up.
        println!(
            "{:<w0$} | {:>w1$} | {:>w2$} | {:>w3$} | {}",
            c[0],
            c[1],
            c[2],
            c[3],
            c[4],
            w0 = width[0],
            w1 = width[1],
            w2 = width[2],
            w3 = width[3]
        );
    };
    line(header);
    println!(
        "{}-+-{}-+-{}-+-{}-+-{}",
        "-".repeat(width[0]),
        "-".repeat(width[1]),
        "-".repeat(width[2]),
        "-".repeat(width[3]),
        "-".repeat(width[4])
    );
    for c in &cells {
        line([&c[0], &c[1], &c[2], &c[3], &c[4]]);
    }
    println!();
    for t in &r.targets {
        println!(
            "{}: {:.2} (target {}: {})",
            t.name,
            t.value,
            t.target,
            if t.met { "target met" } else { "NOT met" }
        );
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
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
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

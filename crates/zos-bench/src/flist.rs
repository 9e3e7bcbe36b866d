//! `zos-bench flist`: pack, unpack, the store's size and a re-pack after a small change,
//! each timed against `cp -a` of the same tree in the same run; then the mount table
//! ([`crate::mount`]).

use crate::fuse::fuse_unusable;
use crate::measure::{measure, progress, sync};
use crate::mount::{bench_mount, print_mount_table, MountInputs, MountReport, MountShape};
use crate::stats::Timing;
use crate::table::{fmt, print_grid, print_targets, Target};
use crate::tree::{change_small_files, dir_usage, generate_tree, Shape};
use crate::workdir::WorkDir;
use crate::zos_bin::Zos;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use zos_types::ByteSize;

/// Targets from the issue: zos should cost at most ~2x (pack) and ~1.4x (unpack) a plain copy.
const PACK_TARGET: f64 = 0.5;
const UNPACK_TARGET: f64 = 0.7;
const RSS_TARGET_MIB: f64 = 256.0;

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

/// Runs the flist benchmark and prints its tables.
pub fn bench_flist(
    zos: &Zos,
    dir: Option<PathBuf>,
    keep: bool,
    scale: f64,
    runs: u32,
    json: bool,
) -> Result<ExitCode> {
    let shape = Shape::new(scale)?;
    let n = usize::try_from(runs).context("--runs out of range")?;
    let work = WorkDir::new(dir, keep)?;
    progress(&format!("work directory {}", work.root.display()));

    let tree = work.path("tree");
    progress(&format!(
        "generating tree… ({} small files in {} dirs, {} x {})",
        shape.small_files,
        shape.dirs,
        shape.big_files,
        ByteSize(shape.big_file_bytes)
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
        let mut cmd = zos.command();
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
            zos.command()
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
                zos,
                work: &work,
                tree: &tree,
                tree_fl: &work.path(&format!("b-{n}.fl")),
                store_url: last_url,
                store_dir: last_store,
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
                "store {} in {} blocks + .fl {} = {:.3}x tree ({})",
                ByteSize(store_bytes),
                store_blocks,
                ByteSize(fl_bytes),
                (store_bytes + fl_bytes) as f64 / tree_bytes as f64,
                ByteSize(tree_bytes)
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
    crate::table::emit(&report, json, print_table)?;
    if let Some(e) = mount_error {
        return Err(e.context("mount table"));
    }
    // Missed targets are findings, not failures: the run itself succeeded.
    Ok(ExitCode::SUCCESS)
}

fn print_table(r: &Report) {
    let s = &r.tree;
    println!(
        "zos-bench flist: {} small files in {} dirs + {} x {} files = {} ({:.1} MB)",
        s.small_files,
        s.dirs,
        s.big_files,
        ByteSize(s.big_file_bytes),
        ByteSize(r.tree_bytes),
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

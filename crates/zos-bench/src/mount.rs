//! `zos-bench flist`'s second table: reads, walks, listings and lazy start through
//! `zos flist mount --daemon` (FUSE), each next to its local floor measured in the same run.

use crate::fuse::Mount;
use crate::measure::{measure, measure_quiet, progress, sync};
use crate::pagecache::drop_from_page_cache;
use crate::stats::Timing;
use crate::table::{fmt, print_grid, print_targets, Target};
use crate::tree::{count_entries, create_dir, file_rng, write_file, write_random, Shape, MIB};
use crate::workdir::WorkDir;
use crate::zos_bin::Zos;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::Instant;
use zos_types::ByteSize;

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

/// Shape of the mount table's inputs, derived from `--scale` and the tree.
#[derive(Serialize, Clone, Copy)]
pub struct MountShape {
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
    /// The full-size inputs multiplied by `scale`, the read file as big as the tree's.
    pub fn new(scale: f64, shape: &Shape) -> MountShape {
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
pub struct MountRow {
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
pub struct MountReport {
    shape: MountShape,
    rows: Vec<MountRow>,
    targets: Vec<Target>,
}

/// What the mount table needs from the first one.
pub struct MountInputs<'a> {
    /// The binary measured.
    pub zos: &'a Zos,
    /// Where images, mountpoints and caches go.
    pub work: &'a WorkDir,
    /// The tree as it is now (after the 1% change), the local side of `find`.
    pub tree: &'a Path,
    /// The flist of that tree, in `store_url`.
    pub tree_fl: &'a Path,
    /// Where the mount table's own images go too, so every mount reads the same kind of store.
    pub store_url: &'a str,
    /// The directory of that dir:// store, whose files a cold read first drops from the page
    /// cache.
    pub store_dir: &'a Path,
    /// What to generate.
    pub shape: MountShape,
    /// Big files in the tree (hard-linked into the ~1 GiB image).
    pub big_files: usize,
    /// Repetitions of each row.
    pub runs: usize,
    /// Keep the generated images.
    pub keep: bool,
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
pub fn bench_mount(inp: &MountInputs) -> Result<MountReport> {
    let MountInputs {
        zos,
        work,
        tree,
        tree_fl,
        store_url,
        store_dir,
        mut shape,
        big_files,
        runs: n,
        keep,
    } = *inp;
    let pack = |src: &Path, fl: &Path| -> Result<()> {
        progress(&format!("mount table: packing {}…", src.display()));
        measure(
            zos.command()
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
    let mut dropped_files = 0;
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
        // Cold means from the disk: the store's blocks and the .fl were written (or read) a
        // moment ago and would otherwise be served from the page cache.
        dropped_files = drop_from_page_cache(store_dir)?;
        drop_from_page_cache(&big_fl)?;
        let (point, cache) = fresh("read");
        let (m, _) = Mount::start(zos, &big_fl, &point, &cache)?;
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
        let (m, _) = Mount::start(zos, tree_fl, &point, &cache)?;
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
            let (m, _) = Mount::start(zos, &many_fl, &point, &cache)?;
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
            let (m, mount_seconds) = Mount::start(zos, fl, &point, &cache)?;
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
    let file = ByteSize(shape.read_file_bytes);
    let local_floor = "local read, warm (2nd of 2)".to_owned();
    let rows = vec![
        row(
            format!("cold read {file}"),
            &cold,
            local_floor.clone(),
            &local_read,
            true,
            read_rss,
            &format!(
                "cold = fresh mount, empty cache, {dropped_files} store files + .fl dropped \
                 from the page cache (fsync, fadvise DONTNEED); random data, no block dedups"
            ),
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
            format!("lazy start, {} image", ByteSize(shape.lazy_big_bytes)),
            &lazy_big,
            format!("lazy start, {} image", ByteSize(shape.lazy_small_bytes)),
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
                ByteSize(shape.lazy_big_bytes),
                ByteSize(shape.lazy_small_bytes)
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

/// Prints the mount table and its targets.
pub fn print_mount_table(m: &MountReport, runs: usize) {
    let s = &m.shape;
    println!(
        "zos-bench flist, mount (zos flist mount --daemon, FUSE): {} file read, {} entries walked, \
{} entries listed, lazy start of a {} vs a {} image",
        ByteSize(s.read_file_bytes),
        s.tree_entries,
        s.dir_entries,
        ByteSize(s.lazy_big_bytes),
        ByteSize(s.lazy_small_bytes)
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

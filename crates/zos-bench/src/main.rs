//! `zos-bench`: benchmarks of zos that print a table next to a floor measured in the same
//! run. Kept out of the shipped `zos` binary: it measures `zos` from the outside.
//!
//! The zos steps run the real `zos` binary as child processes, so each one is measured the way
//! a user runs it (startup included) and its peak memory is that child's alone.

mod disk_image;
mod flist;
mod fuse;
mod image;
mod kube;
mod measure;
mod mount;
mod net;
mod node;
mod pagecache;
mod pull;
mod stats;
mod table;
mod tree;
mod vm;
mod vm_fair;
mod workdir;
mod zos_bin;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// zos-bench: measure zos against a floor measured in the same run, and print a table.
#[derive(Parser)]
#[command(name = "zos-bench", version, about, long_about = None)]
struct Cli {
    /// The `zos` binary to measure (default: the `zos` next to this executable, as Cargo
    /// builds both into the same target dir)
    #[arg(long, global = true, env = "ZOS_BIN", value_name = "PATH")]
    zos: Option<PathBuf>,
    #[command(subcommand)]
    command: BenchCommand,
}

/// Benchmarks, each printing one table.
#[derive(Subcommand)]
enum BenchCommand {
    /// Time micro-VM starts and measure their memory against a bare QEMU boot
    ///
    /// Packs two images (busybox; busybox plus a 1 GiB file) whose image config prints a
    /// marker, then measures, interleaved over --runs: a bare `qemu-system-x86_64` boot of the
    /// boot kit's kernel and initramfs until `/init` prints (the floor), and `zos run` of each
    /// image until the marker reaches its stdout (create, flist mount, overlay, virtiofsd,
    /// QEMU, boot, entrypoint). Then ten `zos run` at once (time until all exited), and host
    /// memory per idle 256 MiB container: PSS of QEMU, virtiofsd and the flist mount, mean
    /// over three. Target: `zos run` within 1.25x of the bare boot (medians). The bare boot
    /// uses the accelerator `zos run --accel auto` picks (KVM where usable, else TCG).
    /// Last, the noisy neighbour: a 2-vCPU guest's CPU-bound work beside a 2-vCPU guest
    /// spinning every vCPU, over its work alone (8 s windows, interleaved, medians; target
    /// at least 0.8x).
    #[command(after_help = "Examples:\n  zos-bench vm\n  zos-bench vm --runs 5 --json")]
    Vm {
        #[command(flatten)]
        run: RunArgs,
    },
    /// Time the node: API throughput and latency, restart, deploy-to-running
    ///
    /// Starts a `zos node run` in a fresh work dir, then measures: zmount-only deployments
    /// accepted per second through the API (signed beforehand; 4 clients; signature check,
    /// admission and a database transaction each), the time until their disks are made,
    /// p50/p99 latency of signed GETs, then deployments/s and GET latency on loopback TCP
    /// over TLS next to plain HTTP (interleaved; target: TLS at least 0.8x), the node's
    /// restart time with all of them stored (SIGTERM, start, until the API answers), and,
    /// interleaved over --runs, `zos run` of a
    /// busybox image until its output (the floor) against deploying the same image as a
    /// zmachine until its output shows in the API's log. Targets: >= 1000 deployments/s;
    /// deploy-to-running within 1.1x of `zos run` (medians). Deployments that end in error
    /// are counted as failed, not provisioned: the row says how many, and the command exits 1.
    #[command(after_help = "Examples:\n  zos-bench node\n  zos-bench node --count 200 --runs 1")]
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
    /// Measure a node's networks: iperf3 and HTTP through them, deploy-to-reachable
    ///
    /// Each row next to a floor measured in the same run (medians over --runs): iperf3 TCP
    /// throughput between two machines on a node's private network against two bare QEMU
    /// guests with taps on a plain bridge (in a namespace of the benchmark's own); iperf3
    /// from the host through a published port against the same to the machine's address
    /// from inside the network's namespace; wrk requests/s to a busybox httpd machine through
    /// a published port against the same from inside the namespace; deploying a web server
    /// with a network and a published port until an HTTP GET through the port answers
    /// against deploying the same machine without a network until its output shows. Targets:
    /// rows 1-3 at least 0.9x their floors, row 4 within 1.2x. A missed target is reported,
    /// not an error. The node, its deployments and the benchmark's namespace are removed at
    /// the end, also on errors. Needs root, qemu-system-x86_64, ip, iperf3 and wrk.
    #[command(after_help = "Examples:\n  zos-bench net\n  zos-bench net --runs 1 --json")]
    Net {
        #[command(flatten)]
        run: RunArgs,
    },
    /// Time deploying a container image by reference (the node pulls it) against copying it
    ///
    /// Starts Debian's docker-registry on loopback and a `zos node run`; each of --runs pushes
    /// a new image (busybox and 16 MiB of random data, written as an OCI layout and pushed
    /// with skopeo), then times: `skopeo copy` of it to a local directory plus deploying a
    /// local flist of it until its output shows (the cold floor), deploying it by reference
    /// (`image: docker://…`) until its output shows (cold: the node imports it), and again
    /// (warm: the node has it), against deploying the local flist (the warm floor). Then 100
    /// `exec true` in a running container of the image, p50 and p99, against a signed API
    /// request. Targets: cold within 1.5x and warm within 1.1x of their floors (medians).
    /// Needs root, qemu-system-x86_64, docker-registry and skopeo.
    #[command(after_help = "Examples:\n  zos-bench pull\n  zos-bench pull --runs 1 --json")]
    Pull {
        #[command(flatten)]
        run: RunArgs,
    },
    /// Time a Kubernetes cluster of zmachines (the k3s stand-in) until all its workers
    /// joined, against deploying three plain machines; then scaling it 2 -> 4 -> 2
    ///
    /// Starts a `zos node run`; each of --runs deploys three plain busybox zmachines until
    /// each printed its marker (the floor), then a cluster of 1 master and 2 workers as `zos
    /// kube create` builds it, with a stand-in for k3s (busybox honouring its environment
    /// contract: the master records each worker that joins with the token), until both
    /// workers joined; scales it to 4 workers until the new two joined, and back to 2 until
    /// the dropped workers' VMs are gone. Target: create-to-all-joined within 1.3x the
    /// floor (medians). Needs root and qemu-system-x86_64.
    #[command(after_help = "Examples:\n  zos-bench kube\n  zos-bench kube --runs 1 --json")]
    Kube {
        #[command(flatten)]
        run: RunArgs,
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
    /// 128 MiB random file through a fresh mount with a fresh, empty cache, after the store's
    /// files and the .fl are written back and dropped from the page cache (fsync +
    /// posix_fadvise DONTNEED, no root needed), so the blocks come from disk; a warm (second) read
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
        after_help = "Examples:\n  zos-bench flist\n  zos-bench flist --scale 0.01 --json\n  \
zos-bench flist --runs 5\n  \
zos-bench flist --dir /mnt/nvme/bench --keep"
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

/// The options the VM, network, pull and kube benchmarks share.
#[derive(Args)]
struct RunArgs {
    /// Work directory (default: a fresh directory under /var/tmp)
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the work directory
    #[arg(long)]
    keep: bool,
    /// Repetitions of each timed step (the median is reported)
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one benchmark command against the `zos` binary found from `cli`.
fn run(cli: Cli) -> Result<ExitCode> {
    let zos = zos_bin::Zos::locate(cli.zos)?;
    match cli.command {
        BenchCommand::Vm { run } => vm::bench_vm(&zos, run.dir, run.keep, run.runs, run.json),
        BenchCommand::Node {
            count,
            runs,
            keep,
            json,
        } => node::bench_node(&zos, count as usize, runs, keep, json),
        BenchCommand::Net { run } => net::bench_net(&zos, run.dir, run.keep, run.runs, run.json),
        BenchCommand::Flist {
            dir,
            keep,
            scale,
            runs,
            json,
        } => flist::bench_flist(&zos, dir, keep, scale, runs, json),
        BenchCommand::Pull { run } => pull::bench_pull(&zos, run.dir, run.keep, run.runs, run.json),
        BenchCommand::Kube { run } => kube::bench_kube(&zos, run.dir, run.keep, run.runs, run.json),
    }
}

//! `zos`: the command line of a zos compute node. Today it makes, inspects and restores
//! flists; the node and deployments come next. Holds no business logic: every command parses
//! its arguments, calls a library crate and prints the result.

mod bench;
mod bench_vm;
mod flist;
mod import;
mod mount;
mod progress;
mod vm;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// zos: run containers and VMs on a decentralized compute node.
#[derive(Parser)]
#[command(name = "zos", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make, inspect and restore flists (container images as metadata + content-addressed blocks)
    #[command(subcommand)]
    Flist(flist::FlistCommand),
    /// Run an flist as a micro-VM, print its console, exit with its exit code (like
    /// `docker run --rm`)
    #[command(
        after_help = "Entrypoint, cmd, env, working dir and user come from the image \
config stored by `zos flist import`; flags override them. An flist with /boot/vmlinuz (and no \
image config) boots its own kernel, with the flist as its root and a cloud-init seed disk.\n\
Examples:\n  zos run alpine.fl -- echo hello\n  zos run app.fl --cpus 2 --memory 1G -e MODE=prod -v data:/data"
    )]
    Run {
        #[command(flatten)]
        vm: Box<vm::VmArgs>,
        /// Start in the background, print the VM's name and keep it (see `zos vm`)
        #[arg(long, short = 'd')]
        detach: bool,
        #[command(flatten)]
        place: vm::Place,
    },
    /// Create, start, stop, pause, resume, inspect and remove VMs one step at a time
    Vm {
        #[command(subcommand)]
        cmd: vm::VmCommand,
        #[command(flatten)]
        place: vm::Place,
    },
    /// Disks that outlive VMs, formatted ext4, mounted with `zos run --volume NAME:/path`
    Volume {
        #[command(subcommand)]
        cmd: vm::VolumeCommand,
        #[command(flatten)]
        place: vm::Place,
    },
    /// Measure zos against a floor measured in the same run, and print a table
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() -> ExitCode {
    // Like other Unix tools, end quietly when the reader of our output goes away
    // (`zos flist ls app.fl | head`) instead of panicking on a broken pipe.
    // SAFETY: called first thing in main, before any thread exists; SIG_DFL is a valid handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ZOS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Flist(cmd) => flist::run(cmd),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Run { vm, detach, place } => vm::run(*vm, place, detach),
        Command::Vm { cmd, place } => vm::vm(cmd, place),
        Command::Volume { cmd, place } => vm::volume(cmd, place),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

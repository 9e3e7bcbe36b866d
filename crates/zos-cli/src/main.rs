//! `zos`: the command line of a zos compute node. Today it makes, inspects and restores
//! flists; the node and deployments come next. Holds no business logic: every command parses
//! its arguments, calls a library crate and prints the result.

mod bench;
mod flist;
mod import;
mod mount;
mod progress;

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
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

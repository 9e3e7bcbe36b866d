//! `zos bench …`: benchmarks that print a table next to a floor measured in the same run.

use anyhow::Result;
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum BenchCommand {}

pub fn run(cmd: BenchCommand) -> Result<ExitCode> {
    match cmd {}
}

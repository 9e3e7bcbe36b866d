//! `zos flist import`: Docker / OCI images to flists. Parses arguments, shows progress and
//! prints the result; the work is `zos_flist::oci::import`.

use crate::flist::{Common, NewFlist};
use crate::progress::{human, Bar};
use anyhow::{Context, Result};
use clap::Args;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use zos_flist::oci::{ImportOptions, ImportProgress, Platform};
use zos_flist::Progress;

const AFTER_HELP: &str = "\
IMAGE is one of:
  ./image.tar                        a `docker save` archive (docker-archive: prefix optional)
  ./layout  or  ./layout.tar         an OCI image layout, as a directory or a tarball
                                     (oci: prefix optional; add :NAME to pick one of several)
  docker://HOST[:PORT]/NAME:TAG      an image in a registry (or NAME@sha256:DIGEST); anonymous
                                     pull, plain HTTP for localhost, HTTPS elsewhere

The format of a local image is recognised by its content. The layers are applied as a container
runtime does (whiteouts, owners, modes, xattrs, hardlinks, devices), every blob is checked
against its digest, and the image config (entrypoint, cmd, env, workdir, user, ports, labels) is
kept as JSON in the flist's `zos.image` tag, the reference in `zos.image.ref`. The .fl appears
only when complete. Run as root to keep file owners and device nodes.

Examples:
  docker save busybox:latest -o busybox.tar
  zos flist import busybox.tar -o busybox.fl --store dir:///var/lib/zos/store

  skopeo copy docker://alpine:3.20 oci:alpine:3.20
  zos flist import oci:alpine:3.20 -o alpine.fl --store dir:///var/lib/zos/store

  zos flist import docker://localhost:5000/app:1 -o app.fl --store zdb://hub.example:9900/ns
  zos flist import docker://ghcr.io/org/app:1 --platform linux/arm64 -o app-arm64.fl \\
      --store dir:///var/lib/zos/store

  zos flist tag app.fl                # shows zos.image (the config) and zos.image.ref";

/// Arguments of `zos flist import`.
#[derive(Args)]
#[command(after_help = AFTER_HELP)]
pub struct ImportArgs {
    /// The image: a docker save tarball, an OCI layout (directory or tarball), or
    /// docker://HOST/NAME:TAG
    image: String,
    #[command(flatten)]
    new: NewFlist,
    /// Platform to pick from a multi-platform image: os/arch[/variant]
    /// [default: linux/amd64]
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    platform: Option<String>,
    /// Talk plain HTTP to the registry (always done for localhost / 127.0.0.0/8 / ::1)
    #[arg(long)]
    insecure: bool,
    #[command(flatten)]
    common: Common,
}

/// Per-layer lines on stderr, and a bar per phase when stderr is a terminal.
struct ImportBar {
    quiet: bool,
    bar: Mutex<Bar>,
}

impl ImportBar {
    fn replace(&self, bar: Bar) {
        if let Ok(mut current) = self.bar.lock() {
            current.finish();
            *current = bar;
        }
    }

    fn finish(&self) {
        if let Ok(current) = self.bar.lock() {
            current.finish();
        }
    }
}

impl Progress for ImportBar {
    fn entry(&self) {
        if let Ok(bar) = self.bar.lock() {
            bar.entry();
        }
    }

    fn bytes(&self, n: u64) {
        if let Ok(bar) = self.bar.lock() {
            bar.bytes(n);
        }
    }
}

impl ImportProgress for ImportBar {
    fn layer(&self, index: usize, count: usize, digest: &str, size: Option<u64>) {
        // The old bar goes first, so the line is not drawn over.
        self.replace(Bar::new(
            &format!("layer {index}/{count}"),
            size.unwrap_or(0),
            self.quiet,
        ));
        if !self.quiet {
            let short = digest
                .get(..19)
                .map_or(digest.to_owned(), |d| format!("{d}…"));
            let size = size.map(|s| format!(" {}", human(s))).unwrap_or_default();
            eprintln!("layer {index}/{count} {short}{size}");
        }
    }

    fn packing(&self, bytes: u64) {
        self.replace(Bar::new("packing", bytes, self.quiet));
    }
}

/// Runs `zos flist import`.
pub fn import(args: ImportArgs) -> Result<ExitCode> {
    let platform = args
        .platform
        .as_deref()
        .map(str::parse::<Platform>)
        .transpose()?;
    // A first Ctrl-C (or TERM/HUP) asks the import to stop and clean up after itself; a
    // second one ends the process at once.
    let cancel = Arc::new(AtomicBool::new(false));
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, cancel.clone())
            .context("installing signal handlers")?;
        signal_hook::flag::register(sig, cancel.clone()).context("installing signal handlers")?;
    }
    let opts = ImportOptions {
        pack: args.new.pack_options(args.common.workers)?,
        platform,
        insecure: args.insecure,
        cancel: Some(cancel),
    };
    let progress = ImportBar {
        quiet: args.common.quiet,
        bar: Mutex::new(Bar::new("resolving", 0, true)),
    };
    let started = std::time::Instant::now();
    let result = zos_flist::oci::import(&args.image, &args.new.output, &opts, &progress);
    progress.finish();
    let report = result.with_context(|| {
        format!(
            "importing {} into {} (nothing was written)",
            args.image,
            args.new.output.display()
        )
    })?;
    if args.common.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let layer_bytes: u64 = report.layers.iter().filter_map(|l| l.size).sum();
    println!(
        "imported {} ({}, {}): {} layer{}{}",
        args.image,
        report.platform,
        report.digest,
        report.layers.len(),
        if report.layers.len() == 1 { "" } else { "s" },
        if layer_bytes > 0 {
            format!(", {}", human(layer_bytes))
        } else {
            String::new()
        }
    );
    crate::flist::print_pack_report(&report.pack, started.elapsed(), &args.new.output);
    if report.devices_skipped > 0 {
        println!(
            "skipped {} device node(s): creating them needs root",
            report.devices_skipped
        );
    }
    if report.xattrs_skipped > 0 {
        println!(
            "skipped {} extended attribute(s) the filesystem next to the output cannot hold",
            report.xattrs_skipped
        );
    }
    Ok(ExitCode::SUCCESS)
}

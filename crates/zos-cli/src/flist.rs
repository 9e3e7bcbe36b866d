//! `zos flist …`: argument parsing and printing around `zos-flist`.

use crate::progress::{human, Bar};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use zos_flist::{Flist, Kind, Route, Router, StoreSpec};

const STORE_HELP: &str =
    "Store URL, repeatable: dir:///path, zdb://[user:pass@]host[:port][/namespace], \
redis://host[:port][/db], http(s)://host/path (read-only). Prefix with a range of the block id's \
first byte to shard: 00-7f=dir:///a --store 80-ff=dir:///b";

#[derive(Subcommand)]
pub enum FlistCommand {
    /// Turn a directory into an flist: a small .fl file plus content blocks pushed to stores
    #[command(
        after_help = "Example:\n  zos flist pack ./rootfs -o app.fl --store dir:///var/lib/zos/store"
    )]
    Pack {
        /// Directory to pack (its contents become the flist's root)
        dir: PathBuf,
        #[command(flatten)]
        new: NewFlist,
        #[command(flatten)]
        common: Common,
    },
    /// Restore the tree of an flist into a new or empty directory, identical to what was packed
    #[command(
        after_help = "Blocks are read from the stores recorded in the flist, or from --store instead.\n\
Example:\n  zos flist unpack app.fl ./rootfs\n  zos flist unpack app.fl ./rootfs --store http://mirror.example/store"
    )]
    Unpack {
        /// The .fl file
        flist: PathBuf,
        /// Directory to create (must not exist, or be empty)
        target: PathBuf,
        #[command(flatten)]
        stores: StoreOverride,
        /// Do not restore owners (the default when not running as root)
        #[arg(long)]
        no_owners: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Show tags, routes, entry counts and sizes of an flist (reads no blocks)
    Inspect {
        /// The .fl file
        flist: PathBuf,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// List a directory inside an flist, like `ls -l` (reads no blocks)
    Ls {
        /// The .fl file
        flist: PathBuf,
        /// Directory (or file) inside the flist
        #[arg(default_value = "/")]
        path: String,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Print the content of one file inside an flist, fetching and verifying its blocks
    Cat {
        /// The .fl file
        flist: PathBuf,
        /// File inside the flist, e.g. /etc/hostname
        path: String,
        #[command(flatten)]
        stores: StoreOverride,
    },
    /// Check every block of an flist is present in a store and valid; exits 1 if any is not
    Verify {
        /// The .fl file
        flist: PathBuf,
        #[command(flatten)]
        stores: StoreOverride,
        #[command(flatten)]
        common: Common,
    },
    /// Turn a Docker / OCI image (docker save tarball, OCI layout, or registry) into an flist
    Import(crate::import::ImportArgs),
    /// Mount an flist read-only: blocks are fetched on first read, verified and cached
    #[command(
        after_help = "Examples:\n  zos flist mount app.fl /mnt/app            # foreground, Ctrl-C unmounts\n  \
zos flist mount app.fl /mnt/app --daemon   # returns once mounted\n  zos flist umount /mnt/app"
    )]
    Mount(crate::mount::MountArgs),
    /// Unmount a mounted flist
    Umount(crate::mount::UmountArgs),
    /// List, set or remove an flist's tags, in place
    Tag {
        /// The .fl file
        flist: PathBuf,
        #[command(subcommand)]
        action: Option<TagAction>,
    },
    /// List, add or remove the stores (routes) recorded in an flist, in place
    Store {
        /// The .fl file
        flist: PathBuf,
        #[command(subcommand)]
        action: Option<StoreAction>,
    },
}

#[derive(Subcommand)]
pub enum TagAction {
    /// List tags (the default)
    List,
    /// Set tags: KEY=VALUE…
    Set {
        #[arg(value_name = "KEY=VALUE", required = true)]
        tags: Vec<String>,
    },
    /// Remove tags by key
    Rm {
        #[arg(required = true)]
        keys: Vec<String>,
    },
}

#[derive(Subcommand)]
pub enum StoreAction {
    /// List routes (the default)
    List,
    /// Add stores (optionally with a range prefix, 00-7f=URL)
    Add {
        #[arg(required = true, value_name = "URL")]
        urls: Vec<String>,
        /// Keep passwords in the stored URLs (stripped by default)
        #[arg(long)]
        keep_passwords: bool,
    },
    /// Remove every route with this URL
    Rm {
        #[arg(required = true, value_name = "URL")]
        urls: Vec<String>,
    },
}

#[derive(Args)]
pub struct StoreOverride {
    /// Read blocks from these stores instead of the ones recorded in the flist (repeatable)
    #[arg(long = "store", value_name = "URL")]
    stores: Vec<String>,
}

/// Where a new flist goes and which stores receive its blocks (pack and import).
#[derive(Args)]
pub struct NewFlist {
    /// Where to write the .fl file (written atomically: only appears when complete)
    #[arg(short, long)]
    pub output: PathBuf,
    #[arg(long = "store", value_name = "URL", required = true, help = STORE_HELP)]
    stores: Vec<String>,
    /// Set a tag on the new flist, repeatable: --tag version=1.0
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    tags: Vec<String>,
    /// Keep store passwords in the routes saved inside the flist (stripped by default)
    #[arg(long)]
    keep_passwords: bool,
}

impl NewFlist {
    /// The library's pack options for these arguments.
    pub fn pack_options(&self, workers: usize) -> Result<zos_flist::PackOptions> {
        Ok(zos_flist::PackOptions {
            stores: parse_specs(&self.stores)?,
            keep_passwords: self.keep_passwords,
            tags: self
                .tags
                .iter()
                .map(|t| parse_pair(t))
                .collect::<Result<_>>()?,
            workers,
        })
    }
}

/// Options every long-running flist command takes.
#[derive(Args)]
pub struct Common {
    /// Worker threads (default: twice the number of cores)
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    pub workers: usize,
    /// No progress output
    #[arg(short, long)]
    pub quiet: bool,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: FlistCommand) -> Result<ExitCode> {
    match cmd {
        FlistCommand::Pack { dir, new, common } => pack(&dir, &new, &common),
        FlistCommand::Unpack {
            flist,
            target,
            stores,
            no_owners,
            common,
        } => unpack(&flist, &target, &stores, no_owners, &common),
        FlistCommand::Inspect { flist, json } => inspect(&flist, json),
        FlistCommand::Ls { flist, path, json } => ls(&flist, &path, json),
        FlistCommand::Cat {
            flist,
            path,
            stores,
        } => cat(&flist, &path, &stores),
        FlistCommand::Verify {
            flist,
            stores,
            common,
        } => verify(&flist, &stores, &common),
        FlistCommand::Import(args) => crate::import::import(args),
        FlistCommand::Mount(args) => crate::mount::mount(args),
        FlistCommand::Umount(args) => crate::mount::umount(args),
        FlistCommand::Tag { flist, action } => tag(&flist, action.unwrap_or(TagAction::List)),
        FlistCommand::Store { flist, action } => store(&flist, action.unwrap_or(StoreAction::List)),
    }
}

fn parse_specs(urls: &[String]) -> Result<Vec<StoreSpec>> {
    urls.iter()
        .map(|u| StoreSpec::parse(u).map_err(anyhow::Error::from))
        .collect()
}

pub fn parse_pair(s: &str) -> Result<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => bail!("{s:?}: expected KEY=VALUE"),
    }
}

/// The stores to read from: the override if given, else the flist's routes.
pub fn router_for(flist: &Flist, stores: &[String]) -> Result<Router> {
    router_for_with(flist, stores, None)
}

/// [`router_for`] under a store policy: a store it refuses is a [`zos_flist::store::StoreError`]
/// (`Refused`) at the top of the error.
pub fn router_for_with(
    flist: &Flist,
    stores: &[String],
    policy: Option<&std::sync::Arc<zos_flist::store::StorePolicy>>,
) -> Result<Router> {
    let router = if stores.is_empty() {
        let routes = flist.routes()?;
        if routes.is_empty() {
            bail!(
                "{}: the flist records no store; pass --store URL",
                flist.path().display()
            );
        }
        Router::from_routes_with(&routes, policy)?
    } else {
        Router::from_specs_with(&parse_specs(stores)?, policy)?
    };
    Ok(router)
}

fn print_json<T: Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn pack(dir: &Path, new: &NewFlist, common: &Common) -> Result<ExitCode> {
    let output = &new.output;
    let opts = new.pack_options(common.workers)?;
    // Totals only feed the bar, so skip the extra walk when nobody sees it.
    let total = if Bar::visible(common.quiet) {
        zos_flist::pack::content_bytes(dir)
    } else {
        0
    };
    let bar = Bar::new("packing", total, common.quiet);
    let started = std::time::Instant::now();
    let report = zos_flist::pack(dir, output, &opts, &bar)
        .with_context(|| format!("packing {} into {}", dir.display(), output.display()))?;
    bar.finish();
    if common.json {
        print_json(&report)?;
    } else {
        print_pack_report(&report, started.elapsed(), output);
    }
    Ok(ExitCode::SUCCESS)
}

/// The human summary of a pack (also the end of an import).
pub fn print_pack_report(report: &zos_flist::PackReport, took: std::time::Duration, output: &Path) {
    println!(
        "packed {} entries, {} files, {} in {:.1}s into {}",
        report.entries,
        report.files,
        human(report.bytes),
        took.as_secs_f64(),
        output.display()
    );
    // "blocks" counts what `flist inspect` counts: each hardlinked file once.
    println!(
        "blocks: {} in files (hardlinks counted once), {} sent to stores, {} already present",
        report.blocks, report.blocks_sent, report.blocks_present
    );
}

fn unpack(
    flist_path: &Path,
    target: &Path,
    over: &StoreOverride,
    no_owners: bool,
    common: &Common,
) -> Result<ExitCode> {
    let flist = Flist::open(flist_path)?;
    let router = router_for(&flist, &over.stores)?;
    let stats = flist.stats()?;
    let bar = Bar::new("unpacking", stats.total_bytes, common.quiet);
    let opts = zos_flist::UnpackOptions {
        workers: common.workers,
        owners: no_owners.then_some(false),
    };
    let started = std::time::Instant::now();
    let report = zos_flist::unpack(&flist, &router, target, &opts, &bar).with_context(|| {
        format!(
            "unpacking {} into {} (nothing was left at the target)",
            flist_path.display(),
            target.display()
        )
    })?;
    bar.finish();
    if common.json {
        print_json(&report)?;
    } else {
        println!(
            "unpacked {} entries, {} files, {} in {:.1}s into {}",
            report.entries,
            report.files,
            human(report.bytes),
            started.elapsed().as_secs_f64(),
            target.display()
        );
        if report.sockets_skipped > 0 {
            println!(
                "skipped {} sockets (they only exist while their server runs)",
                report.sockets_skipped
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct InspectOut {
    tags: std::collections::BTreeMap<String, String>,
    routes: Vec<Route>,
    #[serde(flatten)]
    stats: zos_flist::meta::Stats,
}

fn inspect(path: &Path, json: bool) -> Result<ExitCode> {
    let flist = Flist::open(path)?;
    let out = InspectOut {
        tags: flist.tags()?.into_iter().collect(),
        routes: flist.routes()?,
        stats: flist.stats()?,
    };
    if json {
        print_json(&out)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("flist: {}", path.display());
    println!("tags:{}", if out.tags.is_empty() { " (none)" } else { "" });
    for (k, v) in &out.tags {
        println!("  {k} = {v}");
    }
    println!(
        "routes:{}",
        if out.routes.is_empty() { " (none)" } else { "" }
    );
    for r in &out.routes {
        println!("  {:02x}-{:02x} {}", r.start, r.end, r.url);
    }
    let s = &out.stats;
    println!(
        "entries: {} files, {} directories, {} symlinks, {} hardlinks, {} special",
        s.files, s.dirs, s.symlinks, s.hardlinks, s.specials
    );
    // The same notions as pack and import print: hardlinked files counted once.
    println!(
        "content: {} total, {} unique; blocks: {} in files (hardlinks counted once), {} distinct",
        human(s.total_bytes),
        human(s.unique_bytes),
        s.blocks,
        s.unique_blocks
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct LsEntry {
    name: String,
    kind: Kind,
    mode: String,
    uid: u32,
    gid: u32,
    size: u64,
    /// Device numbers of character and block devices.
    #[serde(skip_serializing_if = "Option::is_none")]
    major: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    minor: Option<u32>,
    mtime: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
}

fn ls(path: &Path, inner: &str, json: bool) -> Result<ExitCode> {
    let flist = Flist::open(path)?;
    let node = flist.resolve(inner)?;
    let nodes = if node.kind()? == Kind::Dir {
        flist.children(node.ino)?
    } else {
        vec![node]
    };
    let entries: Vec<LsEntry> = nodes
        .into_iter()
        .map(|n| {
            let mtime = std::time::UNIX_EPOCH
                + std::time::Duration::new(n.mtime.max(0) as u64, n.mtime_nsec);
            let device = n.device_numbers();
            Ok(LsEntry {
                kind: n.kind()?,
                name: n.display_name(),
                mode: unix_mode::to_string(n.mode),
                uid: n.uid,
                gid: n.gid,
                size: n.size,
                major: device.map(|d| d.0),
                minor: device.map(|d| d.1),
                mtime: humantime::format_rfc3339_seconds(mtime).to_string(),
                target: n
                    .link_target
                    .as_ref()
                    .map(|t| String::from_utf8_lossy(t).into_owned()),
            })
        })
        .collect::<Result<_>>()?;
    if json {
        print_json(&entries)?;
        return Ok(ExitCode::SUCCESS);
    }
    for e in entries {
        let target = e.target.map(|t| format!(" -> {t}")).unwrap_or_default();
        // A device shows its numbers where a file shows its size, as `ls -l` does.
        let size = match (e.major, e.minor) {
            (Some(major), Some(minor)) => format!("{major}, {minor}"),
            _ => e.size.to_string(),
        };
        println!(
            "{} {:>5} {:>5} {:>10} {} {}{target}",
            e.mode, e.uid, e.gid, size, e.mtime, e.name
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn cat(path: &Path, inner: &str, over: &StoreOverride) -> Result<ExitCode> {
    let flist = Flist::open(path)?;
    let node = flist.resolve(inner)?;
    let router = router_for(&flist, &over.stores)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    zos_flist::read_file(&flist, &router, inner, &node, &mut out)?;
    std::io::Write::flush(&mut out)?;
    Ok(ExitCode::SUCCESS)
}

fn verify(path: &Path, over: &StoreOverride, common: &Common) -> Result<ExitCode> {
    let flist = Flist::open(path)?;
    let router = router_for(&flist, &over.stores)?;
    let report = zos_flist::verify(&flist, &router, common.workers)?;
    if common.json {
        print_json(&report)?;
    } else {
        for p in &report.problems {
            println!("BAD {} block {} ({}): {}", p.file, p.index, p.id, p.reason);
        }
        println!(
            "{}: {} files, {} distinct blocks checked, {} missing or corrupt",
            path.display(),
            report.files,
            report.blocks,
            report.problems.len()
        );
    }
    Ok(if report.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn tag(path: &Path, action: TagAction) -> Result<ExitCode> {
    match action {
        TagAction::List => {
            for (k, v) in Flist::open(path)?.tags()? {
                println!("{k}={v}");
            }
        }
        TagAction::Set { tags } => {
            let pairs: Vec<_> = tags.iter().map(|t| parse_pair(t)).collect::<Result<_>>()?;
            let flist = Flist::open_rw(path)?;
            for (k, v) in pairs {
                flist.set_tag(&k, &v)?;
            }
        }
        TagAction::Rm { keys } => {
            let flist = Flist::open_rw(path)?;
            for k in keys {
                if !flist.remove_tag(&k)? {
                    bail!("{}: no tag {k:?}", path.display());
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn store(path: &Path, action: StoreAction) -> Result<ExitCode> {
    match action {
        StoreAction::List => {
            for r in Flist::open(path)?.routes()? {
                println!("{:02x}-{:02x}={}", r.start, r.end, r.url);
            }
        }
        StoreAction::Add {
            urls,
            keep_passwords,
        } => {
            let specs = parse_specs(&urls)?;
            let flist = Flist::open_rw(path)?;
            for s in specs {
                flist.add_route(&Route {
                    start: s.start,
                    end: s.end,
                    url: s.route_url(keep_passwords),
                })?;
            }
        }
        StoreAction::Rm { urls } => {
            let flist = Flist::open_rw(path)?;
            for u in urls {
                // Accept the URL with or without a range prefix, as it was given to add.
                let url = StoreSpec::parse(&u).map(|s| s.url).unwrap_or(u.clone());
                let stripped = zos_flist::store::strip_password(&url);
                if flist.remove_route(&url)? + flist.remove_route(&stripped)? == 0 {
                    bail!("{}: no route with URL {stripped}", path.display());
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

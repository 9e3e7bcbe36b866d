//! The commands that talk to a node: `zos node …`, `zos deploy`, `zos ps`, `zos get`,
//! `zos logs`, `zos rm` and `zos events`. Each builds a request, sends it with
//! [`NodeClient`] and prints the answer; the node does the work.

use crate::client::{Answer, ClientArgs, NodeClient};
use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use hyper::StatusCode;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, UNIX_EPOCH};
use zos_types::api::{Event, NodeInfo, Resources, API_PREFIX};
use zos_types::{
    is_valid_deployment_name, Deployment, DeploymentFile, ResultState, ValidationError, Workload,
    WorkloadName, WorkloadSpec,
};

/// How often `zos deploy` asks the node how its workloads are doing.
const POLL_INTERVAL: Duration = Duration::from_millis(300);

/// `zos node run` and `zos node info`.
#[derive(Subcommand)]
pub enum NodeCommand {
    /// Run the node: serve the API and run deployments (usually as root, from systemd)
    ///
    /// Makes its identity on first start, reattaches to the VMs it left running, restarts
    /// what should run and removes what no deployment owns. Stops on SIGINT or SIGTERM,
    /// leaving VMs running for the next start.
    #[command(after_help = "The config file is TOML; every key is optional:\n  \
data_dir = \"/var/lib/zos/node\"              # identity, database, VMs, disks\n  \
listen = [\"unix:///run/zos/node.sock\"]      # and/or \"tcp://IP:PORT\"\n  \
reserve_memory = \"1G\"                       # never given to workloads\n  \
reserve_disk = \"1G\"\n  \
cpu_overcommit = 4.0                        # vCPUs per host CPU (memory is never overcommitted)\n  \
disk = \"500G\"                               # default: the data dir's filesystem size\n  \
cache_dir = \"/var/lib/zos/node/cache\"       # flist block cache\n  \
max_restarts = 5                            # crashes in a row before a zmachine is left in error\n  \
stop_timeout_secs = 10")]
    Run {
        /// The node's config file [default: built-in defaults]
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Show the node's identity, version and capacity
    Info {
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Runs `zos node …`.
pub fn node(cmd: NodeCommand) -> Result<ExitCode> {
    match cmd {
        NodeCommand::Run { config } => {
            zos_node::run(config.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        NodeCommand::Info { client } => node_info(&client),
    }
}

fn node_info(args: &ClientArgs) -> Result<ExitCode> {
    let node = args.connect()?;
    let info: Answer<NodeInfo> = node.get(&format!("{API_PREFIX}/node"))?;
    if args.json {
        println!("{}", info.pretty());
        return Ok(ExitCode::SUCCESS);
    }
    let i = &info.value;
    println!("node:    {}", i.node_id);
    println!("version: {}", i.version);
    println!("accel:   {}", i.accel);
    println!();
    let row = |name: &str, get: fn(&Resources) -> String| {
        vec![name.to_string(), get(&i.total), get(&i.used), get(&i.free)]
    };
    let rows = [
        row("cpus", |r| r.cpus.to_string()),
        row("memory", |r| human_size(r.memory)),
        row("disk", |r| human_size(r.disk)),
    ];
    print!("{}", table(&["RESOURCE", "TOTAL", "USED", "FREE"], &rows));
    Ok(ExitCode::SUCCESS)
}

/// `zos deploy FILE`.
#[derive(Args)]
pub struct DeployArgs {
    /// The deployment file: YAML, or JSON when its name ends in .json
    file: PathBuf,
    /// How long to wait for every workload to leave `init`, like 90s or 10m
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Return as soon as the node has accepted the deployment
    #[arg(long)]
    no_wait: bool,
    /// Sign but do not send: write the signed deployment to OUT for its co-signers
    /// (`zos sign OUT`), then send it with `zos deploy OUT`
    #[arg(long, value_name = "OUT")]
    sign_only: Option<PathBuf>,
    #[command(flatten)]
    client: ClientArgs,
}

/// Creates or updates a deployment, then waits for its workloads to settle.
pub fn deploy(args: DeployArgs) -> Result<ExitCode> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    if let Some(signed) = signed_deployment(&args.file, &text)? {
        if args.sign_only.is_some() {
            bail!(
                "{} is already signed: co-signers add theirs with `zos sign {0}`",
                args.file.display()
            );
        }
        let node = args.client.connect()?;
        signed.verify_signatures().map_err(|e| {
            anyhow!(
                "{}: {e}; every signer must first run `zos sign {0}`",
                args.file.display()
            )
        })?;
        eprintln!(
            "sending {} version {}, signed by {} key(s)",
            signed.name,
            signed.version,
            signed.signatures.len()
        );
        return send(&args, &node, signed);
    }
    // Everything about the file is checked before the key is read or the node contacted.
    let file = parse_deployment_file(&args.file, &text)?;
    if file.version.is_some() || file.workloads.iter().any(|w| w.version.is_some()) {
        eprintln!(
            "note: the version fields in {} are ignored: `zos deploy` works them out from what \
             the node holds",
            args.file.display()
        );
    }
    let node = args.client.connect()?;
    let owner = node.key().public();
    // The node is named once the file is known to be good: asking its id is the first contact.
    let mut deployment = file.into_deployment(owner, owner);
    // Versions are the node's bookkeeping: computed from what it holds, whatever the file says.
    deployment.version = 0;
    for w in &mut deployment.workloads {
        w.version = 0;
    }
    let invalid = |e: ValidationError| anyhow!("{}: {e}", args.file.display());
    deployment.validate().map_err(invalid)?;
    deployment.node = node.node_id()?;

    let name = deployment.name.clone();
    let path = format!("{API_PREFIX}/deployments/{name}");
    let action = match node.get::<Deployment>(&path) {
        Ok(old) => {
            bump_versions(&mut deployment, &old.value)?;
            deployment.validate().map_err(invalid)?;
            let changed = deployment
                .workloads
                .iter()
                .filter(|w| w.version == deployment.version)
                .count();
            format!(
                "updating {name} to version {} ({changed} of {} workloads changed)",
                deployment.version,
                deployment.workloads.len()
            )
        }
        Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => format!("creating {name}"),
        Err(e) => return Err(e.into()),
    };
    deployment.sign(node.key());
    if let Some(out) = &args.sign_only {
        write_signed(out, &deployment)?;
        eprintln!("{action}: signed and written to {}", out.display());
        eprintln!("{}", signing_status(&deployment, out));
        return Ok(ExitCode::SUCCESS);
    }
    if let Err(e) = deployment.verify_signatures() {
        bail!(
            "{e}: {name} needs more signatures than yours; write it with `--sign-only OUT`, \
             have each co-signer run `zos sign OUT`, then `zos deploy OUT`"
        );
    }
    eprintln!("{action}");
    send(&args, &node, deployment)
}

/// Sends a signed deployment (a create at version 0, else an update) and, unless told not
/// to, waits for its workloads; prints their results.
fn send(args: &DeployArgs, node: &NodeClient, deployment: Deployment) -> Result<ExitCode> {
    let name = deployment.name.clone();
    let path = format!("{API_PREFIX}/deployments/{name}");
    let accepted: Answer<Deployment> = if deployment.version == 0 {
        node.post(&format!("{API_PREFIX}/deployments"), &deployment)?
    } else {
        node.put(&path, &deployment)?
    };
    // Reads are the owner's alone: a co-signer who sends it cannot follow it.
    let owner = deployment.owner;
    let followable = owner == node.key().public();
    if !followable {
        eprintln!("accepted; only its owner {owner} can follow it (`zos get {name}`)");
    }
    let (last, settled) = if args.no_wait || !followable {
        (accepted, true)
    } else {
        wait(node, &path, accepted, deployment.version, args.timeout)?
    };
    if args.client.json {
        println!("{}", last.pretty());
    } else {
        print!("{}", results_table(&last.value));
    }
    if !settled {
        let pending: Vec<String> = last
            .value
            .workloads
            .iter()
            .filter(|w| is_pending(w))
            .map(|w| format!("{} ({})", w.name, state_label(w)))
            .collect();
        bail!(
            "{name}: still waiting after {} for {}; follow it with `zos get {name}` or \
             `zos events`",
            humantime::format_duration(args.timeout),
            pending.join(", ")
        );
    }
    let failed: Vec<&Workload> = last
        .value
        .workloads
        .iter()
        .filter(|w| state_of(w) == Some(ResultState::Error))
        .collect();
    if !failed.is_empty() {
        let names: Vec<&str> = failed.iter().map(|w| w.name.as_str()).collect();
        // Only machines have a console worth reading.
        let logs = failed
            .iter()
            .find(|w| matches!(w.spec, WorkloadSpec::Zmachine(_)))
            .map_or(String::new(), |w| {
                format!(" and `zos logs {name}/{}`", w.name)
            });
        bail!(
            "{name}: {} failed; see the messages above{logs}",
            names.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Parses a deployment file; errors name the file and the field path.
fn parse_deployment_file(path: &Path, text: &str) -> Result<DeploymentFile> {
    let parsed = if is_json(path) {
        DeploymentFile::from_json_str(text)
    } else {
        DeploymentFile::from_yaml_str(text)
    };
    parsed.map_err(|e| anyhow!("{}: {e}", path.display()))
}

fn is_json(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
}

/// A deployment already signed (written by `--sign-only`, JSON with an owner), if `text`
/// is one; users' own files have no owner.
fn signed_deployment(path: &Path, text: &str) -> Result<Option<Deployment>> {
    let has_owner = is_json(path)
        && serde_json::from_str::<serde_json::Value>(text).is_ok_and(|v| v.get("owner").is_some());
    if !has_owner {
        return Ok(None);
    }
    Deployment::from_json_str(text)
        .map(Some)
        .map_err(|e| anyhow!("{}: a signed deployment, but {e}", path.display()))
}

/// Writes a signed deployment as JSON, whole or not at all.
fn write_signed(path: &Path, d: &Deployment) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("writing next to {}", path.display()))?;
    serde_json::to_writer_pretty(&mut tmp, d)?;
    tmp.write_all(b"\n")?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Whether a signed deployment can be sent, or whose signature it still lacks.
fn signing_status(d: &Deployment, file: &Path) -> String {
    match d.verify_signatures() {
        Ok(()) => format!(
            "every signature needed is there: send it with `zos deploy {}`",
            file.display()
        ),
        Err(e) => format!(
            "not yet complete ({e}): each co-signer runs `zos sign {}`",
            file.display()
        ),
    }
}

/// `zos sign FILE`.
#[derive(Args)]
pub struct SignArgs {
    /// A deployment written by `zos deploy --sign-only`; your signature is added in place
    file: PathBuf,
    /// Your key file [default: $XDG_CONFIG_HOME/zos/key.pem or ~/.config/zos/key.pem]
    #[arg(long, env = "ZOS_KEY", value_name = "FILE")]
    key: Option<PathBuf>,
}

/// Runs `zos sign`: shows what is signed, adds the caller's signature, says what is missing.
pub fn sign_file(args: &SignArgs) -> Result<ExitCode> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let mut d = signed_deployment(&args.file, &text)?.with_context(|| {
        format!(
            "{} is not a signed deployment; make one with `zos deploy FILE.yaml --sign-only {0}`",
            args.file.display()
        )
    })?;
    let key = crate::key::load(args.key.as_deref())?;
    let me = key.public();
    if !d.signature_requirement.requests.iter().any(|r| r.key == me) {
        bail!(
            "your key {me} is not among the signers of {} ({})",
            d.name,
            args.file.display()
        );
    }
    // A co-signer should know what they put their name to.
    eprintln!(
        "signing {} version {} for node {}, owned by {}:",
        d.name, d.version, d.node, d.owner
    );
    for w in &d.workloads {
        eprintln!(
            "  {} ({}), version {}",
            w.name,
            type_name(&w.spec),
            w.version
        );
    }
    d.sign(&key);
    write_signed(&args.file, &d)?;
    eprintln!("{}", signing_status(&d, &args.file));
    Ok(ExitCode::SUCCESS)
}

/// Gives `new` the version after `old`'s, and each workload the version in which it last
/// changed: an unchanged workload keeps its old version, which tells the node to leave it
/// running; a changed or new one gets the new version.
fn bump_versions(new: &mut Deployment, old: &Deployment) -> Result<()> {
    let version = old.version.checked_add(1).with_context(|| {
        format!(
            "deployment {} is at the last version ({}); deploy it under a new name",
            old.name, old.version
        )
    })?;
    new.version = version;
    for w in &mut new.workloads {
        let unchanged = old.workloads.iter().find(|o| {
            o.name == w.name
                && o.spec == w.spec
                && o.description == w.description
                && o.metadata == w.metadata
        });
        w.version = unchanged.map_or(version, |o| o.version);
    }
    Ok(())
}

/// Polls until no workload of `version` (or later) is still starting, printing each change
/// on stderr. Returns the last answer and whether it settled before `timeout`.
fn wait(
    node: &NodeClient,
    path: &str,
    accepted: Answer<Deployment>,
    version: u32,
    timeout: Duration,
) -> Result<(Answer<Deployment>, bool)> {
    let deadline = Instant::now() + timeout;
    let mut seen: BTreeMap<WorkloadName, &'static str> = accepted
        .value
        .workloads
        .iter()
        .map(|w| (w.name.clone(), state_label(w)))
        .collect();
    let mut current = accepted;
    loop {
        // The node may still answer with the previous version for a moment after an update.
        let settled =
            current.value.version >= version && !current.value.workloads.iter().any(is_pending);
        if settled {
            return Ok((current, true));
        }
        if Instant::now() >= deadline {
            return Ok((current, false));
        }
        std::thread::sleep(POLL_INTERVAL);
        current = node.get(path)?;
        for w in &current.value.workloads {
            let now = state_label(w);
            let before = seen.insert(w.name.clone(), now);
            match before {
                Some(before) if before != now => eprintln!("{}: {before} → {now}", w.name),
                None => eprintln!("{}: {now}", w.name),
                _ => {}
            }
        }
    }
}

fn is_pending(w: &Workload) -> bool {
    matches!(state_of(w), None | Some(ResultState::Init))
}

fn state_of(w: &Workload) -> Option<ResultState> {
    w.result.as_ref().map(|r| r.state)
}

/// A workload's state as printed; no result yet reads as `init`.
fn state_label(w: &Workload) -> &'static str {
    state_of(w).map_or("init", state_name)
}

fn state_name(state: ResultState) -> &'static str {
    match state {
        ResultState::Init => "init",
        ResultState::Ok => "ok",
        ResultState::Error => "error",
        ResultState::Paused => "paused",
        ResultState::Deleted => "deleted",
    }
}

fn type_name(spec: &WorkloadSpec) -> &'static str {
    match spec {
        WorkloadSpec::Zmachine(_) => "zmachine",
        WorkloadSpec::Zmount(_) => "zmount",
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

fn results_table(d: &Deployment) -> String {
    let rows: Vec<Vec<String>> = d
        .workloads
        .iter()
        .map(|w| {
            vec![
                w.name.to_string(),
                type_name(&w.spec).to_string(),
                state_label(w).to_string(),
                first_line(w.result.as_ref().map_or("", |r| &r.message)).to_string(),
            ]
        })
        .collect();
    table(&["WORKLOAD", "TYPE", "STATE", "MESSAGE"], &rows)
}

/// The state `zos ps` shows for a whole deployment: `ok` when every workload is, otherwise
/// the worst one (error, then init, then paused, then deleted).
fn summary_state(d: &Deployment) -> &'static str {
    let rank = |state: Option<ResultState>| match state {
        Some(ResultState::Error) => 4,
        None | Some(ResultState::Init) => 3,
        Some(ResultState::Paused) => 2,
        Some(ResultState::Deleted) => 1,
        Some(ResultState::Ok) => 0,
    };
    d.workloads
        .iter()
        .map(state_of)
        .max_by_key(|s| rank(*s))
        .map_or("-", |s| s.map_or("init", state_name))
}

/// Runs `zos ps`; deleted deployments only with `all`.
pub fn ps(all: bool, args: &ClientArgs) -> Result<ExitCode> {
    let node = args.connect()?;
    let query = if all { "?all=true" } else { "" };
    let mut list: Answer<Vec<Deployment>> =
        node.get(&format!("{API_PREFIX}/deployments{query}"))?;
    if args.json {
        println!("{}", list.pretty());
        return Ok(ExitCode::SUCCESS);
    }
    list.value.sort_by(|a, b| a.name.cmp(&b.name));
    let rows: Vec<Vec<String>> = list
        .value
        .iter()
        .map(|d| {
            vec![
                d.name.clone(),
                d.version.to_string(),
                d.workloads.len().to_string(),
                summary_state(d).to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["NAME", "VERSION", "WORKLOADS", "STATE"], &rows)
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs `zos get NAME`.
pub fn get(name: &str, args: &ClientArgs) -> Result<ExitCode> {
    check_name(name)?;
    let node = args.connect()?;
    let d: Answer<Deployment> = node.get(&format!("{API_PREFIX}/deployments/{name}"))?;
    if args.json {
        println!("{}", d.pretty());
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", describe(&d.value));
    Ok(ExitCode::SUCCESS)
}

/// The text `zos get` prints: the deployment, then each workload with its key settings.
fn describe(d: &Deployment) -> String {
    let mut out = format!(
        "name:        {}\nversion:     {}\nowner:       {}\n",
        d.name, d.version, d.owner
    );
    if !d.description.is_empty() {
        out += &format!("description: {}\n", d.description);
    }
    for w in &d.workloads {
        out += &format!(
            "\n{} ({}, version {}): {}\n",
            w.name,
            type_name(&w.spec),
            w.version,
            state_label(w)
        );
        let mut field = |name: &str, value: String| {
            out += &format!("  {:<9}{value}\n", format!("{name}:"));
        };
        if let Some(r) = w.result.as_ref().filter(|r| !r.message.is_empty()) {
            // Later lines of a multi-line message stay under the first.
            field(
                "message",
                r.message.trim_end().replace('\n', "\n           "),
            );
        }
        if !w.description.is_empty() {
            field("about", w.description.clone());
        }
        match &w.spec {
            WorkloadSpec::Zmachine(m) => {
                field("flist", m.flist.clone());
                field("cpu", m.cpu.to_string());
                field("memory", m.memory.to_string());
                if !m.mounts.is_empty() {
                    let mounts: Vec<String> = m
                        .mounts
                        .iter()
                        .map(|x| format!("{} at {}", x.name, x.mountpoint))
                        .collect();
                    field("mounts", mounts.join(", "));
                }
            }
            WorkloadSpec::Zmount(z) => field("size", z.size.to_string()),
        }
        if let Some(r) = w.result.as_ref().filter(|r| !r.data.is_null()) {
            field("data", r.data.to_string());
        }
    }
    out
}

/// `zos logs NAME/WORKLOAD`.
#[derive(Args)]
pub struct LogsArgs {
    /// The deployment and the workload, as NAME/WORKLOAD
    target: String,
    /// Keep printing new output as it comes, until interrupted
    #[arg(long, short = 'f')]
    follow: bool,
    #[command(flatten)]
    client: ClientArgs,
}

/// Runs `zos logs`: the console log, copied to stdout as it arrives.
pub fn logs(args: &LogsArgs) -> Result<ExitCode> {
    let (name, workload) = parse_target(&args.target)?;
    let node = args.client.connect()?;
    let follow = if args.follow { "?follow=true" } else { "" };
    let path = format!("{API_PREFIX}/deployments/{name}/logs/{workload}{follow}");
    let mut out = std::io::stdout().lock();
    // Flushed per piece, so a partial line (a prompt, a progress dot) shows up at once.
    node.stream(&path, |chunk| {
        out.write_all(chunk)?;
        out.flush()
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Splits `NAME/WORKLOAD`, checking both names.
fn parse_target(target: &str) -> Result<(&str, WorkloadName)> {
    let (name, workload) = target.split_once('/').with_context(|| {
        format!("{target:?}: give the deployment and the workload as NAME/WORKLOAD, as in `zos logs web/server`")
    })?;
    check_name(name)?;
    let workload = WorkloadName::try_from(workload.to_string()).map_err(|e| anyhow!(e))?;
    Ok((name, workload))
}

fn check_name(name: &str) -> Result<()> {
    if !is_valid_deployment_name(name) {
        bail!("{name:?} is not a deployment name: use 1 to 64 letters, digits, '_' or '-'");
    }
    Ok(())
}

/// Runs `zos rm NAME`.
pub fn rm(name: &str, args: &ClientArgs) -> Result<ExitCode> {
    check_name(name)?;
    let node = args.connect()?;
    let removed: Answer<Deployment> = node.delete(&format!("{API_PREFIX}/deployments/{name}"))?;
    if args.json {
        println!("{}", removed.pretty());
    } else {
        println!("{name} removed");
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `zos events`: one line per event, until the node ends the stream or we are stopped.
pub fn events(args: &ClientArgs) -> Result<ExitCode> {
    let node = args.connect()?;
    let mut out = std::io::stdout().lock();
    let mut pending = Vec::new();
    node.stream(&format!("{API_PREFIX}/events"), |chunk| {
        // A line may arrive in pieces; print only whole lines.
        pending.extend_from_slice(chunk);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            write_event(&mut out, &line, args.json)?;
        }
        out.flush()
    })?;
    write_event(&mut out, &pending, args.json)?;
    out.flush()?;
    // The node keeps the stream open as long as it runs.
    eprintln!("zos: the node ended the event stream (it is stopping)");
    Ok(ExitCode::SUCCESS)
}

fn write_event(out: &mut impl Write, line: &[u8], raw: bool) -> std::io::Result<()> {
    let line = String::from_utf8_lossy(line);
    let line = line.trim();
    if line.is_empty() {
        return Ok(());
    }
    match serde_json::from_str::<Event>(line) {
        Ok(event) if !raw => writeln!(out, "{}", event_line(&event)),
        // Raw on request, and for lines this zos does not understand: better shown than lost.
        _ => writeln!(out, "{line}"),
    }
}

fn event_line(e: &Event) -> String {
    let time = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(e.time));
    let what = match &e.workload {
        Some(w) => format!("{}/{w}", e.deployment),
        None => e.deployment.clone(),
    };
    let line = format!("{time} {what} {} {}", state_name(e.state), e.message);
    line.trim_end().to_string()
}

/// Left-aligned columns two spaces apart, headers first.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            line += &format!("{cell:<width$}  ");
        }
        out += line.trim_end();
        out.push('\n');
    }
    out
}

fn human_size(bytes: u64) -> String {
    zos_types::ByteSize(bytes).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use zos_types::{Keypair, WorkloadResult};

    const YAML: &str = "
name: app
workloads:
  - name: disk
    type: zmount
    data: { size: 1G }
  - name: web
    type: zmachine
    data: { flist: https://hub.example/web.fl, mounts: [{ name: disk, mountpoint: /data }] }
";

    fn deployment(yaml: &str) -> Deployment {
        let key = Keypair::from_seed(&[7; 32]);
        DeploymentFile::from_yaml_str(yaml)
            .unwrap()
            .into_deployment(key.public(), Keypair::from_seed(&[3; 32]).public())
    }

    fn with_states(mut d: Deployment, states: &[Option<ResultState>]) -> Deployment {
        for (w, state) in d.workloads.iter_mut().zip(states) {
            w.result = state.map(|state| WorkloadResult {
                state,
                message: String::new(),
                data: serde_json::Value::Null,
                created: 1,
            });
        }
        d
    }

    #[test]
    fn unchanged_workloads_keep_their_version() {
        let mut old = deployment(YAML);
        old.version = 4;
        old.workloads[0].version = 2;
        old.workloads[1].version = 4;

        let mut same = deployment(YAML);
        bump_versions(&mut same, &old).unwrap();
        assert_eq!(same.version, 5);
        assert_eq!(
            same.workloads.iter().map(|w| w.version).collect::<Vec<_>>(),
            [2, 4]
        );
        same.validate().unwrap();

        // web changes its memory, db is new, disk only changes its description.
        let changed = YAML.replace("mounts:", "memory: 1G, mounts:")
            + "  - name: db\n    type: zmount\n    data: { size: 2G }\n";
        let changed = changed.replace(
            "  - name: disk\n",
            "  - name: disk\n    description: scratch\n",
        );
        let mut new = deployment(&changed);
        bump_versions(&mut new, &old).unwrap();
        let versions: Vec<(&str, u32)> = new
            .workloads
            .iter()
            .map(|w| (w.name.as_str(), w.version))
            .collect();
        assert_eq!(versions, [("disk", 5), ("web", 5), ("db", 5)]);

        // Results on the old deployment do not count as a change.
        let old = with_states(old, &[Some(ResultState::Ok), Some(ResultState::Error)]);
        let mut again = deployment(YAML);
        bump_versions(&mut again, &old).unwrap();
        assert_eq!(again.workloads[0].version, 2);

        let mut last = deployment(YAML);
        last.version = u32::MAX;
        let err = bump_versions(&mut deployment(YAML), &last).unwrap_err();
        assert!(err.to_string().contains("last version"), "{err}");
    }

    #[test]
    fn ps_shows_the_worst_state() {
        use ResultState::*;
        let d = deployment(YAML);
        let state = |states: &[Option<ResultState>]| summary_state(&with_states(d.clone(), states));
        assert_eq!(state(&[Some(Ok), Some(Ok)]), "ok");
        assert_eq!(state(&[Some(Ok), Some(Paused)]), "paused");
        assert_eq!(state(&[Some(Paused), Some(Init)]), "init");
        assert_eq!(state(&[Some(Ok), None]), "init");
        assert_eq!(state(&[Some(Init), Some(Error)]), "error");
        assert_eq!(state(&[Some(Error), Some(Paused)]), "error");
        let mut empty = d;
        empty.workloads.clear();
        assert_eq!(summary_state(&empty), "-");
    }

    #[test]
    fn output_helpers() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1536 << 20), "1.5 GiB");
        assert_eq!(human_size(256 << 20), "256 MiB");
        assert_eq!(
            table(&["A", "LONGER"], &[vec!["xyz".into(), "1".into()]]),
            "A    LONGER\nxyz  1\n"
        );
        let (name, workload) = parse_target("app/web").unwrap();
        assert_eq!((name, workload.as_str()), ("app", "web"));
        assert!(parse_target("app")
            .unwrap_err()
            .to_string()
            .contains("NAME/WORKLOAD"));
        assert!(parse_target("app/we-b").is_err());
        let event = Event {
            time: 0,
            deployment: "app".into(),
            version: 1,
            workload: Some("web".into()),
            state: ResultState::Ok,
            message: String::new(),
        };
        assert_eq!(event_line(&event), "1970-01-01T00:00:00Z app/web ok");
    }
}

//! `zos deploy` and `zos sign`: read the file, plan and sign with `zos_client`, send or
//! write it, print what happened.

use crate::client::ClientArgs;
use crate::output::results_table;
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use zos_client::status::{failed, pending, state_label};
use zos_client::NodeClient;
use zos_client::{
    cosign, describe_signing, missing_signatures, plan, read_signed, sets_versions,
    wait_until_settled, watch_settle, write_signed, Action, DeploymentInput, StateChange, Waited,
};
use zos_types::{Deployment, WorkloadSpec};

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
    /// Once every workload is up, how long to keep watching machines for a process that
    /// ends at once (an error, a restart, an exit other than 0), which fails the deploy;
    /// 0s skips it
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// Sign but do not send: write the signed deployment to OUT for its co-signers
    /// (`zos sign OUT`), then send it with `zos deploy OUT`
    #[arg(long, value_name = "OUT")]
    sign_only: Option<PathBuf>,
    #[command(flatten)]
    client: ClientArgs,
}

/// Creates or updates a deployment, then waits for its workloads to settle.
pub fn deploy(args: DeployArgs) -> Result<ExitCode> {
    let file = match DeploymentInput::read(&args.file)? {
        DeploymentInput::Signed(signed) => return send_signed(&args, signed),
        DeploymentInput::File(file) => file,
    };
    // Everything about the file is checked before the key is read or the node contacted.
    if sets_versions(&file) {
        eprintln!(
            "note: the version fields in {} are ignored: `zos deploy` works them out from what \
             the node holds",
            args.file.display()
        );
    }
    let node = args.client.connect()?;
    let plan = plan(&node, file, &args.file)?;
    let name = plan.deployment.name.clone();
    let action = match plan.action {
        Action::Create => format!("creating {name}"),
        Action::Update {
            version,
            changed,
            total,
        } => {
            format!("updating {name} to version {version} ({changed} of {total} workloads changed)")
        }
    };
    let deployment = plan.sign(node.key());
    if let Some(out) = &args.sign_only {
        write_signed(out, &deployment)?;
        eprintln!("{action}: signed and written to {}", out.display());
        eprintln!("{}", signing_status(&deployment, out));
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(missing) = missing_signatures(&deployment) {
        bail!(
            "{}: {name} needs more signatures than yours; write it with `--sign-only OUT`, \
             have each co-signer run `zos sign OUT`, then `zos deploy OUT`",
            missing.reason
        );
    }
    eprintln!("{action}");
    send(&args.waiting(), &node, deployment)
}

/// Sends a file written by `--sign-only` once every signer has signed it.
fn send_signed(args: &DeployArgs, signed: Deployment) -> Result<ExitCode> {
    if args.sign_only.is_some() {
        bail!(
            "{} is already signed: co-signers add theirs with `zos sign {0}`",
            args.file.display()
        );
    }
    let node = args.client.connect()?;
    if let Some(missing) = missing_signatures(&signed) {
        bail!(
            "{}: {}; every signer must first run `zos sign {0}`",
            args.file.display(),
            missing.reason
        );
    }
    eprintln!(
        "sending {} version {}, signed by {} key(s)",
        signed.name,
        signed.version,
        signed.signatures.len()
    );
    send(&args.waiting(), &node, signed)
}

/// How long and how `send` waits for a deployment it sent.
pub struct Waiting {
    /// Give up waiting for workloads to settle after this long.
    pub timeout: Duration,
    /// Do not wait at all.
    pub no_wait: bool,
    /// Then watch machines this long for a process that ends at once.
    pub settle: Duration,
    /// Print the node's JSON answer instead of the results table.
    pub json: bool,
}

impl DeployArgs {
    fn waiting(&self) -> Waiting {
        Waiting {
            timeout: self.timeout,
            no_wait: self.no_wait,
            settle: self.settle,
            json: self.client.json,
        }
    }
}

/// Sends a signed deployment and, unless told not to, waits for its workloads; prints
/// their results. Fails when a workload failed or did not settle.
pub fn send(args: &Waiting, node: &NodeClient, deployment: Deployment) -> Result<ExitCode> {
    let name = deployment.name.clone();
    let accepted = node.send(&deployment)?;
    // Its owner and every key its requirement names can read it; another sender cannot.
    let (owner, me) = (deployment.owner, node.key().public());
    let followable = owner == me
        || deployment
            .signature_requirement
            .requests
            .iter()
            .any(|r| r.key == me);
    if !followable {
        eprintln!(
            "accepted; only its owner {owner} and its signers can follow it (`zos get {name}`)"
        );
    }
    let Waited { last, settled } = if args.no_wait || !followable {
        Waited {
            last: accepted,
            settled: true,
        }
    } else {
        wait_until_settled(
            node,
            accepted,
            deployment.version,
            args.timeout,
            print_change,
        )?
    };
    // A machine whose process ends at once is running for a moment: watch them a little.
    let has_machines = deployment
        .workloads
        .iter()
        .any(|w| matches!(w.spec, WorkloadSpec::Zmachine(_)));
    let watch = settled && has_machines && !args.no_wait && followable && !args.settle.is_zero();
    let (last, unsettled) = match watch && failed(&last.value).is_empty() {
        true => watch_settle(node, last, args.settle)?,
        false => (last, None),
    };
    if args.json {
        println!("{}", last.pretty());
    } else {
        print!("{}", results_table(&last.value));
    }
    if !settled {
        let pending: Vec<String> = pending(&last.value)
            .iter()
            .map(|w| format!("{} ({})", w.name, state_label(w)))
            .collect();
        bail!(
            "{name}: still waiting after {} for {}; follow it with `zos get {name}` or \
             `zos events`",
            humantime::format_duration(args.timeout),
            pending.join(", ")
        );
    }
    let failed = failed(&last.value);
    if let Some(u) = unsettled {
        bail!(
            "{name}: {} did not stay up: {}; see `zos logs {name}/{}`",
            u.workload,
            u.what,
            u.workload
        );
    }
    if !failed.is_empty() {
        // Each with its reason: the table above may have gone to a file or a pipe.
        let names: Vec<String> = failed
            .iter()
            .map(|w| match w.result.as_ref().map(|r| r.message.trim()) {
                Some(why) if !why.is_empty() => format!("{} ({why})", w.name),
                _ => w.name.to_string(),
            })
            .collect();
        // Only machines have a console worth reading.
        let logs = failed
            .iter()
            .find(|w| matches!(w.spec, WorkloadSpec::Zmachine(_)))
            .map_or(String::new(), |w| {
                format!(" and `zos logs {name}/{}`", w.name)
            });
        bail!(
            "{name}: {} failed; see `zos get {name}`{logs}",
            names.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_change(change: StateChange<'_>) {
    let progress = change
        .progress
        .map(|p| format!(" ({p})"))
        .unwrap_or_default();
    match change.before {
        Some(before) if before != change.now => {
            eprintln!("{}: {before} → {}{progress}", change.workload, change.now)
        }
        _ => eprintln!("{}: {}{progress}", change.workload, change.now),
    }
}

/// Whether a signed deployment can be sent, or whose signature it still lacks.
fn signing_status(d: &Deployment, file: &Path) -> String {
    match missing_signatures(d) {
        None => format!(
            "every signature needed is there: send it with `zos deploy {}`",
            file.display()
        ),
        Some(missing) => format!(
            "not yet complete ({}): each co-signer runs `zos sign {}`",
            missing.reason,
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
    let mut d = read_signed(&args.file)?.with_context(|| {
        format!(
            "{} is not a signed deployment; make one with `zos deploy FILE.yaml --sign-only {0}`",
            args.file.display()
        )
    })?;
    let key = crate::key::load(args.key.as_deref())?;
    zos_client::check_signer(&d, &key.public())
        .map_err(|e| anyhow!("{e} ({})", args.file.display()))?;
    // A co-signer should know what they put their name to.
    eprintln!("{}", describe_signing(&d));
    cosign(&mut d, &key)?;
    write_signed(&args.file, &d)?;
    eprintln!("{}", signing_status(&d, &args.file));
    Ok(ExitCode::SUCCESS)
}

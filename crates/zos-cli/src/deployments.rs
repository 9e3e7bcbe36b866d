//! The commands about deployments already on the node: `zos ps`, `zos get`, `zos logs`,
//! `zos rm` and `zos events`. Each parses, asks `zos_client`, and prints.

use crate::client::ClientArgs;
use crate::output::table;
use anyhow::{anyhow, Context, Result};
use clap::Args;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};
use zos_client::status::{state_label, state_name, summary_state};
use zos_client::{check_deployment_name, EventLine};
use zos_types::api::Event;
use zos_types::{Deployment, WorkloadName, WorkloadSpec};

/// Runs `zos ps`: the caller's deployments and those it co-owns (is a signer of); deleted
/// ones only with `all`.
pub fn ps(all: bool, args: &ClientArgs) -> Result<ExitCode> {
    let node = args.connect()?;
    let me = node.key().public();
    let mut list = node.deployments(all)?;
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
                if d.owner == me {
                    "you".to_string()
                } else {
                    d.owner.to_string()
                },
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["NAME", "VERSION", "WORKLOADS", "STATE", "OWNER"], &rows)
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs `zos get NAME`.
pub fn get(name: &str, args: &ClientArgs) -> Result<ExitCode> {
    check_deployment_name(name)?;
    let d = args.connect()?.deployment(name)?;
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
            w.spec.type_name(),
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
                match &m.image {
                    Some(image) => field("image", image.clone()),
                    None => field("flist", m.flist.clone()),
                }
                if let Some(auth) = &m.registry_auth {
                    field("pull as", format!("{} (password sealed)", auth.username));
                }
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
                if !m.ports.is_empty() {
                    let ports: Vec<String> = m
                        .ports
                        .iter()
                        .map(|p| format!("{}->{}/{}", p.host_port(), p.port, p.protocol))
                        .collect();
                    field("ports", ports.join(", "));
                }
                if let Some(ip) = &m.public_ip {
                    field("public_ip", ip.to_string());
                }
                if !m.secret_env.is_empty() {
                    let names: Vec<&str> = m.secret_env.keys().map(String::as_str).collect();
                    field("secrets", format!("{} (sealed)", names.join(", ")));
                }
            }
            WorkloadSpec::Zmount(z) => field("size", z.size.to_string()),
            WorkloadSpec::Network(n) => {
                field("ip_range", n.ip_range.to_string());
                field("subnet", n.subnet.to_string());
                if let Some(wg) = &n.wireguard {
                    field("wireguard", format!("{} peers", wg.peers.len()));
                }
            }
            WorkloadSpec::Ip(ip) => field(
                "address",
                ip.address
                    .map_or("any of the node's".to_string(), |a| a.to_string()),
            ),
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
    let mut out = std::io::stdout().lock();
    // Flushed per piece, so a partial line (a prompt, a progress dot) shows up at once.
    let sink = |chunk: &[u8]| {
        out.write_all(chunk)?;
        out.flush()
    };
    if args.follow {
        node.follow_logs(name, &workload, sink)?;
    } else {
        node.logs(name, &workload, sink)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Splits `NAME/WORKLOAD`, checking both names.
pub fn parse_target(target: &str) -> Result<(&str, WorkloadName)> {
    let (name, workload) = target.split_once('/').with_context(|| {
        format!("{target:?}: give the deployment and the workload as NAME/WORKLOAD, as in `zos logs web/server`")
    })?;
    check_deployment_name(name)?;
    let workload = WorkloadName::try_from(workload.to_string()).map_err(|e| anyhow!(e))?;
    Ok((name, workload))
}

/// Runs `zos rm NAME`.
pub fn rm(name: &str, args: &ClientArgs) -> Result<ExitCode> {
    check_deployment_name(name)?;
    let removed = args.connect()?.remove(name)?;
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
    node.events(|line: EventLine<'_>| {
        match line.event {
            Some(event) if !args.json => writeln!(out, "{}", event_line(&event))?,
            // Raw on request, and for lines this zos does not understand: better shown than lost.
            _ => writeln!(out, "{}", line.raw)?,
        }
        out.flush()
    })?;
    out.flush()?;
    // The node keeps the stream open as long as it runs.
    eprintln!("zos: the node ended the event stream (it is stopping)");
    Ok(ExitCode::SUCCESS)
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

#[cfg(test)]
mod tests {
    use super::*;
    use zos_types::ResultState;

    #[test]
    fn output_helpers() {
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

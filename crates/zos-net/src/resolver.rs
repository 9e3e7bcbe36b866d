//! The resolver of each private network: a dnsmasq in the network's namespace, listening on
//! its gateway address only. It answers the names of the network's machines from a hosts
//! file the caller keeps up to date (re-read on SIGHUP), never forwards `.internal`, and
//! forwards every other name to the host's resolvers (see [`crate::dns`]).
//!
//! dnsmasq runs detached, as the VMs do, so names keep resolving while whoever manages the
//! network restarts; it is found again by its pid file, checked against its name and its
//! namespace, so a recycled pid is never signalled.

use crate::{dns, netns, Error, Result};
use std::net::Ipv4Addr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The names of one machine: an address of it and every name it answers to there.
pub type HostNames = (std::net::IpAddr, Vec<String>);

/// Where the resolver of the network in `netns` keeps its hosts file and pid file. dnsmasq
/// drops to `nobody` and re-reads the hosts file as that user, so the path is traversable
/// by all; the parent is not listable.
fn dir(netns: &str) -> PathBuf {
    crate::lease::state_dir().join("dns").join(netns)
}

/// The hosts file's text for `names`.
fn hosts_text(names: &[HostNames]) -> String {
    names
        .iter()
        .map(|(ip, n)| format!("{ip} {}\n", n.join(" ")))
        .collect()
}

/// The pid of the resolver of `netns` if it runs: the pid file names a `dnsmasq` inside
/// that namespace.
fn running(netns: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(dir(netns).join("pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let inside = std::fs::metadata(format!("/proc/{pid}/ns/net")).ok()?.ino();
    let ns = std::fs::metadata(netns::path(netns)).ok()?.ino();
    (comm.trim() == "dnsmasq" && inside == ns).then_some(pid)
}

/// Makes the resolver of the network in `netns` answer `names`, listening on `gateway`:
/// started if it does not run, told to re-read its hosts file if that changed.
pub fn ensure(netns: &str, gateway: Ipv4Addr, names: &[HostNames]) -> Result<()> {
    let dir = dir(netns);
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let parent = dir.parent().unwrap_or(&dir);
    for (path, mode) in [(parent, 0o711), (dir.as_path(), 0o755)] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io(format!("setting the mode of {}", path.display()), e))?;
    }
    let hosts = dir.join("hosts");
    let text = hosts_text(names);
    let changed = std::fs::read_to_string(&hosts).ok().as_deref() != Some(text.as_str());
    if changed {
        let tmp = dir.join("hosts.tmp");
        std::fs::write(&tmp, &text)
            .and_then(|_| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)))
            .and_then(|_| std::fs::rename(&tmp, &hosts))
            .map_err(|e| Error::io(format!("writing {}", hosts.display()), e))?;
    }
    if let Some(pid) = running(netns) {
        if changed {
            // SAFETY: a signal to the process checked above to be this network's dnsmasq.
            unsafe { libc::kill(pid, libc::SIGHUP) };
        }
        return Ok(());
    }
    let mut args = vec![
        "--conf-file=/dev/null".to_string(),
        format!("--pid-file={}", dir.join("pid").display()),
        "--no-hosts".into(),
        "--no-resolv".into(),
        format!("--listen-address={gateway}"),
        "--bind-interfaces".into(),
        format!("--addn-hosts={}", hosts.display()),
        // Machines' own names are answered here or not at all.
        "--local=/internal/".into(),
        "--domain-needed".into(),
        "--bogus-priv".into(),
    ];
    for server in dns::host_resolvers() {
        args.push(format!("--server={server}"));
    }
    netns::enter(netns, || {
        // dnsmasq goes to the background once its socket is bound; the parent's status says
        // whether it got that far.
        let out = Command::new("dnsmasq")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| {
                Error::io(
                    "running dnsmasq (install dnsmasq-base with scripts/setup)",
                    e,
                )
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "the network's resolver (dnsmasq) did not start: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    })
}

/// Stops the resolver of the network in `netns` and removes its files; nothing to do when
/// it is gone.
pub fn stop(netns: &str) {
    if let Some(pid) = running(netns) {
        // SAFETY: a signal to the process checked to be this network's dnsmasq.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let _ = std::fs::remove_dir_all(dir(netns));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lines_list_every_name() {
        let names = vec![(
            Ipv4Addr::new(10, 20, 1, 5).into(),
            vec!["web".to_string(), "web.app.internal".to_string()],
        )];
        assert_eq!(hosts_text(&names), "10.20.1.5 web web.app.internal\n");
    }
}

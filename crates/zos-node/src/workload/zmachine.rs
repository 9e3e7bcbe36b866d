//! `zmachine` on the node: a VM made with `zos-vmm` from the workload's flist (a file of the
//! node's, downloaded by URL, or imported from a registry), the zmounts it mounts attached as
//! disks, its sealed secrets opened into its environment (and its registry password into
//! the pull, never further); restarted by the monitor per its
//! restart policy (after a crash, an exit, or an unhealthy healthcheck), with backoff.

use super::{names_in, result, zmount, Claim, Console, Host, Kind, Step, Target};
use crate::pull::PullProgress;
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use zos_flist::fetch::{FetchError, PrivatePull};
use zos_flist::oci::Credentials;
use zos_flist::store::{Allowance, StoreError, StorePolicy};
use zos_types::api::Resources;
use zos_types::{
    MachineAddress, Protocol, PublicKey, RestartPolicy, ResultState, Workload, WorkloadResult,
    WorkloadSpec, ZMachine,
};
use zos_vmm::disk::DiskFormat;
use zos_vmm::image::Overrides;
use zos_vmm::spec::{DiskAttach, FlistSource, NetSpec, SeedSpec, VmRequest, VmSpec};
use zos_vmm::{VmState, Vmm};

/// The node side of zmachines; keeps each VM's crash streak.
#[derive(Default)]
pub struct Zmachine {
    restarts: Mutex<HashMap<String, Restart>>,
}

/// Restart bookkeeping of one VM.
struct Restart {
    count: u32,
    next: Instant,
}

fn data(spec: &WorkloadSpec) -> Option<&ZMachine> {
    match spec {
        WorkloadSpec::Zmachine(m) => Some(m),
        _ => None,
    }
}

impl Zmachine {
    fn restarts(&self) -> std::sync::MutexGuard<'_, HashMap<String, Restart>> {
        self.restarts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Kind for Zmachine {
    fn type_name(&self) -> &'static str {
        "zmachine"
    }

    fn rank(&self) -> u8 {
        1
    }

    fn check(&self, host: &Host, spec: &WorkloadSpec) -> Result<(), String> {
        let m = data(spec).ok_or("not a zmachine")?;
        match &m.image {
            Some(image) => check_reachable("image", image, host)?,
            None if zos_types::is_flist_url(&m.flist) => check_reachable("flist", &m.flist, host)?,
            None => check_flist(&m.flist, host)?,
        }
        open_secrets(host, m)?;
        open_files(host, m)?;
        open_registry_auth(host, m)?;
        // A port a host process listens on; those of deployments are claims.
        for p in port_maps(m) {
            p.check_host_free().map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn claims(&self, _owner: &PublicKey, _deployment: &str, w: &Workload) -> Vec<Claim> {
        data(&w.spec)
            .map(|m| {
                m.ports
                    .iter()
                    .map(|p| Claim::HostPort {
                        port: p.host_port(),
                        protocol: p.protocol,
                        remedy: "pick another host_port",
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn check_update(&self, w: &Workload, deployment: &[Workload]) -> Result<(), String> {
        let Some(m) = data(&w.spec) else {
            return Ok(());
        };
        for (i, iface) in m.network.interfaces.iter().enumerate() {
            let Some(ip) = iface.ip else { continue };
            let holder = deployment.iter().find(|other| {
                other.name != w.name
                    && zos_types::held_addresses(other)
                        .iter()
                        .any(|a| a.network == iface.network && a.ip == ip)
            });
            if let Some(holder) = holder {
                return Err(format!(
                    "network.interfaces[{i}]: ip {ip} on network {:?} is taken by zmachine {:?}: \
                     ask for another address, or leave ip out to get a free one",
                    iface.network.as_str(),
                    holder.name.as_str()
                ));
            }
        }
        Ok(())
    }

    fn demand(&self, spec: &WorkloadSpec) -> Resources {
        data(spec).map_or_else(Resources::default, |m| Resources {
            cpus: u64::from(m.cpu),
            // What the VM takes on the host, QEMU and virtiofsd included: its cgroup's limit.
            memory: zos_vmm::limits::memory_demand(m.memory.0),
            disk: m.root_size.0,
        })
    }

    fn slow(&self) -> bool {
        true
    }

    fn converge(&self, host: &Host, target: &Target) -> Step {
        let w = target.workload;
        let vm = self.resource(target.id, w.name.as_str());
        let step = |r: WorkloadResult| Step {
            result: Some(r),
            usable: Ok(()),
        };
        let Some(m) = data(&w.spec) else {
            return step(result(ResultState::Error, "not a zmachine", json!({})));
        };
        // What it mounts and joins must be up, or it must not run on unmanaged.
        let needs = m
            .mounts
            .iter()
            .map(|mount| ("zmount", &mount.name))
            .chain(m.network.interfaces.iter().map(|i| ("network", &i.network)))
            .chain(m.public_ip.iter().map(|ip| ("ip", ip)));
        let missing = needs
            .filter_map(|(kind, name)| match target.earlier.get(name.as_str()) {
                Some(Ok(())) => None,
                Some(Err(e)) => Some(format!("{kind} {:?} is not available: {e}", name.as_str())),
                None => Some(format!(
                    "{kind} {:?} is not in this deployment",
                    name.as_str()
                )),
            })
            .next();
        let addresses = machine_addresses(w, target.owner, target.deployment);
        let ready = match (missing, &addresses) {
            (Some(e), _) => Err(e),
            (None, Err(e)) => Err(e.clone()),
            (None, Ok(addresses)) => Ok(addresses),
        };
        // A downloaded flist comes after what it needs is known to be up.
        let ready = ready.and_then(|a| source(host, target, m).map(|flist| (a, flist)));
        let mut origin = Origin::Local;
        let outcome = match ready {
            Ok((addresses, (flist, from))) => {
                origin = from;
                vm_spec(host, target, m, flist, addresses).and_then(|spec| {
                    ensure_vm(&host.vmm, &vm, spec, target.fresh, host.stop_timeout)
                })
            }
            Err(e) => {
                let _ = remove_vm(&host.vmm, &vm, host.stop_timeout);
                Err(e)
            }
        };
        let mut data = match &addresses {
            Ok(a) if !a.is_empty() => json!({ "vm": vm, "addresses": a }),
            _ => json!({ "vm": vm }),
        };
        match origin {
            // What to pin it with, as this node got it.
            Origin::Url(sha256) => data["flist_hash"] = json!(format!("sha256:{sha256}")),
            Origin::Image(reference) => data["image"] = json!(reference),
            Origin::Local => {}
        }
        if let Some(ip) = &m.public_ip {
            let resource = super::Ip.resource(target.id, ip.as_str());
            if let Ok(public) = super::ip::interface(host, &resource) {
                data["public_ip"] = json!(public.ip);
            }
        }
        let r = match outcome {
            Ok(VmOutcome::Running) => result(ResultState::Ok, "running", data),
            Ok(VmOutcome::Replaced) => result(
                ResultState::Ok,
                "running; replaced: the VM was recreated with the new settings",
                data,
            ),
            Ok(VmOutcome::Finished) => result(ResultState::Ok, "exited (0)", data),
            Err(e) => result(ResultState::Error, e, data),
        };
        if target.fresh {
            // A fresh (re)provisioning starts a new crash streak.
            self.restarts().remove(&vm);
        }
        step(r)
    }

    fn resource(&self, id: &str, workload: &str) -> String {
        format!("{id}-{workload}")
    }

    fn resources(&self, host: &Host) -> std::io::Result<Vec<String>> {
        names_in(&host.vmm.config().root)
    }

    fn sweep(&self, host: &Host) -> std::io::Result<()> {
        host.vmm.sweep().map_err(std::io::Error::other)
    }

    fn remove(&self, host: &Host, resource: &str) -> Result<(), String> {
        self.restarts().remove(resource);
        remove_vm(&host.vmm, resource, host.stop_timeout)
    }

    fn quarantine(&self, host: &Host, resource: &str, into: &Path) -> Result<(), String> {
        self.restarts().remove(resource);
        host.vmm
            .move_out(resource, &into.join(resource))
            .map_err(|e| e.to_string())
    }

    fn monitors(&self) -> bool {
        true
    }

    fn watched(&self, w: &Workload) -> bool {
        super::state(w) == Some(ResultState::Ok)
    }

    fn monitor(&self, host: &Host, id: &str, w: &Workload) -> Option<WorkloadResult> {
        let vm = self.resource(id, w.name.as_str());
        let info = host.vmm.status(&vm).ok()?;
        // What converge recorded (the VM, its addresses) stays with every state it reports.
        let policy = data(&w.spec).map(|m| m.restart).unwrap_or_default();
        let mut data = w
            .result
            .as_ref()
            .map(|r| r.data.clone())
            .filter(|d| d.is_object())
            .unwrap_or_else(|| json!({ "vm": vm }));
        let unhealthy = info.health == Some(zos_init::Health::Unhealthy);
        let failure = match &info.state {
            // Stopped only once it is restarted or given up on (below): stopped during a
            // backoff it would read as `stopped` next time and never start again.
            VmState::Running if unhealthy => {
                "unhealthy: its healthcheck failed too many times in a row".to_owned()
            }
            VmState::Running | VmState::Paused | VmState::Created => {
                // A minute up after a restart ends the crash streak.
                let mut restarts = self.restarts();
                if restarts
                    .get(&vm)
                    .is_some_and(|r| Instant::now() > r.next + Duration::from_secs(60))
                {
                    restarts.remove(&vm);
                }
                drop(restarts);
                // Its health shows in its result, so a change is an event.
                let message = info.health.map(|h| format!("running ({h})"))?;
                let now = w.result.as_ref().map(|r| r.message.as_str());
                return (now != Some(message.as_str()))
                    .then(|| result(ResultState::Ok, message, data));
            }
            VmState::Exited { code: 0, .. } if policy != RestartPolicy::Always => {
                return Some(result(ResultState::Ok, info.state.to_string(), data));
            }
            VmState::Stopped => {
                return Some(result(ResultState::Ok, info.state.to_string(), data));
            }
            VmState::Exited { .. } | VmState::Crashed { .. } => info.state.to_string(),
        };
        let stop_if_up = || {
            if unhealthy {
                let _ = host.vmm.stop(&vm, host.stop_timeout);
            }
        };
        let reason = match &info.state {
            VmState::Crashed { reason } => reason.clone(),
            _ => format!(
                "{failure}\n--- last console lines ---\n{}",
                zos_vmm::console::tail(&info.console, 20)
            ),
        };
        if policy == RestartPolicy::Never {
            stop_if_up();
            return Some(result(
                ResultState::Error,
                format!("{reason}\n(restart: never)"),
                data,
            ));
        }
        let mut restarts = self.restarts();
        let entry = restarts.entry(vm.clone()).or_insert(Restart {
            count: 0,
            next: Instant::now(),
        });
        // `always` restarts for ever (backoff capped); `on-failure` gives up after a streak.
        if entry.count >= host.max_restarts && policy == RestartPolicy::OnFailure {
            let message = format!(
                "failed {} times in a row; the last time: {reason}",
                entry.count + 1
            );
            restarts.remove(&vm);
            stop_if_up();
            return Some(result(ResultState::Error, message, data));
        }
        if Instant::now() < entry.next {
            return None;
        }
        entry.count += 1;
        entry.next = Instant::now() + Duration::from_secs(1 << entry.count.min(6));
        let count = entry.count;
        drop(restarts);
        tracing::info!(vm = %vm, count, "restarting a failed zmachine");
        let first_line = reason.lines().next().unwrap_or("");
        // Every restart is counted in the result, which clients watch (zos deploy's settle).
        let total = data["restarts"].as_u64().unwrap_or(0) + 1;
        data["restarts"] = json!(total);
        let of = match policy {
            RestartPolicy::OnFailure => format!("{count} of {}", host.max_restarts),
            _ => format!("{count} in a row"),
        };
        stop_if_up();
        let message = match host.vmm.start(&vm) {
            Ok(_) => format!("running; restarted ({of}) after: {first_line}"),
            Err(e) => format!("restart {count} failed: {e}"),
        };
        Some(result(ResultState::Ok, message, data))
    }

    fn forget(&self, id: &str) {
        self.restarts().retain(|vm, _| !super::belongs_to(vm, id));
    }

    fn console(&self, host: &Host, id: &str, workload: &str) -> Result<(PathBuf, String), Console> {
        let vm = self.resource(id, workload);
        match host.vmm.console_path(&vm) {
            Ok(path) => Ok((path, vm)),
            Err(_) => Err(Console::Missing(format!(
                "{workload:?} has no VM yet: it is still being provisioned (see its state)"
            ))),
        }
    }

    fn console_active(&self, host: &Host, vm: &str) -> bool {
        host.vmm.status(vm).is_ok_and(|i| i.state.is_active())
    }

    fn session(
        &self,
        host: &Host,
        id: &str,
        workload: &str,
        open: zos_init::Open,
    ) -> Result<zos_vmm::Session, Console> {
        host.vmm
            .open_session(&self.resource(id, workload), open)
            .map_err(|e| match e {
                zos_vmm::Error::NotFound(_) => Console::Missing(format!(
                    "{workload:?} has no VM yet: it is still being provisioned (see its state)"
                )),
                zos_vmm::Error::State { state, what, .. } => Console::Stopped(format!(
                    "{workload:?} is {state}: exec and cp need it running ({what})"
                )),
                other => Console::None(format!("{workload:?}: {other}")),
            })
    }
}

/// Checks a zmachine's `flist` before it is accepted: an absolute path to a `.fl` file in
/// one of the node's `flist_dirs`, and outside the node's own data (where users' disks
/// live, which their guests write: a crafted file there must never be mounted as an flist).
/// The path is judged as written before the file system is asked anything, so naming a
/// path elsewhere learns nothing about the host; then again with symlinks resolved.
pub fn check_flist(flist: &str, host: &Host) -> Result<(), String> {
    let path = Path::new(flist);
    if !path.is_absolute() || path.extension().is_none_or(|e| e != "fl") {
        return Err(format!(
            "flist {flist:?}: give the absolute path of a .fl file on the node"
        ));
    }
    let served = |p: &Path| {
        p.components().all(|c| c != std::path::Component::ParentDir)
            && host.flist_dirs.iter().any(|dir| {
                p.starts_with(dir)
                    || std::fs::canonicalize(dir).is_ok_and(|real| p.starts_with(real))
            })
    };
    let not_served = || {
        let dirs: Vec<String> = host
            .flist_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        format!(
            "flist {flist:?} is not in a directory this node serves flists from ({}): ask \
             the node's operator to publish it there",
            dirs.join(", ")
        )
    };
    if !served(path) {
        return Err(not_served());
    }
    let real = std::fs::canonicalize(path)
        .map_err(|_| format!("flist {flist:?} not found on the node"))?;
    if !served(&real) {
        return Err(not_served());
    }
    if !real.is_file() {
        return Err(format!("flist {flist:?} is not a file"));
    }
    let data = std::fs::canonicalize(&host.data).unwrap_or_else(|_| host.data.clone());
    if real.starts_with(&data) {
        return Err(format!(
            "flist {flist:?} is inside the node's data dir; flists must come from elsewhere"
        ));
    }
    Ok(())
}

/// Checks a zmachine's flist URL or image reference (`what`) before it is accepted (no
/// request is made): its host must be one the node's store policy lets it reach.
fn check_reachable(what: &str, reference: &str, host: &Host) -> Result<(), String> {
    let url = url::Url::parse(reference).map_err(|e| format!("{what} {reference:?}: {e}"))?;
    if let Some(policy) = &host.vmm.config().store_policy {
        policy
            .check_url(&zos_flist::store::strip_password(reference), &url)
            .map_err(|e| refusal(what, e))?;
    }
    Ok(())
}

/// Where a zmachine's flist came from, for its result.
enum Origin {
    /// A file on the node.
    Local,
    /// Downloaded: its SHA-256, hex.
    Url(String),
    /// Imported: the image reference and its digest.
    Image(String),
}

/// The `.fl` file a zmachine boots: a file on the node, or downloaded, or imported (telling
/// `target`'s progress as it pulls).
fn source(host: &Host, target: &Target, m: &ZMachine) -> Result<(PathBuf, Origin), String> {
    let refused = |what: &str, e: FetchError| match e {
        FetchError::Refused(e) => refusal(what, e),
        FetchError::Unauthorized {
            with_credentials, ..
        } => format!("{e}. {}", credentials_remedy(with_credentials)),
        e => e.to_string(),
    };
    if let Some(image) = &m.image {
        let credentials = open_registry_auth(host, m)?;
        let owner = target.owner.to_string();
        let private = credentials.as_ref().map(|credentials| PrivatePull {
            owner: &owner,
            credentials,
        });
        // Progress is told only by an import that happens (a cached image reports nothing).
        let got = host
            .flists
            .import(
                image,
                private,
                &host.image_store,
                &PullProgress::new(target.progress),
            )
            .map_err(|e| refused("image", e))?;
        return Ok((got.path, Origin::Image(got.reference)));
    }
    if zos_types::is_flist_url(&m.flist) {
        let got = host
            .flists
            .get(&m.flist, m.flist_hash.as_deref())
            .map_err(|e| refused("flist", e))?;
        return Ok((got.path, Origin::Url(got.sha256)));
    }
    let flist = PathBuf::from(&m.flist);
    if !flist.is_file() {
        return Err(format!("flist {} not found on the node", flist.display()));
    }
    Ok((flist, Origin::Local))
}

/// A zmachine's `secret_env`, opened with the node's key; an error names the variable,
/// never its value.
fn open_secrets(host: &Host, m: &ZMachine) -> Result<Vec<(String, String)>, String> {
    m.secret_env
        .iter()
        .map(|(key, sealed)| {
            let value = host
                .opener
                .open(sealed)
                .map_err(|e| format!("secret_env {key:?}: {e}"))?;
            let value = String::from_utf8(value)
                .map_err(|_| format!("secret_env {key:?}: the opened value is not UTF-8 text"))?;
            Ok((key.clone(), value))
        })
        .collect()
}

/// A zmachine's `files` as the guest writes them, sealed ones opened with the node's key;
/// an error names the file, never its content.
fn open_files(host: &Host, m: &ZMachine) -> Result<Vec<zos_init::GuestFile>, String> {
    m.files
        .iter()
        .map(|f| {
            let content = if f.sealed {
                let opened = host
                    .opener
                    .open(&f.content)
                    .map_err(|e| format!("files {:?}: {e}", f.path))?;
                String::from_utf8(opened).map_err(|_| {
                    format!("files {:?}: the opened content is not UTF-8 text", f.path)
                })?
            } else {
                f.content.clone()
            };
            Ok(zos_init::GuestFile {
                path: f.path.clone(),
                content,
                mode: f.mode_bits()?,
            })
        })
        .collect()
}

/// A zmachine's `registry_auth` with its password opened with the node's key, for the pull
/// alone; an error never holds the password.
fn open_registry_auth(host: &Host, m: &ZMachine) -> Result<Option<Credentials>, String> {
    let Some(auth) = &m.registry_auth else {
        return Ok(None);
    };
    let password = host
        .opener
        .open(&auth.password)
        .map_err(|e| format!("registry_auth.password: {e}"))?;
    let password = String::from_utf8(password)
        .map_err(|_| "registry_auth.password: the opened value is not UTF-8 text".to_owned())?;
    Ok(Some(Credentials {
        username: auth.username.clone(),
        password,
    }))
}

/// What to do when a registry refused a pull, with or without credentials.
fn credentials_remedy(with_credentials: bool) -> &'static str {
    if with_credentials {
        "Fix the machine's registry_auth: its username, and its password sealed again with \
         `zos seal --node-id NODE_ID`"
    } else {
        "If the image is private, give the machine registry_auth: { username: USER, password: \
         <the password sealed with `zos seal --node-id NODE_ID`> }; else check the image's name"
    }
}

/// The address of each of `w`'s interfaces, in its order (see [`zos_types::addresses`]),
/// with its ULA.
fn machine_addresses(
    w: &Workload,
    owner: &PublicKey,
    deployment: &[Workload],
) -> Result<Vec<MachineAddress>, String> {
    let Some(m) = data(&w.spec) else {
        return Ok(Vec::new());
    };
    if m.network.is_empty() {
        return Ok(Vec::new());
    }
    let all = zos_types::addresses(deployment);
    m.network
        .interfaces
        .iter()
        .map(|i| {
            let key = (w.name.to_string(), i.network.to_string());
            let ip = all.get(&key).copied().ok_or_else(|| {
                format!(
                    "network {:?} has no free address left: remove a machine from it or give it \
                     a larger subnet",
                    i.network.as_str()
                )
            })?;
            let ula = zos_types::network_named(deployment, &i.network).map(|n| n.ula_of(owner, ip));
            Ok(MachineAddress {
                network: i.network.clone(),
                ip,
                ula,
            })
        })
        .collect()
}

/// A zmachine's published ports as the host forwards them: every host address.
fn port_maps(m: &ZMachine) -> Vec<zos_net::PortMap> {
    m.ports
        .iter()
        .map(|p| zos_net::PortMap {
            host_ip: None,
            host_port: p.host_port(),
            guest_port: p.port,
            proto: match p.protocol {
                Protocol::Tcp => zos_net::Proto::Tcp,
                Protocol::Udp => zos_net::Proto::Udp,
            },
        })
        .collect()
}

/// The interfaces a zmachine has on its deployment's networks, in its order; the first one
/// carries its published ports.
fn joined(
    host: &Host,
    target: &Target,
    m: &ZMachine,
    addresses: &[MachineAddress],
) -> Result<Vec<zos_net::Interface>, String> {
    let mut ifaces = addresses
        .iter()
        .map(|a| {
            let net = zos_types::network_named(target.deployment, &a.network).ok_or_else(|| {
                format!("network {:?} is not in this deployment", a.network.as_str())
            })?;
            let resource = super::network::Network.resource(target.id, a.network.as_str());
            Ok(super::network::plan(host, target.owner, &resource, net).interface(a.ip))
        })
        .collect::<Result<Vec<_>, String>>()?;
    if let Some(first) = ifaces.first_mut() {
        first.ports = port_maps(m);
    }
    if let Some(ip) = &m.public_ip {
        let resource = super::Ip.resource(target.id, ip.as_str());
        let public = super::ip::interface(host, &resource)
            .map_err(|e| format!("ip {:?}: {e}", ip.as_str()))?;
        // The default route goes out through the public address; each private network
        // is then reached through its own gateway.
        for (i, a) in ifaces.iter_mut().zip(addresses) {
            i.default_route = false;
            if let Some(net) = zos_types::network_named(target.deployment, &a.network) {
                i.routes = vec![net.ip_range];
            }
        }
        ifaces.push(public);
    }
    Ok(ifaces)
}

/// The VM spec a zmachine asks for; the flist decides container or VM mode.
fn vm_spec(
    host: &Host,
    target: &Target,
    m: &ZMachine,
    flist: PathBuf,
    addresses: &[MachineAddress],
) -> Result<VmSpec, String> {
    let (id, workload) = (target.id, target.workload.name.as_str());
    if let Some(policy) = &host.vmm.config().store_policy {
        check_stores(&flist, policy)?;
    }
    let disks = m
        .mounts
        .iter()
        .map(|mount| DiskAttach {
            path: zmount::disk_path(host, &zmount::Zmount.resource(id, mount.name.as_str())),
            format: DiskFormat::Raw,
            mount_at: mount.mountpoint.clone(),
        })
        .collect();
    let mut request = VmRequest {
        flist: FlistSource {
            path: flist,
            stores: Vec::new(),
        },
        cpus: u32::from(m.cpu),
        memory: m.memory.0,
        hostname: workload.to_string(),
        accel: Default::default(),
        overrides: Overrides {
            entrypoint: (!m.entrypoint.is_empty()).then(|| m.entrypoint.clone()),
            cmd: m.cmd.clone(),
            env: m
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .chain(open_secrets(host, m)?)
                .collect(),
            workdir: m.workdir.clone(),
            user: m.user.clone(),
            root_size: m.root_size.0,
            seed: SeedSpec::default(),
            files: open_files(host, m)?,
            healthcheck: m.healthcheck.as_ref().map(|h| zos_init::GuestHealthcheck {
                argv: h.test.clone(),
                interval_secs: h.interval_secs,
                timeout_secs: h.timeout_secs,
                retries: h.retries,
                start_period_secs: h.start_period_secs,
            }),
        },
        disks,
        network: None,
    };
    if !addresses.is_empty() || m.public_ip.is_some() {
        request.network = Some(NetSpec {
            joined: joined(host, target, m, addresses)?,
            ..NetSpec::default()
        });
    }
    request.plan().map_err(|e| e.to_string())
}

/// Refuses an flist whose routes lead where the node's store policy forbids, before any VM
/// is made (the mount process keeps to the same policy at each connection).
fn check_stores(flist: &Path, policy: &StorePolicy) -> Result<(), String> {
    let routes = zos_flist::Flist::open(flist)
        .and_then(|f| f.routes())
        .map_err(|e| format!("reading the stores of flist {}: {e}", flist.display()))?;
    for route in routes {
        match policy.check_store(&route.url) {
            Ok(()) => {}
            Err(e @ StoreError::Refused { .. }) => return Err(refusal("store", e)),
            Err(e) => return Err(format!("flist {}: {e}", flist.display())),
        }
    }
    Ok(())
}

/// A store policy's refusal of `what` (a store, an flist URL), with the setting that would
/// let it through.
fn refusal(what: &str, e: StoreError) -> String {
    let StoreError::Refused {
        store,
        reason,
        allow,
    } = e
    else {
        return e.to_string();
    };
    let setting = match allow {
        Allowance::Net(net) => format!("allow_store_nets = [\"{net}\"]"),
        Allowance::Dir(dir) => format!("allow_store_dirs = [{:?}]", dir),
    };
    format!(
        "{what} {store} refused by the node's store policy: {reason}; if the {what} is \
         trusted, the node's operator can allow it with {setting} in the node config"
    )
}

/// What [`ensure_vm`] did.
enum VmOutcome {
    /// The VM runs (created and started, or already running).
    Running,
    /// The VM runs, replacing one with another spec.
    Replaced,
    /// The VM's process ended with exit code 0 and is left so.
    Finished,
}

/// Makes the VM `name` run with `spec`: creates it, replaces one with another spec, starts
/// it if it is not running. A VM whose process exited 0 is left alone unless `restart`.
fn ensure_vm(
    vmm: &Vmm,
    name: &str,
    spec: VmSpec,
    restart: bool,
    stop_timeout: Duration,
) -> Result<VmOutcome, String> {
    let mut replaced = false;
    match vmm.status(name) {
        Ok(info) if info.spec == spec => {
            if info.state.is_active() {
                return Ok(VmOutcome::Running);
            }
            if !restart && matches!(info.state, VmState::Exited { code: 0, .. }) {
                return Ok(VmOutcome::Finished);
            }
        }
        Ok(_) => {
            let _ = vmm.stop(name, stop_timeout);
            vmm.delete(name).map_err(|e| e.to_string())?;
            replaced = true;
            vmm.create(name, spec).map_err(|e| e.to_string())?;
        }
        Err(zos_vmm::Error::NotFound(_)) => {
            vmm.create(name, spec).map_err(|e| e.to_string())?;
        }
        Err(e) => return Err(e.to_string()),
    }
    vmm.start(name).map_err(|e| e.to_string())?;
    Ok(if replaced {
        VmOutcome::Replaced
    } else {
        VmOutcome::Running
    })
}

/// Removes a VM if it exists.
fn remove_vm(vmm: &Vmm, name: &str, stop_timeout: Duration) -> Result<(), String> {
    match vmm.status(name) {
        Ok(info) => {
            if info.state.is_active() {
                let _ = vmm.stop(name, stop_timeout);
            }
            vmm.delete(name).map_err(|e| e.to_string())
        }
        Err(zos_vmm::Error::NotFound(_)) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flists_come_only_from_the_served_dirs_outside_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("node");
        std::fs::create_dir_all(data.join("disks")).unwrap();
        let served = dir.path().join("flists");
        std::fs::create_dir_all(&served).unwrap();
        // The data dir served by mistake must still not serve users' disks.
        let flist_dirs = vec![served.clone(), data.clone()];
        let host = Host::for_test(&data, &dir.path().join("cache"), flist_dirs);
        let app = served.join("app.fl");
        std::fs::write(&app, b"x").unwrap();
        let elsewhere = dir.path().join("other.fl");
        std::fs::write(&elsewhere, b"x").unwrap();
        let inside = data.join("disks/x.fl");
        std::fs::write(&inside, b"x").unwrap();
        std::os::unix::fs::symlink(&inside, served.join("link.fl")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, served.join("out.fl")).unwrap();
        let check = |p: &Path| check_flist(&p.display().to_string(), &host);
        assert_eq!(check(&app), Ok(()));
        for (path, why) in [
            (elsewhere.clone(), "not in a directory this node serves"),
            (served.join("out.fl"), "not in a directory this node serves"),
            (
                served.join("../other.fl"),
                "not in a directory this node serves",
            ),
            (inside.clone(), "inside the node's data dir"),
            (served.join("link.fl"), "inside the node's data dir"),
            (served.join("none.fl"), "not found"),
            // Not served: refused without the file system being asked.
            (PathBuf::from("/nonexistent/none.fl"), "not in a directory"),
        ] {
            let err = check(&path).unwrap_err();
            assert!(err.contains(why), "{}: {err}", path.display());
        }
        assert!(check_flist("app.fl", &host)
            .unwrap_err()
            .contains("absolute path"));
        assert!(check_flist("/etc/passwd", &host)
            .unwrap_err()
            .contains(".fl file"));
    }

    #[test]
    fn a_zmachine_demands_its_ram_plus_the_vmm_overhead() {
        let m: ZMachine =
            serde_json::from_value(json!({"flist": "/f/app.fl", "cpu": 2, "memory": 512 << 20}))
                .unwrap();
        let want = Zmachine::default().demand(&WorkloadSpec::Zmachine(m));
        assert_eq!(want.cpus, 2);
        assert_eq!(want.memory, zos_vmm::limits::memory_demand(512 << 20));
        assert!(want.memory >= (512 << 20) + zos_vmm::limits::VMM_OVERHEAD);
    }
}

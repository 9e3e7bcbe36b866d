//! `zmachine`: a virtual machine booted from an flist (a container as a micro-VM, or a VM
//! booting the kernel or disk image the flist carries).

use super::{MachineNetwork, Workload, WorkloadData, WorkloadName, WorkloadSpec};
use crate::size::ByteSize;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// How a sealed value starts (age's ASCII armor).
pub const SEALED_BEGIN: &str = "-----BEGIN AGE ENCRYPTED FILE-----";

/// The smallest memory a zmachine boots with.
pub const MIN_MEMORY: ByteSize = ByteSize(64 * ByteSize::MIB);

/// A virtual machine booted from an flist.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZMachine {
    /// The flist holding the root filesystem: an `http(s)://` URL the node downloads it
    /// from (once, into its cache), or the absolute path of a `.fl` file on the node.
    /// Either this or `image`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub flist: String,
    /// A container image the node imports itself (once per reference, into its own
    /// store): `docker://HOST[:PORT]/NAME:TAG` or `…@sha256:…`. Either this or `flist`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Credentials for a private `image`'s registry, the password sealed to this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_auth: Option<RegistryAuth>,
    /// Pins a downloaded flist: `sha256:` and the hex SHA-256 of the `.fl` file. The node
    /// refuses a download that does not match (and needs no request when it has it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flist_hash: Option<String>,
    /// Replaces the image's entrypoint; empty keeps the image's.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// Replaces the image's command; empty keeps the image's.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Environment variables whose values are sealed to this node (`zos seal`, or `age -a
    /// -R` with the node's recipient): the node opens them only to start the machine, and
    /// shows and stores them sealed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_env: BTreeMap<String, String>,
    /// Replaces the image's working directory: an absolute path in the machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Replaces the image's user, as Docker's `--user`: `NAME`, `UID`, `NAME:GROUP` or
    /// `UID:GID` (names looked up in the image's /etc/passwd and /etc/group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Virtual CPUs.
    #[serde(default = "default_cpu")]
    pub cpu: u8,
    /// Guest memory.
    #[serde(default = "default_memory")]
    pub memory: ByteSize,
    /// Size of the writable root layer.
    #[serde(default = "default_root_size")]
    pub root_size: ByteSize,
    /// Zmounts of this deployment to attach.
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// The networks of this deployment it joins.
    #[serde(default, skip_serializing_if = "MachineNetwork::is_empty")]
    pub network: MachineNetwork,
    /// Guest ports published on the node's addresses (through its first network).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    /// An `ip` workload of this deployment: the machine gets an interface with that public
    /// address (its default route then goes through the address's gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<WorkloadName>,
    /// Small files written into a container machine's root before its process starts
    /// (configuration, as Kubernetes ConfigMaps are mounted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<MachineFile>,
    /// When the node starts the machine again after its process ended.
    #[serde(default, skip_serializing_if = "RestartPolicy::is_default")]
    pub restart: RestartPolicy,
    /// A check run inside a container machine now and then; an unhealthy machine is
    /// restarted per `restart`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
}

/// The registry user a private image is pulled as. The password is sealed to the node like a
/// `secret_env` value; the username stays plain: registries do not treat it as a secret
/// (it is in every `docker login`'s output), and a plain one lets `zos get` and a refusal
/// say which account was used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryAuth {
    /// The registry user (or the fixed name a token goes with, e.g. `oauth2accesstoken`).
    pub username: String,
    /// Their password or access token, sealed (`zos seal --node-id ID`, or `age -a -R` with the
    /// node's recipient).
    pub password: String,
}

impl RegistryAuth {
    /// What is wrong with it, if anything.
    fn problems(&self) -> Vec<String> {
        let mut bad = Vec::new();
        if self.username.is_empty() || self.username.contains([':', '\n', '\r']) {
            bad.push("registry_auth.username must be non-empty, without ':' or line breaks".into());
        }
        if !is_sealed(&self.password) {
            bad.push(
                "registry_auth.password is not sealed: seal it with `zos seal --node-id NODE_ID` \
                 (or `age -a -R` with the node's recipient) and paste the armored text it \
                 prints"
                    .into(),
            );
        }
        bad
    }
}

/// Whether `value` is a sealed value (age's ASCII armor).
fn is_sealed(value: &str) -> bool {
    value.trim_start().starts_with(SEALED_BEGIN)
}

/// A healthcheck: a command run in the container (its user, environment, working
/// directory), exit 0 is a pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Healthcheck {
    /// Program and arguments, e.g. `[sh, -c, 'wget -q -O /dev/null http://localhost/']`.
    pub test: Vec<String>,
    /// Seconds between checks.
    #[serde(default = "default_interval")]
    pub interval_secs: u32,
    /// Seconds a check may take before it counts as failed.
    #[serde(default = "default_interval")]
    pub timeout_secs: u32,
    /// Failures in a row that make the machine unhealthy.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Seconds after start during which failures do not count.
    #[serde(default)]
    pub start_period_secs: u32,
}

fn default_interval() -> u32 {
    30
}
fn default_retries() -> u32 {
    3
}

/// When a machine whose process ended is started again (Docker's restart policies).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// After every end, a clean exit too, with backoff, for ever.
    Always,
    /// After a failure (non-zero exit, crash), with backoff, until the node's
    /// `max_restarts` failures in a row leave it in `error`; a clean exit stays done.
    #[default]
    OnFailure,
    /// Never: a failure leaves it in `error` at once, a clean exit done.
    Never,
}

impl RestartPolicy {
    fn is_default(&self) -> bool {
        *self == RestartPolicy::OnFailure
    }
}

/// The most bytes a machine's `files` may hold in all (they travel in its boot image).
pub const MAX_FILES_BYTES: usize = 1024 * 1024;

/// A file written into a container machine's root.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineFile {
    /// Absolute path inside the machine, e.g. `/etc/app/config.toml`.
    pub path: String,
    /// What it holds (text).
    pub content: String,
    /// Permission bits in octal, e.g. `"0600"`; `0644` when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// `content` is sealed to this node like a `secret_env` value (a Kubernetes Secret
    /// mounted as files): the node opens it only to write it into the machine.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sealed: bool,
}

impl MachineFile {
    /// The permission bits `mode` names (0o644 by default).
    pub fn mode_bits(&self) -> Result<u32, String> {
        match &self.mode {
            None => Ok(0o644),
            Some(m) => u32::from_str_radix(m, 8)
                .ok()
                .filter(|bits| *bits <= 0o7777)
                .ok_or_else(|| format!("mode {m:?}: give permission bits in octal, like \"0644\"")),
        }
    }

    /// What is wrong with it, if anything.
    fn problems(&self) -> Vec<String> {
        let mut bad = Vec::new();
        let parts: Vec<&str> = self.path.split('/').skip(1).collect();
        let plain = self.path.starts_with('/')
            && !parts.is_empty()
            && parts
                .iter()
                .all(|p| !p.is_empty() && *p != "." && *p != ".." && !p.contains('\0'));
        if !plain {
            bad.push(format!(
                "path {:?}: give an absolute path without `.`, `..` or empty parts, like \
                 /etc/app/config.toml",
                self.path
            ));
        }
        if let Err(e) = self.mode_bits() {
            bad.push(e);
        }
        if self.sealed && !is_sealed(&self.content) {
            bad.push(
                "sealed, but its content is not: seal it with `zos seal --node-id NODE_ID` (or \
                 `age -a -R` with the node's recipient) and paste the armored text it prints"
                    .into(),
            );
        }
        bad
    }
}

/// A guest port published on every address of the node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Port {
    /// The port inside the machine.
    pub port: u16,
    /// The node's port; left out, the same as `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
    /// `tcp` (the default) or `udp`.
    #[serde(default)]
    pub protocol: Protocol,
}

impl Port {
    /// The node's port.
    pub fn host_port(&self) -> u16 {
        self.host_port.unwrap_or(self.port)
    }
}

/// A transport protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// Whether a zmachine's `flist` is a URL to download rather than a path on the node.
pub fn is_flist_url(flist: &str) -> bool {
    flist.starts_with("http://") || flist.starts_with("https://")
}

fn default_cpu() -> u8 {
    1
}
fn default_memory() -> ByteSize {
    ByteSize(256 * ByteSize::MIB)
}
fn default_root_size() -> ByteSize {
    ByteSize(ByteSize::GIB)
}

/// A zmount attached to a zmachine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    /// The zmount workload, in the same deployment.
    pub name: WorkloadName,
    /// Absolute path inside the machine.
    pub mountpoint: String,
}

/// How many zmachines of `deployment` mount zmount `name`.
fn mounted_by(deployment: &[Workload], name: &WorkloadName) -> usize {
    deployment
        .iter()
        .filter(|w| match &w.spec {
            WorkloadSpec::Zmachine(m) => m.mounts.iter().any(|x| &x.name == name),
            _ => false,
        })
        .count()
}

/// Whether `user` reads as Docker's `--user`: a user, and optionally `:` and a group, each a
/// name or a number.
fn is_user(user: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    };
    match user.split_once(':') {
        Some((name, group)) => part(name) && part(group),
        None => part(user),
    }
}

impl WorkloadData for ZMachine {
    fn problems(&self, deployment: &[Workload]) -> Vec<String> {
        let mut bad = Vec::new();
        match (&self.image, self.flist.is_empty()) {
            (None, true) => bad.push(
                "give the machine a root: flist (a URL or a .fl file on the node) or image \
                 (docker://HOST/NAME:TAG)"
                    .into(),
            ),
            (Some(_), false) => bad.push("flist and image are both given: keep one of them".into()),
            (Some(image), true) => {
                let rest = image.strip_prefix("docker://").unwrap_or_default();
                if !rest.contains('/') {
                    bad.push(format!(
                        "image {image:?}: give a registry reference, \
                         docker://HOST[:PORT]/NAME:TAG or docker://HOST/NAME@sha256:…"
                    ));
                }
            }
            (None, false) => {}
        }
        match (&self.registry_auth, &self.image) {
            (Some(auth), Some(_)) => bad.extend(auth.problems()),
            (Some(_), None) => bad.push(
                "registry_auth is for pulling an image: use it with image: docker://…".into(),
            ),
            (None, _) => {}
        }
        if let Some(pin) = &self.flist_hash {
            let hex = pin.strip_prefix("sha256:").unwrap_or_default();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                bad.push(format!(
                    "flist_hash {pin:?}: give it as sha256: followed by the 64 hex digits of \
                     the .fl file's SHA-256 (sha256sum app.fl)"
                ));
            }
            if !is_flist_url(&self.flist) {
                bad.push(
                    "flist_hash pins a downloaded flist: use it with an http:// or https:// \
                     flist"
                        .into(),
                );
            }
        }
        if let Some(dir) = &self.workdir {
            if !dir.starts_with('/') || dir.contains('\0') {
                bad.push(format!("workdir {dir:?} must be an absolute path"));
            }
        }
        if let Some(user) = &self.user {
            if !is_user(user) {
                bad.push(format!(
                    "user {user:?}: give NAME, UID, NAME:GROUP or UID:GID (letters, digits, \
                     '_', '.', '-')"
                ));
            }
        }
        if self.cpu == 0 {
            bad.push("cpu must be at least 1".into());
        }
        if self.memory < MIN_MEMORY {
            bad.push(format!(
                "memory {} is below the minimum {MIN_MEMORY}",
                self.memory
            ));
        }
        for key in self
            .env
            .keys()
            .chain(self.secret_env.keys())
            .filter(|k| k.is_empty() || k.contains('='))
        {
            bad.push(format!(
                "env name {key:?} must be non-empty and contain no '='"
            ));
        }
        for key in self.secret_env.keys() {
            if self.env.contains_key(key) {
                bad.push(format!(
                    "{key:?} is in both env and secret_env: keep it in one"
                ));
            }
        }
        for (key, value) in &self.secret_env {
            if !is_sealed(value) {
                bad.push(format!(
                    "secret_env {key:?} is not sealed: seal its value with `zos seal \
                     --node-id NODE_ID` (or `age -a -R` with the node's recipient) and paste the \
                     armored text it prints"
                ));
            }
        }
        if let Some(h) = &self.healthcheck {
            if h.test.is_empty() {
                bad.push("healthcheck.test is empty: give the command to run".into());
            }
            for (field, value) in [
                ("interval_secs", h.interval_secs),
                ("timeout_secs", h.timeout_secs),
                ("retries", h.retries),
            ] {
                if value == 0 {
                    bad.push(format!("healthcheck.{field} must be at least 1"));
                }
            }
        }
        let mut paths = BTreeSet::new();
        for (i, file) in self.files.iter().enumerate() {
            for problem in file.problems() {
                bad.push(format!("files[{i}]: {problem}"));
            }
            if !paths.insert(file.path.as_str()) {
                bad.push(format!("files[{i}]: path {:?} is given twice", file.path));
            }
        }
        let bytes: usize = self.files.iter().map(|f| f.content.len()).sum();
        if bytes > MAX_FILES_BYTES {
            bad.push(format!(
                "files hold {bytes} bytes, more than {MAX_FILES_BYTES}: put large content in \
                 the image or on a zmount"
            ));
        }
        let zmounts: BTreeSet<&WorkloadName> = deployment
            .iter()
            .filter(|w| matches!(w.spec, WorkloadSpec::Zmount(_)))
            .map(|w| &w.name)
            .collect();
        let mut points = BTreeSet::new();
        let mut disks = BTreeSet::new();
        for mount in &self.mounts {
            if !zmounts.contains(&mount.name) {
                bad.push(format!(
                    "mount {:?} is not a zmount in this deployment",
                    mount.name.as_str()
                ));
            }
            // A zmount is a block device: two kernels mounting one ext4 corrupt it.
            if !disks.insert(&mount.name) {
                bad.push(format!("zmount {:?} is mounted twice", mount.name.as_str()));
            } else if mounted_by(deployment, &mount.name) > 1 {
                bad.push(format!(
                    "zmount {:?} is mounted by more than one zmachine: a zmount is one \
                     machine's disk",
                    mount.name.as_str()
                ));
            }
            if !mount.mountpoint.starts_with('/') || mount.mountpoint == "/" {
                bad.push(format!(
                    "mountpoint {:?} must be an absolute path below /",
                    mount.mountpoint
                ));
            }
            if !points.insert(&mount.mountpoint) {
                bad.push(format!("mountpoint {:?} is used twice", mount.mountpoint));
            }
        }
        bad.extend(self.network.problems(deployment));
        if let Some(ip) = &self.public_ip {
            let is_ip = |w: &&Workload| &w.name == ip && matches!(w.spec, WorkloadSpec::Ip(_));
            if !deployment.iter().any(|w| is_ip(&w)) {
                bad.push(format!(
                    "public_ip {:?} is not an ip workload in this deployment",
                    ip.as_str()
                ));
            }
            let users = deployment
                .iter()
                .filter(|w| matches!(&w.spec, WorkloadSpec::Zmachine(m) if m.public_ip.as_ref() == Some(ip)))
                .count();
            if users > 1 {
                bad.push(format!(
                    "public_ip {:?} is named by {users} zmachines: give each its own",
                    ip.as_str()
                ));
            }
        }
        bad.extend(self.port_problems(deployment));
        bad
    }
}

impl ZMachine {
    /// The rules for `ports`: real ports, through a network, each host port once in the
    /// deployment.
    fn port_problems(&self, deployment: &[Workload]) -> Vec<String> {
        let mut bad = Vec::new();
        if !self.ports.is_empty() && self.network.is_empty() {
            bad.push(
                "ports are published through the machine's first network: join one \
                 (network.interfaces)"
                    .to_string(),
            );
        }
        let everywhere = deployment
            .iter()
            .filter_map(|w| match &w.spec {
                WorkloadSpec::Zmachine(m) => Some(&m.ports),
                _ => None,
            })
            .flatten();
        let mut seen = Vec::new();
        for p in everywhere {
            let key = (p.host_port(), p.protocol);
            if seen.contains(&key)
                && self
                    .ports
                    .iter()
                    .any(|q| (q.host_port(), q.protocol) == key)
            {
                bad.push(format!(
                    "host port {}/{} is published twice in this deployment",
                    key.0, key.1
                ));
            }
            seen.push(key);
        }
        for (i, p) in self.ports.iter().enumerate() {
            if p.port == 0 || p.host_port == Some(0) {
                bad.push(format!("ports[{i}]: ports are 1 to 65535"));
            }
        }
        bad.dedup();
        bad
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The problems of a machine pulling `image` with `registry_auth` (JSON).
    fn problems_of(image: Option<&str>, auth: serde_json::Value) -> Vec<String> {
        let mut m = serde_json::json!({ "registry_auth": auth });
        match image {
            Some(image) => m["image"] = image.into(),
            None => m["flist"] = "/var/lib/zos/flists/app.fl".into(),
        }
        let m: ZMachine = serde_json::from_value(m).unwrap();
        m.problems(&[])
    }

    #[test]
    fn a_zmount_is_one_machines_disk() {
        let spec = |mounts: serde_json::Value| {
            WorkloadSpec::Zmachine(
                serde_json::from_value(serde_json::json!({ "flist": "/a.fl", "mounts": mounts }))
                    .unwrap(),
            )
        };
        let named = |name: &str, spec: WorkloadSpec| Workload {
            name: WorkloadName::try_from(name.to_string()).unwrap(),
            version: 0,
            description: String::new(),
            metadata: String::new(),
            spec,
            result: None,
        };
        let disk = named(
            "d",
            WorkloadSpec::Zmount(
                serde_json::from_value(serde_json::json!({"size": "1G"})).unwrap(),
            ),
        );
        let at = |p: &str| serde_json::json!([{ "name": "d", "mountpoint": p }]);
        let d = vec![
            disk.clone(),
            named("a", spec(at("/x"))),
            named("b", spec(at("/y"))),
        ];
        let WorkloadSpec::Zmachine(a) = &d[1].spec else {
            unreachable!()
        };
        let bad = a.problems(&d);
        assert!(
            bad.iter()
                .any(|p| p.contains("mounted by more than one zmachine")),
            "{bad:?}"
        );
        let twice = serde_json::json!([
            { "name": "d", "mountpoint": "/x" }, { "name": "d", "mountpoint": "/y" }
        ]);
        let d = vec![disk, named("a", spec(twice))];
        let WorkloadSpec::Zmachine(a) = &d[1].spec else {
            unreachable!()
        };
        assert_eq!(a.problems(&d), ["zmount \"d\" is mounted twice"]);
    }

    #[test]
    fn a_sealed_file_must_hold_sealed_content() {
        let file = |content: &str| MachineFile {
            path: "/run/secrets/t".into(),
            content: content.into(),
            mode: None,
            sealed: true,
        };
        assert!(file(&format!("{SEALED_BEGIN}\nxyz\n"))
            .problems()
            .is_empty());
        let bad = file("plain text").problems();
        assert!(
            bad.len() == 1 && bad[0].contains("sealed, but its content is not"),
            "{bad:?}"
        );
    }

    #[test]
    fn users_read_as_docker_reads_them() {
        for good in [
            "root",
            "1000",
            "1000:1001",
            "www-data:www-data",
            "svc.user_1",
        ] {
            assert!(is_user(good), "{good}");
        }
        for bad in ["", ":", "root:", ":0", "a:b:c", "us er", "x/y"] {
            assert!(!is_user(bad), "{bad}");
        }
    }

    #[test]
    fn registry_auth_needs_an_image_a_plain_user_and_a_sealed_password() {
        let image = Some("docker://registry.example/team/app:1");
        let sealed = format!("{SEALED_BEGIN}\nYWdl\n-----END AGE ENCRYPTED FILE-----\n");
        let good = serde_json::json!({ "username": "ci", "password": sealed });
        assert!(problems_of(image, good.clone()).is_empty());
        let p = problems_of(None, good).join("\n");
        assert!(p.contains("registry_auth is for pulling an image"), "{p}");
        let p = problems_of(
            image,
            serde_json::json!({ "username": "a:b", "password": "hunter2" }),
        )
        .join("\n");
        assert!(
            p.contains("registry_auth.username must be non-empty"),
            "{p}"
        );
        assert!(p.contains("registry_auth.password is not sealed"), "{p}");
        // An unsealed password is never echoed back.
        assert!(!p.contains("hunter2"), "{p}");
        let err = serde_json::from_value::<ZMachine>(serde_json::json!({
            "image": "docker://r.example/a:1",
            "registry_auth": { "username": "ci", "password": sealed, "token": "x" },
        }))
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `token`"), "{err}");
    }
}

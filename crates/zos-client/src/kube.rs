//! Kubernetes clusters as one deployment, in ThreeFold's k3s shape: a private network, and
//! per cluster node a disk mounted at `/mydisk` and a zmachine told its role by environment
//! variables (`K3S_URL` empty on the master, the master's API on workers; `K3S_TOKEN` sealed
//! to the node; `K3S_DATA_DIR`, `K3S_NODE_NAME`, `K3S_FLANNEL_IFACE`, `SSH_KEY`). The image
//! does the rest, so any image honouring that contract is a cluster node.
//!
//! What the cluster was made with is kept in the deployment's `metadata`
//! ([`Cluster::of`]), so scaling writes the same workloads again for the nodes it keeps:
//! the node sees them unchanged and leaves them running.

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use zos_types::{ByteSize, Deployment, DeploymentFile, WorkloadSpec};

/// The port of the Kubernetes API on the master.
pub const API_PORT: u16 = 6443;
/// Where each cluster node's disk is mounted (`K3S_DATA_DIR`).
pub const DATA_DIR: &str = "/mydisk";
/// The cluster's network workload.
pub const NETWORK: &str = "net";
/// Where k3s writes the admin kubeconfig on the master.
pub const KUBECONFIG_PATH: &str = "/etc/rancher/k3s/k3s.yaml";
/// How a cluster's deployment `metadata` starts.
const METADATA_TAG: &str = "zos-kube/v1 ";
/// The first address of workers in the subnet (`.10`): the master takes `.2`, and `.3` and
/// `.4` are kept for the masters of an HA control plane.
const FIRST_WORKER_HOST: u32 = 10;
/// Most workers: the subnet's addresses from `.10` to `.254`.
pub const MAX_WORKERS: u32 = 245;

/// Where a cluster node's root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Root {
    /// A container image the node pulls (`docker://…`).
    Image(String),
    /// An flist: a URL, or a `.fl` file on the node.
    Flist(String),
}

/// What a cluster is made of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    /// Masters: 1 (an HA control plane of 3 is not built yet).
    pub masters: u32,
    /// Workers.
    pub workers: u32,
    /// The image every cluster node runs.
    pub root: Root,
    /// Virtual CPUs per cluster node.
    pub cpu: u8,
    /// Memory per cluster node.
    pub memory: ByteSize,
    /// Disk per cluster node, at [`DATA_DIR`].
    pub disk: ByteSize,
    /// An SSH public key line given to every cluster node (`SSH_KEY`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_key: Option<String>,
    /// The node's port the master's API is published on.
    pub api_port: u16,
    /// The cluster network's range; its subnet on the node is the range's `x.y.1.0/24`.
    pub ip_range: Ipv4Net,
}

/// Checks a cluster token: 6 to 15 letters and digits, as ThreeFold's k3s flavour wants.
pub fn check_token(token: &str) -> Result<(), String> {
    let ok = (6..=15).contains(&token.len()) && token.chars().all(|c| c.is_ascii_alphanumeric());
    match ok {
        true => Ok(()),
        false => Err(format!(
            "the cluster token must be 6 to 15 letters and digits (got {} characters)",
            token.chars().count()
        )),
    }
}

/// A new 15-character token from `random` bytes (give it bytes from the system's CSPRNG).
pub fn token_from(random: &[u8; 15]) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    // 62 symbols: a byte modulo 62 is nearly uniform (256 = 4*62 + 8), fine for a join token
    // of 89 bits.
    random
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// The first `10.N.0.0/16` (N from 100 up) that overlaps no network in `deployments`.
pub fn free_range(deployments: &[Deployment]) -> Option<Ipv4Net> {
    let taken: Vec<Ipv4Net> = deployments
        .iter()
        .flat_map(|d| &d.workloads)
        .filter_map(|w| match &w.spec {
            WorkloadSpec::Network(n) => Some(n.ip_range),
            _ => None,
        })
        .collect();
    (100..=254u8)
        .filter_map(|n| Ipv4Net::new(Ipv4Addr::new(10, n, 0, 0), 16).ok())
        .find(|range| {
            !taken
                .iter()
                .any(|t| t.contains(&range.network()) || range.contains(&t.network()))
        })
}

/// The first free port from [`API_PORT`] up that no machine of `deployments` publishes.
pub fn free_api_port(deployments: &[Deployment]) -> u16 {
    let taken: BTreeSet<u16> = deployments
        .iter()
        .flat_map(|d| &d.workloads)
        .filter_map(|w| match &w.spec {
            WorkloadSpec::Zmachine(m) => Some(m.ports.iter().map(|p| p.host_port())),
            _ => None,
        })
        .flatten()
        .collect();
    (API_PORT..u16::MAX)
        .find(|p| !taken.contains(p))
        .unwrap_or(API_PORT)
}

impl Cluster {
    /// Checks the sizes asked for; the message names the flag's value that is wrong.
    pub fn check(&self) -> Result<(), String> {
        if self.masters != 1 {
            return Err(format!(
                "{} masters: a cluster has one master (an HA control plane is not built yet)",
                self.masters
            ));
        }
        if self.workers > MAX_WORKERS {
            return Err(format!(
                "{} workers: at most {MAX_WORKERS} fit the cluster's /24",
                self.workers
            ));
        }
        if self.ip_range.prefix_len() > 16 {
            return Err(format!("ip range {}: give a /16 or larger", self.ip_range));
        }
        Ok(())
    }

    /// The node subnet of the cluster network: `x.y.1.0/24` of the range.
    pub fn subnet(&self) -> Ipv4Net {
        let base = u32::from(self.ip_range.network()) | (1 << 8);
        Ipv4Net::new(Ipv4Addr::from(base), 24).unwrap_or(self.ip_range)
    }

    /// The address of master `i` (from 1): `.2`, `.3`, `.4`.
    pub fn master_ip(&self, i: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet().network()) + 1 + i)
    }

    /// The address of worker `i` (from 1): `.10` up.
    pub fn worker_ip(&self, i: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet().network()) + FIRST_WORKER_HOST - 1 + i)
    }

    /// The master's API URL, as workers are given it.
    pub fn api_url(&self) -> String {
        format!("https://{}:{API_PORT}", self.master_ip(1))
    }

    /// The cluster as a deployment file: the network, and per cluster node its disk and
    /// machine. `sealed_token` is the cluster token sealed to the node (`zos seal`).
    pub fn file(&self, name: &str, sealed_token: &str) -> Result<DeploymentFile, String> {
        self.check()?;
        let mut workloads = vec![json!({
            "name": NETWORK, "type": "network",
            "description": "the cluster's private network",
            "data": { "ip_range": self.ip_range.to_string(), "subnet": self.subnet().to_string() }
        })];
        for i in 1..=self.masters {
            workloads.extend(self.node(&format!("master{i}"), i, sealed_token));
        }
        for i in 1..=self.workers {
            workloads.extend(self.node(&format!("worker{i}"), i, sealed_token));
        }
        let metadata = serde_json::to_string(self).map_err(|e| e.to_string())?;
        let file = json!({
            "name": name,
            "description": format!(
                "Kubernetes cluster: {} master(s), {} worker(s)", self.masters, self.workers
            ),
            "metadata": format!("{METADATA_TAG}{metadata}"),
            "workloads": workloads,
        });
        DeploymentFile::from_json_str(&file.to_string()).map_err(|e| e.to_string())
    }

    /// A cluster node's disk and machine. `name` is `masterI` or `workerI`.
    fn node(&self, name: &str, i: u32, sealed_token: &str) -> [Value; 2] {
        let master = name.starts_with("master");
        let disk = format!("{name}_disk");
        let (ip, url) = match master {
            true => (self.master_ip(i), String::new()),
            false => (self.worker_ip(i), self.api_url()),
        };
        let mut env = json!({
            "K3S_URL": url,
            "K3S_DATA_DIR": DATA_DIR,
            "K3S_NODE_NAME": name,
            "K3S_FLANNEL_IFACE": "eth0",
        });
        if let Some(key) = &self.ssh_key {
            env["SSH_KEY"] = json!(key);
        }
        let mut data = json!({
            "cpu": self.cpu,
            "memory": self.memory.to_string(),
            "env": env,
            "secret_env": { "K3S_TOKEN": sealed_token },
            "mounts": [{ "name": disk, "mountpoint": DATA_DIR }],
            "network": { "interfaces": [{ "network": NETWORK, "ip": ip.to_string() }] },
            "restart": "always",
        });
        match &self.root {
            Root::Image(image) => data["image"] = json!(image),
            Root::Flist(flist) => data["flist"] = json!(flist),
        }
        if master && i == 1 {
            data["ports"] = json!([{ "port": API_PORT, "host_port": self.api_port }]);
        }
        [
            json!({ "name": disk, "type": "zmount", "data": { "size": self.disk.to_string() } }),
            json!({ "name": name, "type": "zmachine",
                    "description": if master { "Kubernetes master" } else { "Kubernetes worker" },
                    "data": data }),
        ]
    }

    /// The cluster `d` holds, if it is one `zos kube` made.
    pub fn of(d: &Deployment) -> Option<Cluster> {
        let json = d.metadata.strip_prefix(METADATA_TAG)?;
        serde_json::from_str(json).ok()
    }
}

/// The sealed cluster token in the deployment of a cluster (its first master's).
pub fn sealed_token(d: &Deployment) -> Option<String> {
    d.workloads.iter().find_map(|w| match &w.spec {
        WorkloadSpec::Zmachine(m) if w.name.as_str() == "master1" => {
            m.secret_env.get("K3S_TOKEN").cloned()
        }
        _ => None,
    })
}

/// The master's kubeconfig (`text`, as k3s writes it) pointed at `host:port`, where the
/// user reaches the published API. The certificate was made for the master's own address,
/// so that address stays the name TLS checks (`tls-server-name`).
pub fn kubeconfig_for(text: &str, host: &str, port: u16) -> Result<String, String> {
    let mut doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text).map_err(|e| format!("the master's kubeconfig: {e}"))?;
    let clusters = doc
        .get_mut("clusters")
        .and_then(|c| c.as_sequence_mut())
        .filter(|c| !c.is_empty())
        .ok_or("the master's kubeconfig names no cluster")?;
    let authority = match host.contains(':') {
        true => format!("[{host}]:{port}"),
        false => format!("{host}:{port}"),
    };
    for entry in clusters {
        let cluster = entry
            .get_mut("cluster")
            .and_then(|c| c.as_mapping_mut())
            .ok_or("the master's kubeconfig has a cluster entry without `cluster`")?;
        let old = cluster
            .get("server")
            .and_then(|s| s.as_str())
            .ok_or("the master's kubeconfig has a cluster without `server`")?;
        let old_host = old
            .split("://")
            .nth(1)
            .and_then(|rest| rest.rsplit_once(':').map(|(h, _)| h))
            .unwrap_or("127.0.0.1")
            .trim_matches(['[', ']'])
            .to_string();
        cluster.insert("server".into(), format!("https://{authority}").into());
        if old_host != host && !cluster.contains_key("tls-server-name") {
            cluster.insert("tls-server-name".into(), old_host.into());
        }
    }
    serde_yaml_ng::to_string(&doc).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(masters: u32, workers: u32) -> Cluster {
        Cluster {
            masters,
            workers,
            root: Root::Flist("/srv/k3s.fl".into()),
            cpu: 1,
            memory: ByteSize(512 * ByteSize::MIB),
            disk: ByteSize(ByteSize::GIB),
            ssh_key: Some("ssh-ed25519 AAAA me".into()),
            api_port: 6443,
            ip_range: "10.100.0.0/16".parse().unwrap(),
        }
    }

    #[test]
    fn tokens_are_6_to_15_alphanumerics() {
        assert!(check_token("abc123").is_ok());
        assert!(check_token("abcdefghij12345").is_ok());
        for bad in ["abc12", "abcdefghij123456", "abc-123", "abc 123", ""] {
            assert!(check_token(bad).is_err(), "{bad:?}");
        }
        let token = token_from(&[200; 15]);
        assert!(check_token(&token).is_ok(), "{token}");
    }

    #[test]
    fn a_cluster_file_follows_the_k3s_contract() {
        let file = cluster(1, 2).file("demo", "SEALED").unwrap();
        let names: Vec<&str> = file.workloads.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "net",
                "master1_disk",
                "master1",
                "worker1_disk",
                "worker1",
                "worker2_disk",
                "worker2"
            ]
        );
        let machine = |name: &str| {
            let w = file.workloads.iter().find(|w| w.name.as_str() == name);
            match &w.unwrap().spec {
                WorkloadSpec::Zmachine(m) => m.clone(),
                other => panic!("{other:?}"),
            }
        };
        let master = machine("master1");
        assert_eq!(master.env["K3S_URL"], "");
        assert_eq!(master.env["K3S_DATA_DIR"], "/mydisk");
        assert_eq!(master.env["K3S_FLANNEL_IFACE"], "eth0");
        assert_eq!(master.env["SSH_KEY"], "ssh-ed25519 AAAA me");
        assert_eq!(master.secret_env["K3S_TOKEN"], "SEALED");
        assert_eq!(master.ports[0].host_port(), 6443);
        assert_eq!(
            master.network.interfaces[0].ip,
            Some("10.100.1.2".parse().unwrap())
        );
        let worker = machine("worker2");
        assert_eq!(worker.env["K3S_URL"], "https://10.100.1.2:6443");
        assert_eq!(worker.env["K3S_NODE_NAME"], "worker2");
        assert!(worker.ports.is_empty());
        assert_eq!(
            worker.network.interfaces[0].ip,
            Some("10.100.1.11".parse().unwrap())
        );
        assert_eq!(worker.mounts[0].name.as_str(), "worker2_disk");
    }

    #[test]
    fn the_cluster_comes_back_from_its_deployment_and_scaling_keeps_the_others_equal() {
        let c = cluster(1, 2);
        let d = c.file("demo", "SEALED").unwrap().into_deployment(
            zos_types::Keypair::generate().public(),
            zos_types::Keypair::generate().public(),
        );
        assert_eq!(Cluster::of(&d), Some(c.clone()));
        assert_eq!(sealed_token(&d).as_deref(), Some("SEALED"));
        let bigger = Cluster { workers: 4, ..c }.file("demo", "SEALED").unwrap();
        for w in &d.workloads {
            let same = bigger.workloads.iter().find(|b| b.name == w.name).unwrap();
            if w.name.as_str() != "net" {
                assert_eq!(same.spec, w.spec, "{} changed", w.name);
            }
        }
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(cluster(3, 1).check().unwrap_err().contains("one master"));
        assert!(cluster(0, 1).check().is_err());
        assert!(cluster(1, 300).check().unwrap_err().contains("300 workers"));
        assert!(cluster(1, 0).check().is_ok());
    }

    #[test]
    fn the_kubeconfig_points_at_the_published_api_and_keeps_the_certificates_name() {
        let text = "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: QUJD\n    server: https://127.0.0.1:6443\n  name: default\nkind: Config\n";
        let out = kubeconfig_for(text, "203.0.113.7", 7443).unwrap();
        assert!(out.contains("server: https://203.0.113.7:7443"), "{out}");
        assert!(out.contains("tls-server-name: 127.0.0.1"), "{out}");
        assert!(out.contains("certificate-authority-data: QUJD"), "{out}");
        let local = kubeconfig_for(text, "127.0.0.1", 6444).unwrap();
        assert!(!local.contains("tls-server-name"), "{local}");
        assert!(kubeconfig_for("clusters: []\n", "h", 1).is_err());
    }
}

//! Kubernetes manifests as one zos deployment, the way `podman kube play` runs one file as
//! one application: [`read_path`] / [`read_from`] / [`parse_str`] give typed [`Object`]s
//! (k8s-openapi's types), and [`translate`] turns a set of them into one
//! [`DeploymentFile`] for one node, which `zos deploy` signs and sends like a user's file.
//!
//! Every field zos does not honour is an error naming its path
//! (`spec.template.spec.affinity`), never dropped: the check walks each object's JSON as
//! written against a table of honoured paths per kind (`paths.rs`), so a field a newer
//! Kubernetes adds is named too. [`Options::ignore_unsupported`] returns them as warnings
//! instead. Kubernetes bookkeeping with no behaviour here (`metadata.labels`,
//! `annotations`, `uid`, `resourceVersion`, `creationTimestamp`, `managedFields`,
//! `status`, a selector that matches its template, `revisionHistoryLimit`) is accepted
//! silently; a selector that does not match its template is an error, as the API server
//! says.
//!
//! # The mapping
//!
//! | Kubernetes | zos |
//! |---|---|
//! | Pod, Deployment (`replicas`), StatefulSet, DaemonSet, Job (`completions`) | zmachines, see `workloads.rs`: `<name>` or `<name>-<i>` |
//! | `metadata.namespace` | a prefix: `<ns>-<name>` (`default`: none) |
//! | names | workload names with `-` and `.` written `_` (≤ 36 characters); the resolver answers them with `-` |
//! | `containers[0].image` | `image: docker://…`, Docker's short-name rule (`image.rs`) |
//! | `imagePullPolicy` | IfNotPresent: honoured (the node imports once); Always: only with a digest; Never: error |
//! | `command` / `args` | `entrypoint` / `cmd` (`$(VAR)` in them: error, not built) |
//! | `env[].value`, `configMapKeyRef`, `envFrom[].configMapRef` | `env` |
//! | `secretKeyRef`, `envFrom[].secretRef` | `secret_env`, sealed to the node (zos-seal) |
//! | `env[].valueFrom.fieldRef` / `resourceFieldRef` | error: not built |
//! | `resources.limits` (else `requests`) `cpu` / `memory` / `ephemeral-storage` | `cpu` (rounded up) / `memory` / `root_size` |
//! | `livenessProbe.exec` (+ `startupProbe` budget) | `healthcheck` (`probe.rs`) |
//! | `readinessProbe`, `httpGet`, `tcpSocket`, `grpc` probes | error: not built |
//! | `ports[].hostPort` | `ports` (published on the node); `containerPort` alone: informational, as in Kubernetes |
//! | `restartPolicy`, Job `backoffLimit` | `restart` (`workloads.rs`) |
//! | PersistentVolumeClaim (`resources.requests.storage`) | zmount `<name>` of that size |
//! | `volumes[].persistentVolumeClaim` + `volumeMounts` | `mounts` of that zmount at `mountPath` (one machine per zmount: shared, error) |
//! | StatefulSet `volumeClaimTemplates` | a zmount `<claim>-<name>-<i>` per replica |
//! | `volumes[].configMap` + `volumeMounts` | `files` under `mountPath` (`items`, `defaultMode`, `mode`) |
//! | `volumes[].secret` (`items`, modes) | `files`, each sealed to the node (`sealed: true`) |
//! | Service | names on the application's network, published ports (`service.rs`) |
//! | `workingDir` | `workdir` |
//! | `securityContext.runAsUser`/`runAsGroup` (the container's, else the pod's) | `user` (`UID` or `UID:GID`; a group alone: error); other security settings: error |
//! | a second container, `initContainers` | error: not built (one image root per VM) |
//! | anything else | error naming its path |
//!
//! Every machine joins one private network made for the application, [`NETWORK`], in
//! [`Options::ip_range`] (the `x.y.1.0/24` of it on the node); pick the range with
//! [`crate::kube::free_range`] over the owner's deployments.
//!
//! Not built yet: several containers per pod and init containers (one image root per VM),
//! emptyDir volumes, readiness and HTTP/TCP/gRPC probes, `$(VAR)` expansion, the downward
//! API, port-changing Services, a published port over several machines (no load balancer),
//! rolling updates (`strategy`), scheduling fields, and more than one node.

mod env;
mod error;
mod image;
mod names;
mod paths;
mod pod;
mod probe;
mod quantity;
mod read;
mod service;
mod volumes;
mod workloads;

#[cfg(test)]
mod tests;

pub use error::{ManifestError, Source, Unsupported};
pub use image::reference as image_reference;
pub use read::{parse_str, read_from, read_path, Object, Resource};

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use zos_types::{
    is_valid_deployment_name, DeploymentFile, Interface, MachineNetwork, Network, PublicKey,
    WorkloadFile, WorkloadName, WorkloadSpec, ZMount,
};

/// The application's network workload. Upper case, so no Kubernetes name (lower case) can
/// take it.
pub const NETWORK: &str = "NET";

/// How a translated deployment's `metadata` starts.
pub const METADATA_TAG: &str = "zos-manifest/v1";

/// What a translation needs besides the objects.
#[derive(Debug, Clone)]
pub struct Options {
    /// The deployment's name.
    pub name: String,
    /// The node's id: Secret values are sealed to it.
    pub node: PublicKey,
    /// The application network's range, a /16 (see [`crate::kube::free_range`]).
    pub ip_range: Ipv4Net,
    /// Return fields zos does not honour as warnings instead of failing.
    pub ignore_unsupported: bool,
}

/// A translation: the deployment file, and the fields not honoured when
/// [`Options::ignore_unsupported`] was set.
#[derive(Debug, Clone)]
pub struct Translation {
    /// The deployment to sign and send.
    pub file: DeploymentFile,
    /// What was not honoured (empty unless `ignore_unsupported`).
    pub warnings: Vec<Unsupported>,
}

/// What the parts of a translation share: the objects (for references between them), the
/// node (for sealing) and the fields found not honoured so far.
pub(crate) struct Ctx<'a> {
    objects: &'a [Object],
    node: &'a PublicKey,
    unsupported: Vec<Unsupported>,
}

impl Ctx<'_> {
    /// Records field `path` of `obj` as not honoured.
    fn unsupported(&mut self, obj: &Object, path: String, reason: &str) {
        self.unsupported.push(Unsupported {
            object: obj.label(),
            path,
            reason: reason.to_string(),
        });
    }

    /// Records field `path` of the object labelled `object` as not honoured.
    fn unsupported_in(&mut self, object: &str, path: String, reason: &str) {
        self.unsupported.push(Unsupported {
            object: object.to_string(),
            path,
            reason: reason.to_string(),
        });
    }

    /// An invalid field `path` of `obj`.
    fn invalid(&self, obj: &Object, path: &str, message: &str) -> ManifestError {
        ManifestError::Invalid {
            object: obj.label(),
            path: path.to_string(),
            message: message.to_string(),
        }
    }

    /// A reference at `path` to a `kind` called `name` the application does not hold.
    fn missing(&self, obj: &Object, path: &str, kind: &str, name: &str) -> ManifestError {
        self.invalid(
            obj,
            path,
            &format!("no {kind} {name:?} in this application"),
        )
    }

    fn find(&self, ns: Option<&str>, name: &str, kind: &str) -> Option<&Object> {
        self.objects
            .iter()
            .find(|o| o.resource.kind() == kind && o.namespace() == ns && o.name() == name)
    }

    /// The ConfigMap `name` in namespace `ns`.
    fn config_map(&self, ns: Option<&str>, name: &str) -> Option<&ConfigMap> {
        match &self.find(ns, name, "ConfigMap")?.resource {
            Resource::ConfigMap(c) => Some(c),
            _ => None,
        }
    }

    /// The Secret `name` in namespace `ns`.
    fn secret(&self, ns: Option<&str>, name: &str) -> Option<&Secret> {
        match &self.find(ns, name, "Secret")?.resource {
            Resource::Secret(s) => Some(s),
            _ => None,
        }
    }

    /// The PersistentVolumeClaim `name` in namespace `ns`.
    fn claim(&self, ns: Option<&str>, name: &str) -> Option<&PersistentVolumeClaim> {
        match &self.find(ns, name, "PersistentVolumeClaim")?.resource {
            Resource::PersistentVolumeClaim(c) => Some(c),
            _ => None,
        }
    }
}

/// Translates `objects` (one application) into one deployment for the node
/// `options.node`: see the module's mapping.
pub fn translate(objects: &[Object], options: &Options) -> Result<Translation, ManifestError> {
    if !is_valid_deployment_name(&options.name) {
        return Err(ManifestError::Deployment(vec![format!(
            "name {:?}: use 1 to 64 letters, digits, '_' or '-'",
            options.name
        )]));
    }
    let mut ctx = Ctx {
        objects,
        node: &options.node,
        unsupported: Vec::new(),
    };
    let mut seen = BTreeSet::new();
    for obj in objects {
        if !seen.insert((obj.resource.kind(), obj.namespace(), obj.name())) {
            return Err(ctx.invalid(
                obj,
                "metadata.name",
                "an object of this kind and name is given twice",
            ));
        }
        for (path, reason) in paths::unhonoured(&obj.raw, &paths::honoured(obj.resource.kind())) {
            ctx.unsupported(obj, path, &reason);
        }
    }
    let mut machines = Vec::new();
    let mut disks = Vec::new();
    for obj in objects {
        let (m, d) = workloads::translate(&mut ctx, obj)?;
        machines.extend(m);
        disks.extend(d);
    }
    for obj in objects {
        if let Resource::Service(svc) = &obj.resource {
            service::apply(&mut ctx, obj, svc, &mut machines)?;
        }
    }
    // A zmount is a disk attached to one VM (two would corrupt its filesystem): a claim
    // mounted by several machines stays on the first.
    let mut attached = BTreeSet::new();
    for m in &mut machines {
        for (zmount, path) in std::mem::take(&mut m.claims) {
            if !attached.insert(zmount.clone()) {
                m.spec.mounts.retain(|mount| mount.name != zmount);
                ctx.unsupported_in(
                    &m.owner,
                    path,
                    &format!(
                        "claim {zmount} is mounted by another machine already: a zmount is a                          disk of one VM (sharing one is not built); kept on the first only"
                    ),
                );
            }
        }
    }
    let network = WorkloadName::try_from(NETWORK.to_string())
        .map_err(|e| ManifestError::Deployment(vec![e]))?;
    let mut workloads = vec![WorkloadFile {
        name: network.clone(),
        version: None,
        description: "the application's private network".into(),
        metadata: String::new(),
        spec: WorkloadSpec::Network(Network {
            ip_range: options.ip_range,
            subnet: subnet(options.ip_range),
            egress: true,
            wireguard: None,
        }),
    }];
    for d in disks {
        workloads.push(WorkloadFile {
            name: d.name,
            version: None,
            description: d.description,
            metadata: String::new(),
            spec: WorkloadSpec::Zmount(ZMount { size: d.size }),
        });
    }
    for mut m in machines {
        m.spec.network = MachineNetwork {
            interfaces: vec![Interface {
                network: network.clone(),
                ip: None,
                aliases: m.aliases,
            }],
        };
        workloads.push(WorkloadFile {
            name: m.name,
            version: None,
            description: m.description,
            metadata: String::new(),
            spec: WorkloadSpec::Zmachine(m.spec),
        });
    }
    let kinds: Vec<String> = objects
        .iter()
        .map(|o| format!("{} {}", o.resource.kind(), o.name()))
        .collect();
    let file = DeploymentFile {
        name: options.name.clone(),
        description: format!("Kubernetes manifests: {}", kinds.join(", ")),
        metadata: METADATA_TAG.to_string(),
        version: None,
        signature_requirement: None,
        workloads,
    };
    file.clone()
        .into_deployment(options.node, options.node)
        .validate()
        .map_err(|e| ManifestError::Deployment(e.0))?;
    let mut unsupported = ctx.unsupported;
    unsupported.sort();
    unsupported.dedup();
    if !unsupported.is_empty() && !options.ignore_unsupported {
        return Err(ManifestError::Unsupported(unsupported));
    }
    Ok(Translation {
        file,
        warnings: unsupported,
    })
}

/// The node's subnet of the application's range: its `x.y.1.0/24`.
fn subnet(range: Ipv4Net) -> Ipv4Net {
    let base = u32::from(range.network()) | (1 << 8);
    Ipv4Net::new(Ipv4Addr::from(base), 24).unwrap_or(range)
}

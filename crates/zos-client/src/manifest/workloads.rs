//! Pods and their controllers as machines, and claims as disks.
//!
//! | kind | machines | restart |
//! |---|---|---|
//! | Pod | one, `<name>` | `restartPolicy`: Always (default) → always, OnFailure → on-failure, Never → never |
//! | Deployment | `replicas` (1), `<name>-<i>` | always (the only policy Kubernetes allows) |
//! | StatefulSet | `replicas` (1), `<name>-<i>`; per replica and claim template a zmount `<claim>-<name>-<i>` | always |
//! | DaemonSet | one (one node), `<name>` | always |
//! | Job | `completions` (1), `<name>-<i>`, all at once (so `parallelism` must be at least `completions`) | see below |
//! | PersistentVolumeClaim | a zmount `<name>` of `resources.requests.storage` | — |
//!
//! Jobs: `backoffLimit: 0` → never (no retry, as Kubernetes); else on-failure, the node
//! restarting the machine with backoff up to its own `max_restarts` (a node setting). A
//! written `backoffLimit` above 0 is not supported (the count cannot be given per machine);
//! left out (Kubernetes' 6) the node's count stands in. `restartPolicy` must be OnFailure
//! or Never, as Kubernetes says. A machine that exits 0 is done, as a completed pod.

use super::pod::{self, PodMachine};
use super::{names, quantity, Ctx, ManifestError, Object, Resource};
use k8s_openapi::api::core::v1::{PersistentVolumeClaimSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use std::collections::BTreeMap;
use zos_types::{ByteSize, RestartPolicy, WorkloadName, ZMachine};

/// A machine made from a pod, before Services name and publish it.
pub(crate) struct Machine {
    /// Its workload name.
    pub name: WorkloadName,
    /// The namespace of the object it came from.
    pub namespace: Option<String>,
    /// Its pod's labels, for Services' selectors.
    pub labels: BTreeMap<String, String>,
    /// The zmachine.
    pub spec: ZMachine,
    /// The first container's named ports.
    pub named_ports: BTreeMap<String, u16>,
    /// What it is, for humans.
    pub description: String,
    /// More names it answers to on the network (the Services that select it).
    pub aliases: Vec<String>,
    /// The object it came from, as messages name it.
    pub owner: String,
    /// Each claim's zmount it mounts, with the path of the volume naming it.
    pub claims: Vec<(WorkloadName, String)>,
}

/// A zmount made from a claim.
pub(crate) struct Disk {
    /// Its workload name.
    pub name: WorkloadName,
    /// Its size.
    pub size: ByteSize,
    /// What it is, for humans.
    pub description: String,
}

/// The machines and disks of `obj`.
pub(crate) fn translate(
    ctx: &mut Ctx,
    obj: &Object,
) -> Result<(Vec<Machine>, Vec<Disk>), ManifestError> {
    let mut machines = Vec::new();
    let mut disks = Vec::new();
    let kind = obj.resource.kind();
    let ns = obj.namespace();
    let name = obj.name();
    let no_claims = BTreeMap::new();
    match &obj.resource {
        Resource::Pod(p) => {
            let spec = p
                .spec
                .as_ref()
                .ok_or_else(|| ctx.invalid(obj, "spec", "a Pod needs a spec"))?;
            let restart = match spec.restart_policy.as_deref() {
                None | Some("Always") => RestartPolicy::Always,
                Some("OnFailure") => RestartPolicy::OnFailure,
                Some("Never") => RestartPolicy::Never,
                Some(other) => {
                    return Err(ctx.invalid(obj, "spec.restartPolicy", &bad_policy(other)))
                }
            };
            let m = pod::machine(ctx, obj, "spec", spec, &no_claims)?;
            let labels = p.metadata.labels.clone().unwrap_or_default();
            machines.push(machine(
                ctx,
                obj,
                None,
                labels,
                m,
                restart,
                format!("Pod {name}"),
            )?);
        }
        Resource::Deployment(d) => {
            let spec = &d.spec;
            let labels = template_labels(ctx, obj, &spec.template, &spec.selector)?;
            let replicas = count(ctx, obj, "spec.replicas", spec.replicas)?;
            for i in 0..replicas {
                let (m, restart) = template(ctx, obj, &spec.template, &no_claims, &["Always"])?;
                let what = format!("Deployment {name}, replica {i}");
                machines.push(machine(
                    ctx,
                    obj,
                    Some(i),
                    labels.clone(),
                    m,
                    restart,
                    what,
                )?);
            }
        }
        Resource::StatefulSet(s) => {
            let spec = &s.spec;
            let labels = template_labels(ctx, obj, &spec.template, &spec.selector)?;
            let replicas = count(ctx, obj, "spec.replicas", spec.replicas)?;
            for i in 0..replicas {
                let mut claims = BTreeMap::new();
                for (k, t) in spec.volume_claim_templates.iter().flatten().enumerate() {
                    let at = format!("spec.volumeClaimTemplates[{k}]");
                    let claim = t.metadata.name.clone().unwrap_or_default();
                    if claim.is_empty() {
                        return Err(ctx.invalid(
                            obj,
                            &format!("{at}.metadata.name"),
                            "a claim template needs a name",
                        ));
                    }
                    let disk =
                        names::workload_name(ns, &format!("{claim}-{name}"), Some(&i.to_string()))
                            .map_err(|e| ctx.invalid(obj, &format!("{at}.metadata.name"), &e))?;
                    let size = claim_size(ctx, obj, &format!("{at}.spec"), t.spec.as_ref())?;
                    disks.push(Disk {
                        name: disk.clone(),
                        size,
                        description: format!("StatefulSet {name}, claim {claim} of replica {i}"),
                    });
                    claims.insert(claim, disk);
                }
                let (m, restart) = template(ctx, obj, &spec.template, &claims, &["Always"])?;
                let what = format!("StatefulSet {name}, replica {i}");
                machines.push(machine(
                    ctx,
                    obj,
                    Some(i),
                    labels.clone(),
                    m,
                    restart,
                    what,
                )?);
            }
        }
        Resource::DaemonSet(d) => {
            let spec = &d.spec;
            let labels = template_labels(ctx, obj, &spec.template, &spec.selector)?;
            let (m, restart) = template(ctx, obj, &spec.template, &no_claims, &["Always"])?;
            let what = format!("DaemonSet {name} (one node)");
            machines.push(machine(ctx, obj, None, labels, m, restart, what)?);
        }
        Resource::Job(j) => {
            let spec = j
                .spec
                .as_ref()
                .ok_or_else(|| ctx.invalid(obj, "spec", "a Job needs a spec"))?;
            let labels = spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            let completions = count(ctx, obj, "spec.completions", spec.completions)?;
            let parallelism = count(ctx, obj, "spec.parallelism", spec.parallelism)?;
            if parallelism < completions {
                ctx.unsupported(
                    obj,
                    "spec.parallelism".into(),
                    &format!(
                        "{parallelism} at a time is not built: the {completions} completions \
                         run at once (set parallelism: {completions})"
                    ),
                );
            }
            let backoff = spec.backoff_limit;
            if backoff.is_some_and(|b| b > 0) {
                ctx.unsupported(
                    obj,
                    "spec.backoffLimit".into(),
                    "a retry count per machine is not built: the node's max_restarts bounds \
                     retries (0 is honoured: no retry)",
                );
            }
            for i in 0..completions {
                // Both policies retry a failed pod (in place or as a new pod): on-failure.
                let (m, _) = template(
                    ctx,
                    obj,
                    &spec.template,
                    &no_claims,
                    &["OnFailure", "Never"],
                )?;
                let restart = match backoff {
                    Some(0) => RestartPolicy::Never,
                    _ => RestartPolicy::OnFailure,
                };
                let what = format!("Job {name}, completion {i}");
                machines.push(machine(
                    ctx,
                    obj,
                    Some(i),
                    labels.clone(),
                    m,
                    restart,
                    what,
                )?);
            }
        }
        Resource::PersistentVolumeClaim(c) => {
            let size = claim_size(ctx, obj, "spec", c.spec.as_ref())?;
            let disk = names::workload_name(ns, name, None)
                .map_err(|e| ctx.invalid(obj, "metadata.name", &e))?;
            disks.push(Disk {
                name: disk,
                size,
                description: format!("{kind} {name}"),
            });
        }
        Resource::Service(_) | Resource::ConfigMap(_) | Resource::Secret(_) => {}
    }
    Ok((machines, disks))
}

/// A machine of `obj`, replica `index`.
fn machine(
    ctx: &Ctx,
    obj: &Object,
    index: Option<u32>,
    labels: BTreeMap<String, String>,
    m: PodMachine,
    restart: RestartPolicy,
    description: String,
) -> Result<Machine, ManifestError> {
    let index = index.map(|i| i.to_string());
    let name = names::workload_name(obj.namespace(), obj.name(), index.as_deref())
        .map_err(|e| ctx.invalid(obj, "metadata.name", &e))?;
    let mut spec = m.spec;
    spec.restart = restart;
    Ok(Machine {
        name,
        namespace: obj.namespace().map(String::from),
        labels,
        spec,
        named_ports: m.named_ports,
        description,
        aliases: Vec::new(),
        owner: obj.label(),
        claims: m.claims,
    })
}

/// A template's machine and restart policy, which must be one of `allowed` (the first is the
/// default, as Kubernetes defaults it).
fn template(
    ctx: &mut Ctx,
    obj: &Object,
    t: &PodTemplateSpec,
    claims: &BTreeMap<String, WorkloadName>,
    allowed: &[&str],
) -> Result<(PodMachine, RestartPolicy), ManifestError> {
    let at = "spec.template.spec";
    let spec = t
        .spec
        .as_ref()
        .ok_or_else(|| ctx.invalid(obj, at, "a pod template needs a spec"))?;
    let policy = match spec.restart_policy.as_deref() {
        None if allowed.len() == 1 => allowed[0],
        None => {
            return Err(ctx.invalid(
                obj,
                &format!("{at}.restartPolicy"),
                &format!("required: {}", allowed.join(" or ")),
            ))
        }
        Some(p) if allowed.contains(&p) => p,
        Some(p) => {
            return Err(ctx.invalid(
                obj,
                &format!("{at}.restartPolicy"),
                &format!(
                    "{p:?}: a {} allows {}",
                    obj.resource.kind(),
                    allowed.join(" or ")
                ),
            ))
        }
    };
    let restart = match policy {
        "OnFailure" => RestartPolicy::OnFailure,
        "Never" => RestartPolicy::Never,
        _ => RestartPolicy::Always,
    };
    Ok((pod::machine(ctx, obj, at, spec, claims)?, restart))
}

fn bad_policy(p: &str) -> String {
    format!("{p:?}: give Always, OnFailure or Never")
}

/// The template's labels, which the selector must match, as the API server requires.
fn template_labels(
    ctx: &Ctx,
    obj: &Object,
    t: &PodTemplateSpec,
    selector: &LabelSelector,
) -> Result<BTreeMap<String, String>, ManifestError> {
    let labels = t
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let wanted = selector.match_labels.clone().unwrap_or_default();
    if wanted.is_empty() && selector.match_expressions.is_none() {
        return Err(ctx.invalid(
            obj,
            "spec.selector",
            "empty selector is invalid: give matchLabels",
        ));
    }
    for (k, v) in &wanted {
        if labels.get(k) != Some(v) {
            return Err(ctx.invalid(
                obj,
                &format!("spec.selector.matchLabels.{k}"),
                "`selector` does not match template `labels`",
            ));
        }
    }
    Ok(labels)
}

/// A count field (`replicas`, `completions`, `parallelism`): 1 when left out.
fn count(ctx: &Ctx, obj: &Object, path: &str, n: Option<i32>) -> Result<u32, ManifestError> {
    let n = n.unwrap_or(1);
    u32::try_from(n).map_err(|_| ctx.invalid(obj, path, &format!("{n} is negative")))
}

/// A claim's size (`resources.requests.storage`); access modes and volume mode checked.
fn claim_size(
    ctx: &mut Ctx,
    obj: &Object,
    at: &str,
    spec: Option<&PersistentVolumeClaimSpec>,
) -> Result<ByteSize, ManifestError> {
    let path = format!("{at}.resources.requests.storage");
    let q = spec
        .and_then(|s| s.resources.as_ref()?.requests.as_ref()?.get("storage"))
        .ok_or_else(|| {
            ctx.invalid(
                obj,
                &path,
                "a claim needs a storage request: it is the zmount's size",
            )
        })?;
    let bytes = quantity::bytes(&q.0).map_err(|e| ctx.invalid(obj, &path, &e))?;
    let Some(spec) = spec else {
        return Ok(ByteSize(bytes));
    };
    for (i, mode) in spec.access_modes.iter().flatten().enumerate() {
        if !["ReadWriteOnce", "ReadWriteOncePod"].contains(&mode.as_str()) {
            ctx.unsupported(
                obj,
                format!("{at}.accessModes[{i}]"),
                &format!("{mode} is not built: a zmount is one node's disk (ReadWriteOnce)"),
            );
        }
    }
    if let Some(mode) = spec.volume_mode.as_deref().filter(|m| *m != "Filesystem") {
        ctx.unsupported(
            obj,
            format!("{at}.volumeMode"),
            &format!("{mode} is not built: a zmount is a filesystem"),
        );
    }
    Ok(ByteSize(bytes))
}

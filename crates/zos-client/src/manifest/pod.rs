//! A pod spec's first container as a zmachine: its image, command, args, environment,
//! resources, probe, published ports and mounts. Several containers, or init containers,
//! are not built yet (a VM runs one image root) and are named as not supported.

use super::{env, image, probe, quantity, volumes, Ctx, Object};
use k8s_openapi::api::core::v1::PodSpec;
use std::collections::BTreeMap;
use zos_types::{ByteSize, Port, Protocol, WorkloadName, ZMachine, MIN_MEMORY};

/// What a pod spec gives a machine, beside the zmachine itself.
pub(crate) struct PodMachine {
    /// The zmachine (restart policy and network set by the caller).
    pub spec: ZMachine,
    /// The first container's named ports, for Services' named target ports.
    pub named_ports: BTreeMap<String, u16>,
    /// Each claim's zmount it mounts, with the path of the volume naming it.
    pub claims: Vec<(WorkloadName, String)>,
}

/// Translates the pod spec at path `at` (`spec` or `spec.template.spec`) of `obj`.
/// `claims` maps volume names to zmounts made for this replica (a StatefulSet's
/// `volumeClaimTemplates`).
pub(crate) fn machine(
    ctx: &mut Ctx,
    obj: &Object,
    at: &str,
    spec: &PodSpec,
    claims: &BTreeMap<String, WorkloadName>,
) -> Result<PodMachine, super::ManifestError> {
    let Some(c) = spec.containers.first() else {
        return Err(ctx.invalid(obj, &format!("{at}.containers"), "a pod needs a container"));
    };
    for i in 1..spec.containers.len() {
        ctx.unsupported(
            obj,
            format!("{at}.containers[{i}]"),
            "several containers in one pod are not built yet: a VM runs one image root",
        );
    }
    let cat = format!("{at}.containers[0]");
    let written = c.image.as_deref().unwrap_or_default();
    let reference =
        image::reference(written).map_err(|e| ctx.invalid(obj, &format!("{cat}.image"), &e))?;
    if let Some(problem) = image::pull_policy_problem(written, c.image_pull_policy.as_deref()) {
        let field = match c.image_pull_policy {
            Some(_) => "imagePullPolicy",
            None => "image",
        };
        ctx.unsupported(obj, format!("{cat}.{field}"), &problem);
    }
    let mut m: ZMachine = serde_json::from_value(serde_json::json!({ "image": reference }))
        .map_err(|e| ctx.invalid(obj, &format!("{cat}.image"), &e.to_string()))?;
    for (field, list, target) in [
        ("command", &c.command, &mut m.entrypoint),
        ("args", &c.args, &mut m.cmd),
    ] {
        for (i, word) in list.iter().flatten().enumerate() {
            if word.contains("$(") {
                ctx.unsupported(
                    obj,
                    format!("{cat}.{field}[{i}]"),
                    "$(VAR) expansion is not built: the word would reach the program as written",
                );
            }
            target.push(word.clone());
        }
    }
    if let Some(dir) = &c.working_dir {
        if !dir.starts_with('/') {
            return Err(ctx.invalid(
                obj,
                &format!("{cat}.workingDir"),
                &format!("{dir:?} must be an absolute path"),
            ));
        }
        m.workdir = Some(dir.clone());
    }
    m.user = user(ctx, obj, at, spec, c)?;
    env::apply(ctx, obj, &cat, c, &mut m)?;
    resources(ctx, obj, &cat, c, &mut m)?;
    m.healthcheck = probe::healthcheck(ctx, obj, &cat, c)?;
    let mut named_ports = BTreeMap::new();
    for (i, p) in c.ports.iter().flatten().enumerate() {
        let pat = format!("{cat}.ports[{i}]");
        let port = port_number(ctx, obj, &format!("{pat}.containerPort"), p.container_port)?;
        if let Some(name) = &p.name {
            named_ports.insert(name.clone(), port);
        }
        let proto = protocol(ctx, obj, &format!("{pat}.protocol"), p.protocol.as_deref());
        if let (Some(host), Some(proto)) = (p.host_port, proto) {
            let host = port_number(ctx, obj, &format!("{pat}.hostPort"), host)?;
            m.ports.push(Port {
                port,
                host_port: Some(host),
                protocol: proto,
            });
        }
    }
    let claims = volumes::mounts(ctx, obj, at, spec, &cat, c, claims, &mut m)?;
    Ok(PodMachine {
        spec: m,
        named_ports,
        claims,
    })
}

/// `resources`: limits, else requests; CPUs rounded up, memory and ephemeral storage (the
/// root layer's size) in bytes. Neither given keeps the zmachine defaults (1 vCPU, 256 MiB,
/// a 1 GiB root).
fn resources(
    ctx: &mut Ctx,
    obj: &Object,
    cat: &str,
    c: &k8s_openapi::api::core::v1::Container,
    m: &mut ZMachine,
) -> Result<(), super::ManifestError> {
    let Some(r) = &c.resources else {
        return Ok(());
    };
    let pick = |name: &str| {
        let from = |which: &str,
                    map: &Option<
            BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
        >| {
            map.as_ref()
                .and_then(|m| m.get(name))
                .map(|q| (format!("{cat}.resources.{which}.{name}"), q.0.clone()))
        };
        from("limits", &r.limits).or_else(|| from("requests", &r.requests))
    };
    if let Some((path, q)) = pick("cpu") {
        m.cpu = quantity::cpus(&q).map_err(|e| ctx.invalid(obj, &path, &e))?;
    }
    if let Some((path, q)) = pick("memory") {
        let bytes = quantity::bytes(&q).map_err(|e| ctx.invalid(obj, &path, &e))?;
        if bytes < MIN_MEMORY.0 {
            return Err(ctx.invalid(
                obj,
                &path,
                &format!("{q} is below the smallest zmachine memory, {MIN_MEMORY}"),
            ));
        }
        m.memory = ByteSize(bytes);
    }
    if let Some((path, q)) = pick("ephemeral-storage") {
        let bytes = quantity::bytes(&q).map_err(|e| ctx.invalid(obj, &path, &e))?;
        m.root_size = ByteSize(bytes);
    }
    Ok(())
}

/// A port number 1-65535.
pub(crate) fn port_number(
    ctx: &Ctx,
    obj: &Object,
    path: &str,
    n: i32,
) -> Result<u16, super::ManifestError> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| ctx.invalid(obj, path, &format!("{n} is not a port (1 to 65535)")))
}

/// A protocol: TCP (the default) or UDP; SCTP is named as not supported (`None`).
pub(crate) fn protocol(
    ctx: &mut Ctx,
    obj: &Object,
    path: &str,
    p: Option<&str>,
) -> Option<Protocol> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        other => {
            ctx.unsupported(
                obj,
                path.to_string(),
                &format!("protocol {other} is not built: TCP and UDP are"),
            );
            None
        }
    }
}

/// The user the container runs as, Docker's way (`UID` or `UID:GID`): its
/// `securityContext.runAsUser`/`runAsGroup`, each else the pod's. A group without a user is
/// not expressible (the image's user with another group).
fn user(
    ctx: &mut Ctx,
    obj: &Object,
    at: &str,
    spec: &PodSpec,
    c: &k8s_openapi::api::core::v1::Container,
) -> Result<Option<String>, super::ManifestError> {
    let mine = c.security_context.as_ref();
    let pods = spec.security_context.as_ref();
    // Each id with the path it was read from, for an error.
    let pick = |field: &str, own: Option<i64>, pod: Option<i64>| {
        own.map(|id| (id, format!("{at}.containers[0].securityContext.{field}")))
            .or_else(|| pod.map(|id| (id, format!("{at}.securityContext.{field}"))))
    };
    let uid = pick(
        "runAsUser",
        mine.and_then(|s| s.run_as_user),
        pods.and_then(|s| s.run_as_user),
    );
    let gid = pick(
        "runAsGroup",
        mine.and_then(|s| s.run_as_group),
        pods.and_then(|s| s.run_as_group),
    );
    let id = |(id, path): (i64, String)| {
        u32::try_from(id)
            .map_err(|_| ctx.invalid(obj, &path, &format!("{id} is not a user or group id")))
    };
    match (uid, gid) {
        (None, None) => Ok(None),
        (Some(u), None) => Ok(Some(id(u)?.to_string())),
        (Some(u), Some(g)) => Ok(Some(format!("{}:{}", id(u)?, id(g)?))),
        (None, Some((_, path))) => Err(ctx.invalid(
            obj,
            &path,
            "runAsGroup needs runAsUser here: a zmachine's user is UID or UID:GID",
        )),
    }
}

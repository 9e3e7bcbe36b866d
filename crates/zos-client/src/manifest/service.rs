//! Services on the application's network.
//!
//! - Names: the node's resolver answers each machine by its workload name (`_` as `-`). A
//!   Service that selects exactly one machine, with every `targetPort` equal to its `port`,
//!   resolves: that machine takes the Service's name (so `redis-leader` reaches the one
//!   `redis-leader` pod, and the pod's own name no longer resolves). A Service over several
//!   machines (no load balancing), or one that maps a port to another, is not supported, nor
//!   is a fixed `clusterIP` (`None`, headless, is accepted).
//! - `NodePort` and `LoadBalancer`: each port is published on the node's addresses to the
//!   one selected machine's `targetPort`: at `nodePort` when given (else the Service's
//!   `port`) for NodePort, at `port` for LoadBalancer. Over several machines: not supported.
//! - `ExternalName` and selector-less Services: not supported.

use super::pod;
use super::workloads::Machine;
use super::{names, Ctx, ManifestError, Object};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use zos_types::Port;

/// Names and publishes the machines Service `svc` (object `obj`) selects.
pub(crate) fn apply(
    ctx: &mut Ctx,
    obj: &Object,
    svc: &Service,
    machines: &mut [Machine],
) -> Result<(), ManifestError> {
    let Some(spec) = &svc.spec else {
        return Err(ctx.invalid(obj, "spec", "a Service needs a spec"));
    };
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    if !["ClusterIP", "NodePort", "LoadBalancer"].contains(&kind) {
        ctx.unsupported(
            obj,
            "spec.type".into(),
            &format!("{kind} Services are not built"),
        );
        return Ok(());
    }
    if let Some(ip) = spec
        .cluster_ip
        .as_deref()
        .filter(|ip| !ip.is_empty() && *ip != "None")
    {
        ctx.unsupported(
            obj,
            "spec.clusterIP".into(),
            &format!("{ip}: fixed cluster addresses are not built"),
        );
    }
    let selector = spec.selector.clone().unwrap_or_default();
    if selector.is_empty() {
        ctx.unsupported(
            obj,
            "spec.selector".into(),
            "Services without a selector (own endpoints) are not built",
        );
        return Ok(());
    }
    let ns = obj.namespace();
    let selected: Vec<usize> = machines
        .iter()
        .enumerate()
        .filter(|(_, m)| {
            m.namespace.as_deref() == ns && selector.iter().all(|(k, v)| m.labels.get(k) == Some(v))
        })
        .map(|(i, _)| i)
        .collect();
    let [one] = selected[..] else {
        let why = match selected.len() {
            0 => "it selects no pod of this application".to_string(),
            n => format!(
                "it selects {n} machines: one name for several (load balancing) is not built; \
                 the resolver answers each machine by its own name"
            ),
        };
        ctx.unsupported(obj, "spec.selector".into(), &why);
        return Ok(());
    };
    // Each port: (path, port, target port, protocol, node port).
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let at = format!("spec.ports[{i}]");
        let port = pod::port_number(ctx, obj, &format!("{at}.port"), p.port)?;
        let target = match &p.target_port {
            None => port,
            Some(IntOrString::Int(n)) => {
                pod::port_number(ctx, obj, &format!("{at}.targetPort"), *n)?
            }
            Some(IntOrString::String(name)) => match machines[one].named_ports.get(name) {
                Some(n) => *n,
                None => {
                    return Err(ctx.invalid(
                        obj,
                        &format!("{at}.targetPort"),
                        &format!("the selected pod's container has no port named {name:?}"),
                    ))
                }
            },
        };
        let Some(protocol) =
            pod::protocol(ctx, obj, &format!("{at}.protocol"), p.protocol.as_deref())
        else {
            continue;
        };
        let node_port = match p.node_port {
            Some(n) => Some(pod::port_number(ctx, obj, &format!("{at}.nodePort"), n)?),
            None => None,
        };
        ports.push((at, port, target, protocol, node_port));
    }
    let svc_name = obj.name();
    let forwarded: Vec<&(String, u16, u16, _, _)> = ports.iter().filter(|p| p.1 != p.2).collect();
    let m = &mut machines[one];
    if let Some(p) = forwarded.first() {
        ctx.unsupported(
            obj,
            format!("{}.targetPort", p.0),
            &format!(
                "the Service's name resolves to the machine itself: port {} to {} needs a \
                 forward, not built (give targetPort equal to port)",
                p.1, p.2
            ),
        );
    } else if let Some(other) = &m.named_by {
        ctx.unsupported(
            obj,
            "metadata.name".into(),
            &format!("Service {other} already names this machine: one name per machine"),
        );
    } else {
        m.name = names::workload_name(ns, svc_name, None)
            .map_err(|e| ctx.invalid(obj, "metadata.name", &e))?;
        m.named_by = Some(svc_name.to_string());
        m.description
            .push_str(&format!(", named by Service {svc_name}"));
    }
    if kind != "ClusterIP" {
        for (_, port, target, protocol, node_port) in ports {
            let host = match kind {
                "NodePort" => node_port.unwrap_or(port),
                _ => port,
            };
            m.spec.ports.push(Port {
                port: target,
                host_port: Some(host),
                protocol,
            });
        }
    }
    Ok(())
}

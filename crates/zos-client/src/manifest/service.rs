//! Services on the application's network.
//!
//! - Names: the node's resolver answers each machine by its workload name (`_` as `-`), and
//!   by its interface's aliases. A Service whose every `targetPort` equals its `port` gives
//!   each machine it selects its name as an alias (`<ns>-<name>` outside `default`): the name
//!   resolves to all of them, one address each (clients pick one; no proxy balances). A
//!   Service that maps a port to another, or a fixed `clusterIP` (`None`, headless, is
//!   accepted), is not supported.
//! - `NodePort` and `LoadBalancer`: each port is published on the node's addresses to the
//!   one selected machine's `targetPort`: at `nodePort` when given (else the Service's
//!   `port`) for NodePort, at `port` for LoadBalancer. Over several machines: not supported
//!   (a published port goes to one machine).
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
    let Some(&first) = selected.first() else {
        ctx.unsupported(
            obj,
            "spec.selector".into(),
            "it selects no pod of this application",
        );
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
            Some(IntOrString::String(name)) => match machines[first].named_ports.get(name) {
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
    let alias = names::alias(ns, obj.name()).map_err(|e| ctx.invalid(obj, "metadata.name", &e))?;
    let forwarded: Vec<&(String, u16, u16, _, _)> = ports.iter().filter(|p| p.1 != p.2).collect();
    if let Some(p) = forwarded.first() {
        ctx.unsupported(
            obj,
            format!("{}.targetPort", p.0),
            &format!(
                "the Service's name resolves to the machines themselves: port {} to {} needs \
                 a forward, not built (give targetPort equal to port)",
                p.1, p.2
            ),
        );
    } else {
        for &i in &selected {
            // A pod named as its Service (`kubectl expose pod`) resolves by its own name.
            if machines[i].name.as_str().replace('_', "-") != alias {
                machines[i].aliases.push(alias.clone());
            }
        }
    }
    if kind != "ClusterIP" {
        if selected.len() > 1 {
            ctx.unsupported(
                obj,
                "spec.type".into(),
                &format!(
                    "it selects {} machines: a published port goes to one machine (no \
                     load balancer is built)",
                    selected.len()
                ),
            );
            return Ok(());
        }
        let m = &mut machines[first];
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

//! The fields zos honours, per kind, and the walk that names every other field by its path.
//!
//! The check runs on the object's JSON as written, not on the typed object, so a field that
//! a newer Kubernetes version adds (and k8s-openapi would not know) is named too. A table
//! entry accepts its whole subtree; a path that only leads to entries is walked into; any
//! other field is not honoured. Array indices are written `[]` in the table and `[N]` in the
//! paths reported. Empty values (`null`, `{}`, `[]`) ask for nothing and pass.

use serde_json::Value;

/// Kubernetes bookkeeping in `metadata`, accepted without behaviour (labels select, the rest
/// is written by the API server).
const METADATA: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "metadata.labels",
    "metadata.annotations",
    "metadata.uid",
    "metadata.resourceVersion",
    "metadata.generation",
    "metadata.creationTimestamp",
    "metadata.managedFields",
    "metadata.selfLink",
];

/// Every object's top level.
const TOP: &[&str] = &["apiVersion", "kind", "status"];

/// A pod spec's honoured fields, below `spec` (Pod) or `spec.template.spec` (controllers).
const POD_SPEC: &[&str] = &[
    "restartPolicy",
    "containers[].name",
    "containers[].image",
    "containers[].imagePullPolicy",
    "containers[].command",
    "containers[].args",
    "containers[].workingDir",
    "containers[].securityContext.runAsUser",
    "containers[].securityContext.runAsGroup",
    "securityContext.runAsUser",
    "securityContext.runAsGroup",
    "containers[].env[].name",
    "containers[].env[].value",
    "containers[].env[].valueFrom.configMapKeyRef.name",
    "containers[].env[].valueFrom.configMapKeyRef.key",
    "containers[].env[].valueFrom.configMapKeyRef.optional",
    "containers[].env[].valueFrom.secretKeyRef.name",
    "containers[].env[].valueFrom.secretKeyRef.key",
    "containers[].env[].valueFrom.secretKeyRef.optional",
    "containers[].envFrom[].prefix",
    "containers[].envFrom[].configMapRef.name",
    "containers[].envFrom[].configMapRef.optional",
    "containers[].envFrom[].secretRef.name",
    "containers[].envFrom[].secretRef.optional",
    "containers[].resources.limits.cpu",
    "containers[].resources.limits.memory",
    "containers[].resources.limits.ephemeral-storage",
    "containers[].resources.requests.cpu",
    "containers[].resources.requests.memory",
    "containers[].resources.requests.ephemeral-storage",
    "containers[].ports[].name",
    "containers[].ports[].containerPort",
    "containers[].ports[].hostPort",
    "containers[].ports[].protocol",
    "containers[].livenessProbe.exec.command",
    "containers[].livenessProbe.initialDelaySeconds",
    "containers[].livenessProbe.periodSeconds",
    "containers[].livenessProbe.timeoutSeconds",
    "containers[].livenessProbe.failureThreshold",
    "containers[].livenessProbe.successThreshold",
    "containers[].startupProbe.exec.command",
    "containers[].startupProbe.initialDelaySeconds",
    "containers[].startupProbe.periodSeconds",
    "containers[].startupProbe.timeoutSeconds",
    "containers[].startupProbe.failureThreshold",
    "containers[].startupProbe.successThreshold",
    "containers[].volumeMounts[].name",
    "containers[].volumeMounts[].mountPath",
    "containers[].volumeMounts[].readOnly",
    "volumes[].name",
    "volumes[].persistentVolumeClaim.claimName",
    "volumes[].persistentVolumeClaim.readOnly",
    "volumes[].configMap.name",
    "volumes[].configMap.items[].key",
    "volumes[].configMap.items[].path",
    "volumes[].configMap.items[].mode",
    "volumes[].configMap.defaultMode",
    "volumes[].configMap.optional",
    "volumes[].secret.secretName",
    "volumes[].secret.items[].key",
    "volumes[].secret.items[].path",
    "volumes[].secret.items[].mode",
    "volumes[].secret.defaultMode",
    "volumes[].secret.optional",
];

/// A pod template's own metadata, below `spec.template`.
const TEMPLATE_METADATA: &[&str] = &[
    "metadata.name",
    "metadata.labels",
    "metadata.annotations",
    "metadata.creationTimestamp",
];

/// Why well-known fields are not honoured, by the table form of their path's end.
const REASONS: &[(&str, &str)] = &[
    (
        "initContainers",
        "init containers are not built yet: a VM runs one image root",
    ),
    ("ephemeralContainers", "ephemeral containers are not built"),
    (
        "readinessProbe",
        "no readiness gating is built: nothing routes by readiness",
    ),
    (
        "httpGet",
        "the healthcheck runs a command in the machine; HTTP probes are not built",
    ),
    (
        "tcpSocket",
        "the healthcheck runs a command in the machine; TCP probes are not built",
    ),
    (
        "grpc",
        "the healthcheck runs a command in the machine; gRPC probes are not built",
    ),
    ("emptyDir", "emptyDir volumes are not built"),
    ("subPath", "subPath mounts are not built"),
    (
        "strategy",
        "rolling updates are not built: a changed template replaces machines at once",
    ),
    ("updateStrategy", "rolling updates are not built"),
    (
        "storageClassName",
        "a zmount is the node's one kind of disk: no storage classes",
    ),
    ("nodeSelector", "one node: no scheduling"),
    ("affinity", "one node: no scheduling"),
    ("tolerations", "one node: no scheduling"),
    ("fieldRef", "the downward API is not built"),
    ("resourceFieldRef", "the downward API is not built"),
    (
        "binaryData",
        "binary ConfigMap data is not built: files and env are text",
    ),
    ("lifecycle", "container lifecycle hooks are not built"),
    (
        "terminationGracePeriodSeconds",
        "the node's stop sequence has no per-machine grace period",
    ),
    (
        "hostNetwork",
        "machines are VMs on a private network: no host network",
    ),
];

/// The honoured paths of a kind (`Pod`, `Deployment`, …), full paths from the object's top.
pub fn honoured(kind: &str) -> Vec<String> {
    let mut table: Vec<String> = TOP.iter().chain(METADATA).map(|p| p.to_string()).collect();
    fn pod_spec(prefix: &str) -> Vec<String> {
        POD_SPEC.iter().map(|p| format!("{prefix}{p}")).collect()
    }
    let template = |table: &mut Vec<String>| {
        table.extend(
            TEMPLATE_METADATA
                .iter()
                .map(|p| format!("spec.template.{p}")),
        );
        table.extend(pod_spec("spec.template.spec."));
        table.push("spec.selector.matchLabels".into());
        table.push("spec.revisionHistoryLimit".into());
    };
    match kind {
        "Pod" => table.extend(pod_spec("spec.")),
        "Deployment" | "DaemonSet" => {
            template(&mut table);
            table.push("spec.replicas".into());
        }
        "StatefulSet" => {
            template(&mut table);
            table.extend(
                [
                    "spec.replicas",
                    "spec.serviceName",
                    "spec.volumeClaimTemplates[].apiVersion",
                    "spec.volumeClaimTemplates[].kind",
                    "spec.volumeClaimTemplates[].metadata.name",
                    "spec.volumeClaimTemplates[].metadata.labels",
                    "spec.volumeClaimTemplates[].metadata.annotations",
                    "spec.volumeClaimTemplates[].spec.accessModes",
                    "spec.volumeClaimTemplates[].spec.resources.requests.storage",
                    "spec.volumeClaimTemplates[].spec.volumeMode",
                ]
                .map(String::from),
            );
        }
        "Job" => {
            table.extend(
                TEMPLATE_METADATA
                    .iter()
                    .map(|p| format!("spec.template.{p}")),
            );
            table.extend(pod_spec("spec.template.spec."));
            table.extend(
                ["spec.completions", "spec.parallelism", "spec.backoffLimit"].map(String::from),
            );
        }
        "Service" => table.extend(
            [
                "spec.selector",
                "spec.type",
                "spec.clusterIP",
                "spec.ports[].name",
                "spec.ports[].port",
                "spec.ports[].targetPort",
                "spec.ports[].protocol",
                "spec.ports[].nodePort",
            ]
            .map(String::from),
        ),
        "ConfigMap" => table.extend(["data", "immutable"].map(String::from)),
        "Secret" => table.extend(["data", "stringData", "type", "immutable"].map(String::from)),
        "PersistentVolumeClaim" => table.extend(
            [
                "spec.accessModes",
                "spec.resources.requests.storage",
                "spec.volumeMode",
            ]
            .map(String::from),
        ),
        _ => {}
    }
    // DaemonSets have no replicas: one machine per node.
    if kind == "DaemonSet" {
        table.retain(|p| p != "spec.replicas");
    }
    table
}

/// Every field of `raw` outside `table`, as `(path, reason)`.
pub fn unhonoured(raw: &Value, table: &[String]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    walk(raw, "", "", table, &mut out);
    out.sort();
    out
}

fn walk(
    v: &Value,
    concrete: &str,
    pattern: &str,
    table: &[String],
    out: &mut Vec<(String, String)>,
) {
    match v {
        Value::Object(map) => {
            for (key, child) in map {
                let join = |base: &str| match base.is_empty() {
                    true => key.clone(),
                    false => format!("{base}.{key}"),
                };
                visit(child, &join(concrete), &join(pattern), key, table, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                let c = format!("{concrete}[{i}]");
                let p = format!("{pattern}[]");
                walk_or_accept(child, &c, &p, table, out);
            }
        }
        _ => {}
    }
}

fn walk_or_accept(
    v: &Value,
    concrete: &str,
    pattern: &str,
    table: &[String],
    out: &mut Vec<(String, String)>,
) {
    if !table.iter().any(|t| t == pattern) {
        walk(v, concrete, pattern, table, out);
    }
}

fn visit(
    child: &Value,
    concrete: &str,
    pattern: &str,
    key: &str,
    table: &[String],
    out: &mut Vec<(String, String)>,
) {
    let empty = match child {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    };
    if empty || table.iter().any(|t| t == pattern) {
        return;
    }
    let leads = table.iter().any(|t| {
        t.strip_prefix(pattern)
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
    });
    if leads {
        walk(child, concrete, pattern, table, out);
    } else {
        let reason = REASONS
            .iter()
            .find(|(name, _)| *name == key)
            .map_or("not honoured by zos (not built)", |(_, why)| why);
        out.push((concrete.to_string(), reason.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_outside_the_table_are_named_by_their_path() {
        let raw = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": "web", "labels": { "app": "web", "any.thing/x": "y" },
                          "finalizers": ["x"] },
            "spec": {
                "replicas": 2,
                "selector": { "matchLabels": { "app": "web" } },
                "template": {
                    "metadata": { "labels": { "app": "web" } },
                    "spec": {
                        "affinity": { "nodeAffinity": {} },
                        "securityContext": {},
                        "containers": [
                            { "name": "a", "image": "nginx:1.25",
                              "lifecycle": { "preStop": {} },
                              "ports": [{ "containerPort": 80, "hostIP": "1.2.3.4" }],
                              "someFutureField": true },
                        ],
                    },
                },
            },
            "status": { "replicas": 2 },
        });
        let found = unhonoured(&raw, &honoured("Deployment"));
        let paths: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "metadata.finalizers",
                "spec.template.spec.affinity",
                "spec.template.spec.containers[0].lifecycle",
                "spec.template.spec.containers[0].ports[0].hostIP",
                "spec.template.spec.containers[0].someFutureField",
            ]
        );
        assert_eq!(found[1].1, "one node: no scheduling");
        assert_eq!(found[4].1, "not honoured by zos (not built)");
    }

    #[test]
    fn kinds_differ_in_what_they_honour() {
        let raw = json!({ "spec": { "replicas": 1, "completions": 2 } });
        let job: Vec<String> = unhonoured(&raw, &honoured("Job"))
            .into_iter()
            .map(|u| u.0)
            .collect();
        assert_eq!(job, ["spec.replicas"]);
        let ds: Vec<String> = unhonoured(&raw, &honoured("DaemonSet"))
            .into_iter()
            .map(|u| u.0)
            .collect();
        assert_eq!(ds, ["spec.completions", "spec.replicas"]);
    }
}

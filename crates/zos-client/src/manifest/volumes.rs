//! A container's `volumeMounts`: a `persistentVolumeClaim` volume (or a StatefulSet's claim
//! template) mounts that claim's zmount at `mountPath`; a `configMap` volume becomes files
//! under `mountPath` (one per key, or per `items` entry; `defaultMode`/`mode` as their
//! permission bits). Other volume sources are named by the field check.
//!
//! A zmount is a disk attached to one VM: the caller keeps a claim mounted by several
//! machines on the first only (see `translate`), where Kubernetes shares the filesystem.

use super::{names, Ctx, ManifestError, Object};
use k8s_openapi::api::core::v1::{Container, PodSpec, Volume};
use std::collections::BTreeMap;
use zos_types::{MachineFile, Mount, WorkloadName, ZMachine};

/// Adds container `c`'s mounts (at path `cat`) to `m`; `at` is the pod spec's path. Returns
/// each claim's zmount with the path of the volume naming it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn mounts(
    ctx: &mut Ctx,
    obj: &Object,
    at: &str,
    spec: &PodSpec,
    cat: &str,
    c: &Container,
    claims: &BTreeMap<String, WorkloadName>,
    m: &mut ZMachine,
) -> Result<Vec<(WorkloadName, String)>, ManifestError> {
    let mut claimed = Vec::new();
    let volumes: BTreeMap<&str, (usize, &Volume)> = spec
        .volumes
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, v)| (v.name.as_str(), (i, v)))
        .collect();
    for (i, vm) in c.volume_mounts.iter().flatten().enumerate() {
        let mat = format!("{cat}.volumeMounts[{i}]");
        let read_only = vm.read_only == Some(true);
        if let Some(zmount) = claims.get(&vm.name) {
            if read_only {
                ctx.unsupported(
                    obj,
                    format!("{mat}.readOnly"),
                    "read-only zmounts are not built",
                );
            }
            m.mounts.push(Mount {
                name: zmount.clone(),
                mountpoint: vm.mount_path.clone(),
            });
            continue;
        }
        let Some((j, v)) = volumes.get(vm.name.as_str()) else {
            return Err(ctx.invalid(
                obj,
                &format!("{mat}.name"),
                &format!("the pod has no volume {:?}", vm.name),
            ));
        };
        let vat = format!("{at}.volumes[{j}]");
        if let Some(pvc) = &v.persistent_volume_claim {
            let path = format!("{vat}.persistentVolumeClaim.claimName");
            if ctx.claim(obj.namespace(), &pvc.claim_name).is_none() {
                return Err(ctx.missing(obj, &path, "PersistentVolumeClaim", &pvc.claim_name));
            }
            if read_only || pvc.read_only == Some(true) {
                ctx.unsupported(
                    obj,
                    format!("{mat}.readOnly"),
                    "read-only zmounts are not built",
                );
            }
            let name = names::workload_name(obj.namespace(), &pvc.claim_name, None)
                .map_err(|e| ctx.invalid(obj, &path, &e))?;
            claimed.push((name.clone(), path));
            m.mounts.push(Mount {
                name,
                mountpoint: vm.mount_path.clone(),
            });
        } else if let Some(source) = &v.config_map {
            let path = format!("{vat}.configMap");
            let Some(cm) = ctx.config_map(obj.namespace(), &source.name) else {
                if source.optional == Some(true) {
                    continue;
                }
                return Err(ctx.missing(obj, &format!("{path}.name"), "ConfigMap", &source.name));
            };
            let data = cm.data.clone().unwrap_or_default();
            let base = vm.mount_path.trim_end_matches('/');
            let mode = |bits: Option<i32>| bits.map(|b| format!("{b:04o}"));
            let entries: Vec<(String, String, Option<i32>)> = match &source.items {
                Some(items) => {
                    let mut out = Vec::new();
                    for (k, item) in items.iter().enumerate() {
                        match data.get(&item.key) {
                            Some(content) => {
                                out.push((item.path.clone(), content.clone(), item.mode))
                            }
                            None if source.optional == Some(true) => {}
                            None => {
                                return Err(ctx.invalid(
                                    obj,
                                    &format!("{path}.items[{k}].key"),
                                    &format!(
                                        "ConfigMap {:?} has no key {:?}",
                                        source.name, item.key
                                    ),
                                ))
                            }
                        }
                    }
                    out
                }
                None => data.into_iter().map(|(k, v)| (k, v, None)).collect(),
            };
            for (file, content, bits) in entries {
                m.files.push(MachineFile {
                    path: format!("{base}/{file}"),
                    content,
                    mode: mode(bits.or(source.default_mode)),
                    sealed: false,
                });
            }
        }
        // Other volume sources (secret, emptyDir, hostPath, …) are named by the field check.
    }
    Ok(claimed)
}

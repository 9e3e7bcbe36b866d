//! A container's `volumeMounts`: a `persistentVolumeClaim` volume (or a StatefulSet's claim
//! template) mounts that claim's zmount at `mountPath`; a `configMap` volume becomes files
//! under `mountPath` (one per key, or per `items` entry; `defaultMode`/`mode` as their
//! permission bits), and a `secret` volume too, each file's content sealed to the node.
//! Other volume sources are named by the field check.
//!
//! A zmount is a disk attached to one VM: the caller keeps a claim mounted by several
//! machines on the first only (see `translate`), where Kubernetes shares the filesystem.

use super::{names, Ctx, ManifestError, Object};
use k8s_openapi::api::core::v1::{Container, KeyToPath, PodSpec, Volume};
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
            let data = cm
                .data
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            let keys = Keys {
                what: format!("ConfigMap {:?}", source.name),
                data,
                items: source.items.as_deref().unwrap_or_default(),
                default_mode: source.default_mode,
                optional: source.optional == Some(true),
                sealed: false,
            };
            files(ctx, obj, &path, &vm.mount_path, keys, m)?;
        } else if let Some(source) = &v.secret {
            let path = format!("{vat}.secret");
            let name = source.secret_name.clone().unwrap_or_default();
            let Some(secret) = ctx.secret(obj.namespace(), &name) else {
                if source.optional == Some(true) {
                    continue;
                }
                return Err(ctx.missing(obj, &format!("{path}.secretName"), "Secret", &name));
            };
            let keys = Keys {
                what: format!("Secret {name:?}"),
                data: super::env::values(secret),
                items: source.items.as_deref().unwrap_or_default(),
                default_mode: source.default_mode,
                optional: source.optional == Some(true),
                sealed: true,
            };
            files(ctx, obj, &path, &vm.mount_path, keys, m)?;
        }
        // Other volume sources (emptyDir, hostPath, …) are named by the field check.
    }
    Ok(claimed)
}

/// A ConfigMap's or Secret's keys as a volume: which, their values, the volume's `items`
/// and modes, and whether the files are sealed to the node (a Secret's).
struct Keys<'a> {
    what: String,
    data: BTreeMap<String, Vec<u8>>,
    items: &'a [KeyToPath],
    default_mode: Option<i32>,
    optional: bool,
    sealed: bool,
}

/// Adds `keys` to `m` as files under `mount_path` (one per key, or per item), the volume at
/// `path`. Files are text: a value that is not UTF-8 is refused by path.
fn files(
    ctx: &mut Ctx,
    obj: &Object,
    path: &str,
    mount_path: &str,
    keys: Keys<'_>,
    m: &mut ZMachine,
) -> Result<(), ManifestError> {
    let base = mount_path.trim_end_matches('/');
    let entries: Vec<(String, &Vec<u8>, Option<i32>, String)> = if keys.items.is_empty() {
        keys.data
            .iter()
            .map(|(k, v)| (k.clone(), v, None, format!("{path} key {k:?}")))
            .collect()
    } else {
        let mut out = Vec::new();
        for (k, item) in keys.items.iter().enumerate() {
            let at = format!("{path}.items[{k}].key");
            match keys.data.get(&item.key) {
                Some(content) => out.push((item.path.clone(), content, item.mode, at)),
                None if keys.optional => {}
                None => {
                    return Err(ctx.invalid(
                        obj,
                        &at,
                        &format!("{} has no key {:?}", keys.what, item.key),
                    ))
                }
            }
        }
        out
    };
    for (file, bytes, bits, at) in entries {
        let text = String::from_utf8(bytes.clone()).map_err(|_| {
            ctx.invalid(
                obj,
                &at,
                "the value is not UTF-8 text: a zmachine's files hold text",
            )
        })?;
        let content = if keys.sealed {
            zos_seal::seal(ctx.node, text.as_bytes()).map_err(|e| ManifestError::Seal {
                object: keys.what.clone(),
                key: file.clone(),
                message: e.to_string(),
            })?
        } else {
            text
        };
        m.files.push(MachineFile {
            path: format!("{base}/{file}"),
            content,
            mode: bits.or(keys.default_mode).map(|b| format!("{b:04o}")),
            sealed: keys.sealed,
        });
    }
    Ok(())
}

//! A container's environment: `envFrom` first, then `env` (later names win, as in
//! Kubernetes). Plain values and ConfigMap values go to `env`; Secret values go to
//! `secret_env`, sealed to the node, so no Secret value is in the clear in the output.

use super::{Ctx, ManifestError, Object};
use k8s_openapi::api::core::v1::{Container, Secret};
use std::collections::BTreeMap;
use zos_types::ZMachine;

/// Sets `m`'s environment from container `c` (at path `cat`).
pub(crate) fn apply(
    ctx: &mut Ctx,
    obj: &Object,
    cat: &str,
    c: &Container,
    m: &mut ZMachine,
) -> Result<(), ManifestError> {
    let ns = obj.namespace();
    for (i, from) in c.env_from.iter().flatten().enumerate() {
        let prefix = from.prefix.as_deref().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            let path = format!("{cat}.envFrom[{i}].configMapRef.name");
            match ctx.config_map(ns, &r.name) {
                Some(cm) => {
                    for (k, v) in cm.data.iter().flatten() {
                        set_plain(m, format!("{prefix}{k}"), v.clone());
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(ctx.missing(obj, &path, "ConfigMap", &r.name)),
            }
        }
        if let Some(r) = &from.secret_ref {
            let path = format!("{cat}.envFrom[{i}].secretRef.name");
            match ctx.secret(ns, &r.name) {
                Some(s) => {
                    for (k, v) in values(s) {
                        set_secret(ctx, m, &r.name, format!("{prefix}{k}"), &v)?;
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(ctx.missing(obj, &path, "Secret", &r.name)),
            }
        }
    }
    for (i, e) in c.env.iter().flatten().enumerate() {
        let at = format!("{cat}.env[{i}]");
        let from = e.value_from.as_ref();
        if let Some(r) = from.and_then(|f| f.config_map_key_ref.as_ref()) {
            let path = format!("{at}.valueFrom.configMapKeyRef");
            let value = ctx
                .config_map(ns, &r.name)
                .and_then(|cm| cm.data.as_ref()?.get(&r.key).cloned());
            match value {
                Some(v) => set_plain(m, e.name.clone(), v),
                None if r.optional == Some(true) => {}
                None => {
                    return Err(ctx.invalid(
                        obj,
                        &path,
                        &format!(
                            "no ConfigMap {:?} with key {:?} in this application",
                            r.name, r.key
                        ),
                    ))
                }
            }
        } else if let Some(r) = from.and_then(|f| f.secret_key_ref.as_ref()) {
            let path = format!("{at}.valueFrom.secretKeyRef");
            let value = ctx
                .secret(ns, &r.name)
                .and_then(|s| values(s).remove(&r.key));
            match value {
                Some(v) => set_secret(ctx, m, &r.name, e.name.clone(), &v)?,
                None if r.optional == Some(true) => {}
                None => {
                    return Err(ctx.invalid(
                        obj,
                        &path,
                        &format!(
                            "no Secret {:?} with key {:?} in this application",
                            r.name, r.key
                        ),
                    ))
                }
            }
        } else if from.is_none() {
            let value = e.value.clone().unwrap_or_default();
            if value.contains("$(") {
                ctx.unsupported(
                    obj,
                    format!("{at}.value"),
                    "$(VAR) expansion is not built: the value would be set as written",
                );
            }
            set_plain(m, e.name.clone(), value);
        }
        // Other sources (fieldRef, resourceFieldRef, …) are named by the field check.
    }
    Ok(())
}

/// A Secret's values: `data` (decoded), then `stringData` over it, as the API server merges
/// them.
pub(crate) fn values(s: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = s
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (k, v) in s.string_data.iter().flatten() {
        out.insert(k.clone(), v.clone().into_bytes());
    }
    out
}

fn set_plain(m: &mut ZMachine, name: String, value: String) {
    m.secret_env.remove(&name);
    m.env.insert(name, value);
}

fn set_secret(
    ctx: &Ctx,
    m: &mut ZMachine,
    secret: &str,
    name: String,
    value: &[u8],
) -> Result<(), ManifestError> {
    let sealed = zos_seal::seal(ctx.node, value).map_err(|e| ManifestError::Seal {
        object: format!("Secret {secret}"),
        key: name.clone(),
        message: e.to_string(),
    })?;
    m.env.remove(&name);
    m.secret_env.insert(name, sealed);
    Ok(())
}

//! Reading manifests: multi-document YAML (or JSON) from a file, a directory (its `*.yaml`,
//! `*.yml` and `*.json`, sorted by name) or a reader; `kind: List` flattened into its items;
//! each object typed by its `apiVersion` and `kind` with k8s-openapi's types.

use super::error::{ManifestError, Source};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use serde::Deserialize;
use serde_json::Value;
use std::io::Read;
use std::path::Path;

/// One Kubernetes object: where it came from, its JSON as written (for the check of
/// honoured fields) and its typed form.
#[derive(Debug, Clone)]
pub struct Object {
    /// Its file and document.
    pub source: Source,
    /// The object as written, as JSON.
    pub raw: Value,
    /// The object, typed.
    pub resource: Resource,
}

/// The kinds this library translates, as k8s-openapi types them.
#[derive(Debug, Clone)]
pub enum Resource {
    /// `v1` Pod.
    Pod(Box<Pod>),
    /// `apps/v1` Deployment.
    Deployment(Box<Deployment>),
    /// `apps/v1` StatefulSet.
    StatefulSet(Box<StatefulSet>),
    /// `apps/v1` DaemonSet.
    DaemonSet(Box<DaemonSet>),
    /// `batch/v1` Job.
    Job(Box<Job>),
    /// `v1` Service.
    Service(Box<Service>),
    /// `v1` ConfigMap.
    ConfigMap(Box<ConfigMap>),
    /// `v1` Secret.
    Secret(Box<Secret>),
    /// `v1` PersistentVolumeClaim.
    PersistentVolumeClaim(Box<PersistentVolumeClaim>),
}

impl Resource {
    /// Its `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            Resource::Pod(_) => "Pod",
            Resource::Deployment(_) => "Deployment",
            Resource::StatefulSet(_) => "StatefulSet",
            Resource::DaemonSet(_) => "DaemonSet",
            Resource::Job(_) => "Job",
            Resource::Service(_) => "Service",
            Resource::ConfigMap(_) => "ConfigMap",
            Resource::Secret(_) => "Secret",
            Resource::PersistentVolumeClaim(_) => "PersistentVolumeClaim",
        }
    }
}

impl Object {
    /// `metadata.name`.
    pub fn name(&self) -> &str {
        self.raw["metadata"]["name"].as_str().unwrap_or_default()
    }

    /// `metadata.namespace`, `None` for the default namespace.
    pub fn namespace(&self) -> Option<&str> {
        self.raw["metadata"]["namespace"]
            .as_str()
            .filter(|ns| !ns.is_empty() && *ns != "default")
    }

    /// How messages name it: `Kind name (file, document N)`, the name with its namespace.
    pub fn label(&self) -> String {
        let name = match self.namespace() {
            Some(ns) => format!("{ns}/{}", self.name()),
            None => self.name().to_string(),
        };
        format!("{} {name} ({})", self.resource.kind(), self.source)
    }
}

/// Reads `path`: a manifest file, or a directory whose `*.yaml`, `*.yml` and `*.json`
/// files are read in name order (not its subdirectories).
pub fn read_path(path: &Path) -> Result<Vec<Object>, ManifestError> {
    let read_error = |source| ManifestError::Read {
        path: path.to_path_buf(),
        source,
    };
    if !path.is_dir() {
        let text = std::fs::read_to_string(path).map_err(read_error)?;
        return parse_str(&path.display().to_string(), &text);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(read_error)? {
        let file = entry.map_err(read_error)?.path();
        let manifest = file
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| ["yaml", "yml", "json"].contains(&e.to_ascii_lowercase().as_str()));
        if manifest && file.is_file() {
            files.push(file);
        }
    }
    files.sort();
    let mut objects = Vec::new();
    for file in files {
        objects.extend(read_path(&file)?);
    }
    Ok(objects)
}

/// Reads every document from `reader` (stdin: name it `-`).
pub fn read_from(name: &str, mut reader: impl Read) -> Result<Vec<Object>, ManifestError> {
    let mut text = String::new();
    reader
        .read_to_string(&mut text)
        .map_err(|source| ManifestError::Read {
            path: name.into(),
            source,
        })?;
    parse_str(name, &text)
}

/// Parses every document of `text` (read from `file`); empty documents are skipped.
pub fn parse_str(file: &str, text: &str) -> Result<Vec<Object>, ManifestError> {
    let mut objects = Vec::new();
    for (document, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let at = Source {
            file: file.to_string(),
            document,
            item: None,
        };
        let mut value = Value::deserialize(doc).map_err(|e| ManifestError::Syntax {
            at: at.clone(),
            message: e.to_string(),
        })?;
        octal_modes(&mut value);
        if value.is_null() {
            continue;
        }
        if value["kind"] == "List" {
            let items = match &value["items"] {
                Value::Array(items) => items.clone(),
                Value::Null => Vec::new(),
                _ => {
                    return Err(ManifestError::Syntax {
                        at,
                        message: "a List's items must be a sequence of objects".into(),
                    })
                }
            };
            for (i, item) in items.into_iter().enumerate() {
                let at = Source {
                    item: Some(i),
                    ..at.clone()
                };
                objects.push(typed(at, item)?);
            }
        } else {
            objects.push(typed(at, value)?);
        }
    }
    Ok(objects)
}

/// File modes written as YAML 1.1 octal (`defaultMode: 0644`, as kubectl reads them) made
/// numbers: YAML 1.2, which serde_yaml_ng follows, reads a leading-zero number as a string.
fn octal_modes(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                let octal = match v {
                    Value::String(s) if key == "mode" || key == "defaultMode" => s
                        .strip_prefix('0')
                        .filter(|d| !d.is_empty())
                        .and_then(|d| u32::from_str_radix(d, 8).ok()),
                    _ => None,
                };
                match octal {
                    Some(n) => *v = Value::from(n),
                    None => octal_modes(v),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(octal_modes),
        _ => {}
    }
}

/// Types one object by its `apiVersion` and `kind`.
fn typed(at: Source, raw: Value) -> Result<Object, ManifestError> {
    if !raw.is_object() {
        return Err(ManifestError::Syntax {
            at,
            message: "a manifest must be a mapping with apiVersion and kind".into(),
        });
    }
    let api_version = raw["apiVersion"].as_str().unwrap_or_default().to_string();
    let kind = raw["kind"].as_str().unwrap_or_default().to_string();
    fn parse<T: serde::de::DeserializeOwned>(raw: &Value) -> Result<Box<T>, String> {
        T::deserialize(raw).map(Box::new).map_err(|e| e.to_string())
    }
    let resource = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Pod") => parse(&raw).map(Resource::Pod),
        ("apps/v1", "Deployment") => parse(&raw).map(Resource::Deployment),
        ("apps/v1", "StatefulSet") => parse(&raw).map(Resource::StatefulSet),
        ("apps/v1", "DaemonSet") => parse(&raw).map(Resource::DaemonSet),
        ("batch/v1", "Job") => parse(&raw).map(Resource::Job),
        ("v1", "Service") => parse(&raw).map(Resource::Service),
        ("v1", "ConfigMap") => parse(&raw).map(Resource::ConfigMap),
        ("v1", "Secret") => parse(&raw).map(Resource::Secret),
        ("v1", "PersistentVolumeClaim") => parse(&raw).map(Resource::PersistentVolumeClaim),
        _ => {
            return Err(ManifestError::UnknownKind {
                at,
                api_version,
                kind,
            })
        }
    };
    let resource = resource.map_err(|message| ManifestError::Syntax {
        at: at.clone(),
        message: format!("{kind}: {message}"),
    })?;
    let object = Object {
        source: at,
        raw,
        resource,
    };
    if object.name().is_empty() {
        return Err(ManifestError::Invalid {
            object: object.label(),
            path: "metadata.name".into(),
            message: "every object needs a name".into(),
        });
    }
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_lists_and_directories_are_read_in_order() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n---\n\
                    apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Secret, metadata: {name: b}}\n\
                    - {apiVersion: v1, kind: ConfigMap, metadata: {name: c, namespace: web}}\n";
        let objects = parse_str("app.yaml", text).unwrap();
        let labels: Vec<String> = objects.iter().map(Object::label).collect();
        assert_eq!(
            labels,
            [
                "ConfigMap a (app.yaml, document 0)",
                "Secret b (app.yaml, document 2, items[0])",
                "ConfigMap web/c (app.yaml, document 2, items[1])",
            ]
        );

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("b.yml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: second}\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("a.json"),
            r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "first"}}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a manifest").unwrap();
        let names: Vec<String> = read_path(dir.path())
            .unwrap()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        assert_eq!(names, ["first", "second"]);

        let stdin = read_from("-", text.as_bytes()).unwrap();
        assert_eq!(stdin[0].source.file, "-");
    }

    #[test]
    fn an_unknown_kind_names_file_document_and_kind() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n\
                    apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web}\n";
        let err = parse_str("app.yaml", text).unwrap_err().to_string();
        assert!(
            err.starts_with("app.yaml, document 1: kind \"Ingress\""),
            "{err}"
        );
        assert!(err.contains("networking.k8s.io/v1"), "{err}");
        let err = parse_str("x.yaml", "- 1\n- 2\n").unwrap_err().to_string();
        assert!(err.contains("must be a mapping"), "{err}");
        let err = parse_str("x.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("metadata.name"), "{err}");
    }
}

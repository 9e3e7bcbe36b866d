//! Workloads: the things a deployment asks a node to run, and what the node reports back.

use crate::size::ByteSize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A workload name: 1 to 36 ASCII letters, digits or underscores. It names host resources
/// (disks, taps), so it is kept short and free of separators.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct WorkloadName(String);

impl WorkloadName {
    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for WorkloadName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok = (1..=36).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok {
            return Err(format!(
                "invalid workload name {s:?}: use 1 to 36 letters, digits or underscores"
            ));
        }
        Ok(WorkloadName(s))
    }
}

impl fmt::Display for WorkloadName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One workload of a deployment, as the node stores and returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "WorkloadFields")]
pub struct Workload {
    /// Unique within the deployment.
    pub name: WorkloadName,
    /// The deployment version in which this workload last changed.
    pub version: u32,
    /// Free text for humans.
    pub description: String,
    /// Free text for tools (not interpreted by the node).
    pub metadata: String,
    /// `type` and `data`: what to run.
    #[serde(flatten)]
    pub spec: WorkloadSpec,
    /// Filled in by the node; never part of the signed bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<WorkloadResult>,
}

/// A workload as users write it: `version` may be left out and there is no `result`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "WorkloadFields")]
pub struct WorkloadFile {
    /// Unique within the deployment.
    pub name: WorkloadName,
    /// Defaults to the deployment's version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Free text for humans.
    pub description: String,
    /// Free text for tools.
    pub metadata: String,
    /// `type` and `data`: what to run.
    #[serde(flatten)]
    pub spec: WorkloadSpec,
}

/// What a workload runs: serialized as `type` (the variant) next to `data` (its settings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum WorkloadSpec {
    /// A virtual machine running an flist.
    Zmachine(ZMachine),
    /// A disk that zmachines of the same deployment can mount.
    Zmount(ZMount),
    // Planned: Network(Network) and Kubernetes(Kubernetes). Add each here and in WorkloadType.
}

/// The `type` tag alone. Parsing it on its own gives serde's "unknown variant `x`, expected
/// `zmachine` or `zmount`" at the path `workloads[N].type`.
#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum WorkloadType {
    Zmachine,
    Zmount,
}

/// A virtual machine booted from an flist.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZMachine {
    /// Absolute path of the `.fl` file on the node holding the root filesystem.
    pub flist: String,
    /// Replaces the image's entrypoint; empty keeps the image's.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// Replaces the image's command; empty keeps the image's.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Virtual CPUs.
    #[serde(default = "default_cpu")]
    pub cpu: u8,
    /// Guest memory.
    #[serde(default = "default_memory")]
    pub memory: ByteSize,
    /// Size of the writable root layer.
    #[serde(default = "default_root_size")]
    pub root_size: ByteSize,
    /// Zmounts of this deployment to attach.
    #[serde(default)]
    pub mounts: Vec<Mount>,
}

fn default_cpu() -> u8 {
    1
}
fn default_memory() -> ByteSize {
    ByteSize(256 * ByteSize::MIB)
}
fn default_root_size() -> ByteSize {
    ByteSize(ByteSize::GIB)
}

/// A zmount attached to a zmachine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    /// The zmount workload, in the same deployment.
    pub name: WorkloadName,
    /// Absolute path inside the machine.
    pub mountpoint: String,
}

/// A disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZMount {
    /// Its size.
    pub size: ByteSize,
}

/// What the node last did with a workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadResult {
    /// Where the workload stands.
    pub state: ResultState,
    /// Human-readable detail, e.g. the error.
    #[serde(default)]
    pub message: String,
    /// Type-specific output (e.g. addresses).
    #[serde(default)]
    pub data: serde_json::Value,
    /// When this result was recorded, in unix seconds.
    pub created: u64,
}

/// The state in a [`WorkloadResult`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultState {
    /// Accepted, not yet running.
    Init,
    /// Running as asked.
    Ok,
    /// Failed; see the message.
    Error,
    /// Stopped by the node (e.g. out of funds) but kept.
    Paused,
    /// Removed.
    Deleted,
}

/// Every field either workload form may hold. Deserialized by hand rather than with
/// `#[serde(flatten)]`, because flatten buffers the map and the error path would stop at
/// `workloads[N]` instead of reaching `workloads[N].data.memory`.
#[derive(Default)]
struct WorkloadFields {
    name: Option<WorkloadName>,
    version: Option<u32>,
    description: String,
    metadata: String,
    spec: Option<WorkloadSpec>,
    result: Option<WorkloadResult>,
}

const FIELDS: &[&str] = &[
    "name",
    "version",
    "description",
    "metadata",
    "type",
    "data",
    "result",
];

impl<'de> Deserialize<'de> for WorkloadFields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(FieldsVisitor)
    }
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = WorkloadFields;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a workload with name, type and data")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WorkloadFields, A::Error> {
        let mut w = WorkloadFields::default();
        let mut kind = None;
        // `data` seen before `type` (canonical JSON sorts keys): kept until the type is known.
        let mut early_data: Option<serde_json::Value> = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "name" => w.name = Some(map.next_value()?),
                "version" => w.version = Some(map.next_value()?),
                "description" => w.description = map.next_value()?,
                "metadata" => w.metadata = map.next_value()?,
                "result" => w.result = map.next_value()?,
                "type" => kind = Some(map.next_value::<WorkloadType>()?),
                "data" => match kind {
                    Some(WorkloadType::Zmachine) => {
                        w.spec = Some(WorkloadSpec::Zmachine(map.next_value()?))
                    }
                    Some(WorkloadType::Zmount) => {
                        w.spec = Some(WorkloadSpec::Zmount(map.next_value()?))
                    }
                    None => early_data = Some(map.next_value()?),
                },
                other => return Err(de::Error::unknown_field(other, FIELDS)),
            }
        }
        let kind = kind.ok_or_else(|| de::Error::missing_field("type"))?;
        if let Some(data) = early_data {
            let spec = match kind {
                WorkloadType::Zmachine => serde_json::from_value(data).map(WorkloadSpec::Zmachine),
                WorkloadType::Zmount => serde_json::from_value(data).map(WorkloadSpec::Zmount),
            };
            w.spec = Some(spec.map_err(|e| de::Error::custom(format_args!("data: {e}")))?);
        }
        Ok(w)
    }
}

impl WorkloadFields {
    fn take_required(&mut self) -> Result<(WorkloadName, WorkloadSpec), String> {
        let name = self.name.take().ok_or("missing field `name`")?;
        let spec = self.spec.take().ok_or("missing field `data`")?;
        Ok((name, spec))
    }
}

impl TryFrom<WorkloadFields> for Workload {
    type Error = String;
    fn try_from(mut w: WorkloadFields) -> Result<Self, String> {
        let (name, spec) = w.take_required()?;
        let version = w.version.ok_or("missing field `version`")?;
        let (description, metadata, result) = (w.description, w.metadata, w.result);
        Ok(Workload {
            name,
            version,
            description,
            metadata,
            spec,
            result,
        })
    }
}

impl TryFrom<WorkloadFields> for WorkloadFile {
    type Error = String;
    fn try_from(mut w: WorkloadFields) -> Result<Self, String> {
        let (name, spec) = w.take_required()?;
        if w.result.is_some() {
            return Err("`result` is written by the node, not by users".into());
        }
        Ok(WorkloadFile {
            name,
            version: w.version,
            description: w.description,
            metadata: w.metadata,
            spec,
        })
    }
}

//! Workloads: the things a deployment asks a node to run, and what the node reports back.
//!
//! Each workload type lives in its own module here (its data, parsing and rules) and is
//! registered by one line in [`workload_types!`]; the node's side of a type lives in
//! `zos-node`'s `workload/<type>.rs`.

mod ip;
mod network;
mod zmachine;
mod zmount;

pub use ip::{PublicIp, PublicIpResult};
pub use network::{
    addresses, held_addresses, network_named, wireguard_key, Interface, MachineAddress,
    MachineNetwork, Network, NetworkResult, Peer, WireGuard, WireGuardEnd, RANGE_PREFIX,
    SUBNET_PREFIX,
};
pub use zmachine::{
    is_flist_url, Healthcheck, MachineFile, Mount, Port, Protocol, RegistryAuth, RestartPolicy,
    ZMachine, MIN_MEMORY, SEALED_BEGIN,
};
pub use zmount::ZMount;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::fmt;

/// What every workload type's data provides.
pub trait WorkloadData {
    /// The type's own rules, each broken one as a sentence (e.g. `cpu must be at least 1`);
    /// `deployment` holds every workload of the deployment, for references between them.
    fn problems(&self, deployment: &[Workload]) -> Vec<String>;
}

/// The registration of workload types: one line per type, `Variant(Data) = "wire name"`.
/// Generates [`WorkloadSpec`] (serialized as `type` next to `data`), its dispatch, and the
/// `type` tag parsed on its own (serde's "unknown variant `x`, expected `zmachine` or
/// `zmount`" at the path `workloads[N].type`).
macro_rules! workload_types {
    ($( $(#[$doc:meta])* $variant:ident($data:ty) = $wire:literal, )+) => {
        /// What a workload runs: serialized as `type` (the variant) next to `data` (its settings).
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "type", content = "data", rename_all = "snake_case")]
        // Specs live in a deployment's workload list, read once per pass: a zmachine's size
        // there costs nothing worth a box at every match.
        #[allow(clippy::large_enum_variant)]
        pub enum WorkloadSpec {
            $( $(#[$doc])* $variant($data), )+
        }

        /// The `type` tag alone.
        #[derive(Clone, Copy, Deserialize)]
        #[serde(rename_all = "snake_case")]
        enum WorkloadType {
            $( $variant, )+
        }

        impl WorkloadType {
            /// `data` read straight from the map (errors keep their field path).
            fn next_data<'de, A: MapAccess<'de>>(self, map: &mut A) -> Result<WorkloadSpec, A::Error> {
                Ok(match self {
                    $( WorkloadType::$variant => WorkloadSpec::$variant(map.next_value()?), )+
                })
            }

            /// `data` that came before `type` and was kept as a value.
            fn data_from(self, data: serde_json::Value) -> serde_json::Result<WorkloadSpec> {
                Ok(match self {
                    $( WorkloadType::$variant => WorkloadSpec::$variant(serde_json::from_value(data)?), )+
                })
            }
        }

        impl WorkloadSpec {
            /// The type's name as written in `type`.
            pub fn type_name(&self) -> &'static str {
                match self {
                    $( WorkloadSpec::$variant(_) => $wire, )+
                }
            }

            /// The type's own rules (see [`WorkloadData::problems`]).
            pub fn problems(&self, deployment: &[Workload]) -> Vec<String> {
                match self {
                    $( WorkloadSpec::$variant(data) => data.problems(deployment), )+
                }
            }
        }

        /// Every workload type's wire name, in registration order.
        pub const WORKLOAD_TYPES: &[&str] = &[$( $wire, )+];
    };
}

workload_types! {
    /// A virtual machine running an flist.
    Zmachine(ZMachine) = "zmachine",
    /// A disk that zmachines of the same deployment can mount.
    Zmount(ZMount) = "zmount",
    /// A private network that zmachines of the same deployment join.
    Network(Network) = "network",
    /// One of the node's public IPv4 addresses, for a zmachine of the same deployment.
    Ip(PublicIp) = "ip",
}

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
                    Some(kind) => w.spec = Some(kind.next_data(&mut map)?),
                    None => early_data = Some(map.next_value()?),
                },
                other => return Err(de::Error::unknown_field(other, FIELDS)),
            }
        }
        let kind = kind.ok_or_else(|| de::Error::missing_field("type"))?;
        if let Some(data) = early_data {
            let spec = kind.data_from(data);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_are_the_wire_tags() {
        let specs = [
            WorkloadSpec::Zmachine(serde_json::from_str(r#"{"flist":"/a.fl"}"#).unwrap()),
            WorkloadSpec::Zmount(ZMount {
                size: crate::ByteSize(1),
            }),
            WorkloadSpec::Network(
                serde_json::from_str(r#"{"ip_range":"10.1.0.0/16","subnet":"10.1.2.0/24"}"#)
                    .unwrap(),
            ),
            WorkloadSpec::Ip(PublicIp::default()),
        ];
        for (spec, wire) in specs.iter().zip(WORKLOAD_TYPES) {
            let json = serde_json::to_value(spec).unwrap();
            assert_eq!(json["type"], *wire);
            assert_eq!(spec.type_name(), *wire);
        }
        assert_eq!(specs.len(), WORKLOAD_TYPES.len());
    }
}

//! `zmount`: a disk that zmachines of the same deployment can mount.

use super::{Workload, WorkloadData};
use crate::size::ByteSize;
use serde::{Deserialize, Serialize};

/// A disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZMount {
    /// Its size.
    pub size: ByteSize,
}

impl WorkloadData for ZMount {
    fn problems(&self, _deployment: &[Workload]) -> Vec<String> {
        if self.size.0 == 0 {
            vec!["size must be greater than 0".into()]
        } else {
            Vec::new()
        }
    }
}

//! The node's own cgroup, `<own>/zos/node`, beside its VMs' groups (made by zos-vmm): the
//! node and the helpers it starts (flist mounts) are accounted apart from the VMs, and on
//! cgroup v2 the node's former cgroup is left free of processes so it can hand controllers
//! down to the VMs' groups. No limits: a node short of memory would be a node killed.

use zos_cgroup::{Group, Hierarchy, Limits};

/// The node's group while the node runs; leaving it (on drop) moves the node back.
pub struct NodeGroup {
    hierarchy: Hierarchy,
    group: Group,
}

impl NodeGroup {
    /// Moves the node into its group; `None` (with a warning) where the host's cgroups
    /// cannot be used, since the node works without one.
    pub fn enter() -> Option<NodeGroup> {
        let entered = Hierarchy::detect().and_then(|hierarchy| {
            let group = zos_cgroup::enter_node_group(&hierarchy, &Limits::default())?;
            Ok(NodeGroup { hierarchy, group })
        });
        match entered {
            Ok(g) => Some(g),
            Err(e) => {
                tracing::warn!("the node runs in no cgroup of its own: {e}");
                None
            }
        }
    }
}

impl Drop for NodeGroup {
    fn drop(&mut self) {
        if let Err(e) = zos_cgroup::leave_node_group(&self.hierarchy, &self.group) {
            tracing::info!("the node's cgroup stays until its helpers are gone: {e}");
        }
    }
}

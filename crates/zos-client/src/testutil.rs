//! Deployments for the unit tests.

use zos_types::{Deployment, DeploymentFile, Keypair, ResultState, WorkloadResult};

/// A zmount and a zmachine mounting it.
pub const YAML: &str = "
name: app
workloads:
  - name: disk
    type: zmount
    data: { size: 1G }
  - name: web
    type: zmachine
    data: { flist: https://hub.example/web.fl, mounts: [{ name: disk, mountpoint: /data }] }
";

/// `yaml` as a deployment owned by a fixed key.
pub fn deployment(yaml: &str) -> Deployment {
    let key = Keypair::from_seed(&[7; 32]);
    DeploymentFile::from_yaml_str(yaml)
        .unwrap()
        .into_deployment(key.public(), Keypair::from_seed(&[3; 32]).public())
}

/// `d` with its workloads' results set to `states`, in order.
pub fn with_states(mut d: Deployment, states: &[Option<ResultState>]) -> Deployment {
    for (w, state) in d.workloads.iter_mut().zip(states) {
        w.result = state.map(|state| WorkloadResult {
            state,
            message: String::new(),
            data: serde_json::Value::Null,
            created: 1,
        });
    }
    d
}

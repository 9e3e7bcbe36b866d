//! Waiting for a deployment's workloads to settle after it was sent.

use crate::status::{is_pending, state_label};
use crate::{Answer, ClientError, NodeClient};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use zos_types::{Deployment, WorkloadName};

/// How often the node is asked how the workloads are doing.
const POLL_INTERVAL: Duration = Duration::from_millis(300);

/// A workload whose state changed while waiting.
pub struct StateChange<'a> {
    /// The workload.
    pub workload: &'a WorkloadName,
    /// Its state before; `None` for a workload seen for the first time.
    pub before: Option<&'static str>,
    /// Its state now.
    pub now: &'static str,
    /// What the node says of a workload still starting, when that changed (an image pull's
    /// progress); the state may be the same as before.
    pub progress: Option<&'a str>,
}

/// How waiting ended.
pub struct Waited {
    /// The last answer the node gave.
    pub last: Answer<Deployment>,
    /// Whether every workload settled before the timeout.
    pub settled: bool,
}

/// Polls the deployment the node `accepted` until no workload of `version` (or later) is
/// still starting, or `timeout` passes; each change of a workload's state goes to
/// `on_change` as it is seen.
pub fn wait_until_settled(
    node: &NodeClient,
    accepted: Answer<Deployment>,
    version: u32,
    timeout: Duration,
    mut on_change: impl FnMut(StateChange<'_>),
) -> Result<Waited, ClientError> {
    let deadline = Instant::now() + timeout;
    let mut seen: BTreeMap<WorkloadName, &'static str> = accepted
        .value
        .workloads
        .iter()
        .map(|w| (w.name.clone(), state_label(w)))
        .collect();
    // The last progress message shown of each workload.
    let mut told: BTreeMap<WorkloadName, String> = BTreeMap::new();
    let mut current = accepted;
    loop {
        // The node may still answer with the previous version for a moment after an update.
        let settled =
            current.value.version >= version && !current.value.workloads.iter().any(is_pending);
        if settled || Instant::now() >= deadline {
            return Ok(Waited {
                last: current,
                settled,
            });
        }
        std::thread::sleep(POLL_INTERVAL);
        current = refresh(node, &current.value)?;
        for w in &current.value.workloads {
            let now = state_label(w);
            let before = seen.insert(w.name.clone(), now);
            let message = w
                .result
                .as_ref()
                .filter(|_| is_pending(w))
                .map(|r| r.message.as_str())
                .filter(|m| !m.is_empty());
            let progress = match message {
                Some(m) if told.get(&w.name).map(String::as_str) != Some(m) => {
                    told.insert(w.name.clone(), m.to_owned());
                    Some(m)
                }
                _ => None,
            };
            if before != Some(now) || progress.is_some() {
                on_change(StateChange {
                    workload: &w.name,
                    before,
                    now,
                    progress,
                });
            }
        }
    }
}

/// What a machine did while it was watched after starting (see [`watch_settle`]).
pub struct Unsettled {
    /// The machine.
    pub workload: WorkloadName,
    /// What happened, as its result says.
    pub what: String,
}

/// After the workloads settled (`last`), watches the deployment `settle` more for a machine
/// whose process ended at once: gone to `error`, restarted (its result's `restarts` grew),
/// or exited with a code other than 0. Returns the last answer and the first such machine.
pub fn watch_settle(
    node: &NodeClient,
    mut last: Answer<Deployment>,
    settle: Duration,
) -> Result<(Answer<Deployment>, Option<Unsettled>), ClientError> {
    let restarts = |w: &zos_types::Workload| {
        let n = w.result.as_ref().and_then(|r| r.data["restarts"].as_u64());
        n.unwrap_or(0)
    };
    let before: BTreeMap<WorkloadName, u64> = last
        .value
        .workloads
        .iter()
        .map(|w| (w.name.clone(), restarts(w)))
        .collect();
    let deadline = Instant::now() + settle;
    loop {
        for w in &last.value.workloads {
            let Some(r) = w.result.as_ref() else { continue };
            let exited_badly = r.message.starts_with("exited (") && r.message != "exited (0)";
            let restarted = restarts(w) > before.get(&w.name).copied().unwrap_or(0);
            if r.state == zos_types::ResultState::Error || exited_badly || restarted {
                let what = r.message.lines().next().unwrap_or_default().to_owned();
                let workload = w.name.clone();
                return Ok((last, Some(Unsettled { workload, what })));
            }
        }
        if Instant::now() >= deadline {
            return Ok((last, None));
        }
        std::thread::sleep(POLL_INTERVAL);
        last = refresh(node, &last.value)?;
    }
}

/// `d` as the node has it now. A co-owner follows the owner's deployment, not one of its
/// own by that name.
fn refresh(node: &NodeClient, d: &Deployment) -> Result<Answer<Deployment>, ClientError> {
    if d.owner == node.key().public() {
        node.deployment(&d.name)
    } else {
        node.deployment_of(&d.owner, &d.name)
    }
}

//! Pure summaries of a deployment's state, as every client shows them.

use zos_types::{Deployment, ResultState, Workload};

/// A workload's state; `None` before the node has written a result.
pub fn state_of(w: &Workload) -> Option<ResultState> {
    w.result.as_ref().map(|r| r.state)
}

/// Whether the node is still working on a workload (no result yet, or `init`).
pub fn is_pending(w: &Workload) -> bool {
    matches!(state_of(w), None | Some(ResultState::Init))
}

/// A workload's state as printed; no result yet reads as `init`.
pub fn state_label(w: &Workload) -> &'static str {
    state_of(w).map_or("init", state_name)
}

/// A state's name, as in the API.
pub fn state_name(state: ResultState) -> &'static str {
    match state {
        ResultState::Init => "init",
        ResultState::Ok => "ok",
        ResultState::Error => "error",
        ResultState::Paused => "paused",
        ResultState::Deleted => "deleted",
    }
}

/// The state of a whole deployment: `ok` when every workload is, otherwise the worst one
/// (error, then init, then paused, then deleted); `deleted` without workloads (what a node
/// keeps of a deleted deployment: a deployment is never admitted without one).
pub fn summary_state(d: &Deployment) -> &'static str {
    let rank = |state: Option<ResultState>| match state {
        Some(ResultState::Error) => 4,
        None | Some(ResultState::Init) => 3,
        Some(ResultState::Paused) => 2,
        Some(ResultState::Deleted) => 1,
        Some(ResultState::Ok) => 0,
    };
    d.workloads
        .iter()
        .map(state_of)
        .max_by_key(|s| rank(*s))
        .map_or("deleted", |s| s.map_or("init", state_name))
}

/// The workloads that ended in `error`.
pub fn failed(d: &Deployment) -> Vec<&Workload> {
    d.workloads
        .iter()
        .filter(|w| state_of(w) == Some(ResultState::Error))
        .collect()
}

/// The workloads the node is still working on.
pub fn pending(d: &Deployment) -> Vec<&Workload> {
    d.workloads.iter().filter(|w| is_pending(w)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{deployment, with_states, YAML};

    #[test]
    fn ps_shows_the_worst_state() {
        use ResultState::*;
        let d = deployment(YAML);
        let state = |states: &[Option<ResultState>]| summary_state(&with_states(d.clone(), states));
        assert_eq!(state(&[Some(Ok), Some(Ok)]), "ok");
        assert_eq!(state(&[Some(Ok), Some(Paused)]), "paused");
        assert_eq!(state(&[Some(Paused), Some(Init)]), "init");
        assert_eq!(state(&[Some(Ok), None]), "init");
        assert_eq!(state(&[Some(Init), Some(Error)]), "error");
        assert_eq!(state(&[Some(Error), Some(Paused)]), "error");
        let mut empty = d;
        empty.workloads.clear();
        // What a node keeps of a deleted deployment.
        assert_eq!(summary_state(&empty), "deleted");
    }
}

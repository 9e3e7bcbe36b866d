//! The convergence queue: owners take turns, so one owner's many deployments (or one huge
//! one, converged a slice at a time and queued again) wait behind each other, not in front of
//! everyone else's.

use std::collections::{HashMap, VecDeque};
use zos_types::PublicKey;

/// Deployments waiting for a worker, round-robin over their owners.
#[derive(Default)]
pub struct Queue {
    /// Owners with something waiting, in turn order.
    turns: VecDeque<PublicKey>,
    /// Each waiting owner's deployments, first come first served.
    waiting: HashMap<PublicKey, VecDeque<String>>,
}

impl Queue {
    /// Queues `name` of `owner` (once, however often it is asked for); a new owner's turn
    /// comes after those already waiting.
    pub fn push(&mut self, owner: PublicKey, name: String) {
        let names = self.waiting.entry(owner).or_default();
        if names.contains(&name) {
            return;
        }
        if names.is_empty() {
            self.turns.push_back(owner);
        }
        names.push_back(name);
    }

    /// The next owner's first waiting deployment; that owner's turn moves to the back.
    pub fn pop(&mut self) -> Option<(PublicKey, String)> {
        let owner = self.turns.pop_front()?;
        let names = self.waiting.get_mut(&owner)?;
        let name = names.pop_front()?;
        if names.is_empty() {
            self.waiting.remove(&owner);
        } else {
            self.turns.push_back(owner);
        }
        Some((owner, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zos_types::Keypair;

    #[test]
    fn owners_take_turns_and_names_are_queued_once() {
        let (a, b) = (Keypair::generate().public(), Keypair::generate().public());
        let mut q = Queue::default();
        for name in ["a1", "a2", "a3", "a1"] {
            q.push(a, name.into());
        }
        q.push(b, "b1".into());
        let order: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(
            order,
            [
                (a, "a1".to_string()),
                (b, "b1".into()),
                (a, "a2".into()),
                (a, "a3".into())
            ]
        );
        assert!(q.pop().is_none());
    }
}

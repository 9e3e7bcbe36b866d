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
    /// Slices being converged, per owner.
    running: HashMap<PublicKey, usize>,
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

    /// The first waiting deployment of the next owner who has fewer than `per_owner`
    /// slices being converged; that owner's turn moves to the back. `None` when nothing is
    /// waiting, or only owners at their cap are: a worker left idle so is one another
    /// owner's deployment finds free the moment it arrives. Call [`Queue::finished`] once
    /// the slice is done.
    pub fn pop(&mut self, per_owner: usize) -> Option<(PublicKey, String)> {
        let next = self
            .turns
            .iter()
            .position(|o| self.running.get(o).copied().unwrap_or(0) < per_owner)?;
        let owner = self.turns.remove(next)?;
        *self.running.entry(owner).or_default() += 1;
        let names = self.waiting.get_mut(&owner)?;
        let name = names.pop_front()?;
        if names.is_empty() {
            self.waiting.remove(&owner);
        } else {
            self.turns.push_back(owner);
        }
        Some((owner, name))
    }

    /// A slice of `owner`'s, handed out by [`Queue::pop`], is done.
    pub fn finished(&mut self, owner: &PublicKey) {
        if let Some(n) = self.running.get_mut(owner) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.running.remove(owner);
            }
        }
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
        let mut order = Vec::new();
        while let Some((owner, name)) = q.pop(1) {
            q.finished(&owner);
            order.push((owner, name));
        }
        assert_eq!(
            order,
            [
                (a, "a1".to_string()),
                (b, "b1".into()),
                (a, "a2".into()),
                (a, "a3".into())
            ]
        );
        assert!(q.pop(1).is_none());
    }

    #[test]
    fn an_owner_at_its_cap_leaves_a_worker_for_the_next_owner() {
        let (a, b) = (Keypair::generate().public(), Keypair::generate().public());
        let mut q = Queue::default();
        for name in ["a1", "a2", "a3"] {
            q.push(a, name.into());
        }
        assert_eq!(q.pop(1), Some((a, "a1".into())));
        // A has one slice running: its next waits, though a worker is free…
        assert_eq!(q.pop(1), None);
        // …for B, who gets it at once.
        q.push(b, "b1".into());
        assert_eq!(q.pop(1), Some((b, "b1".into())));
        q.finished(&a);
        assert_eq!(q.pop(1), Some((a, "a2".into())));
        // With a cap of 2, A may take a second worker.
        assert_eq!(q.pop(2), Some((a, "a3".into())));
    }
}

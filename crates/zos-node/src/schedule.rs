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

    /// The first waiting deployment of the next owner with nothing being converged (or of
    /// the next owner, if every waiting one has), so that one owner keeps no more than one
    /// worker while another waits; that owner's turn moves to the back. Call
    /// [`Queue::finished`] once its slice is done.
    pub fn pop(&mut self) -> Option<(PublicKey, String)> {
        let idle = self
            .turns
            .iter()
            .position(|o| !self.running.contains_key(o))
            .unwrap_or(0);
        let owner = self.turns.remove(idle)?;
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
        while let Some((owner, name)) = q.pop() {
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
        assert!(q.pop().is_none());
    }

    #[test]
    fn an_owner_being_served_waits_behind_one_that_is_not() {
        let (a, b) = (Keypair::generate().public(), Keypair::generate().public());
        let mut q = Queue::default();
        for name in ["a1", "a2", "a3"] {
            q.push(a, name.into());
        }
        assert_eq!(q.pop(), Some((a, "a1".into())));
        // A's turn came back to the front; B, with nothing running, goes first.
        q.push(b, "b1".into());
        assert_eq!(q.pop(), Some((b, "b1".into())));
        assert_eq!(q.pop(), Some((a, "a2".into())));
        q.finished(&a);
        q.finished(&b);
        q.push(b, "b2".into());
        // A has a slice running still (a2): B's turn again.
        assert_eq!(q.pop(), Some((b, "b2".into())));
    }
}

//! What an image import tells the workload's result while it runs: `pulling layer 2/5, 43%`,
//! then `unpacking the image into the node's store, 80%`, at most once a second (each report rewrites the deployment).

use std::sync::Mutex;
use std::time::{Duration, Instant};
use zos_flist::oci::ImportProgress;
use zos_flist::pack::Progress;

/// How often a report may be sent.
const EVERY: Duration = Duration::from_secs(1);

/// An [`ImportProgress`] that phrases where the import is and hands it to `tell`.
pub struct PullProgress<'a> {
    tell: &'a (dyn Fn(&str) + Sync),
    state: Mutex<State>,
}

/// Where the import is.
#[derive(Default)]
struct State {
    /// Layer being applied (from 1) and how many there are; none once packing.
    layer: Option<(usize, usize)>,
    /// Bytes expected in this phase (the layer's size, the content to pack), when known.
    total: Option<u64>,
    /// Bytes done in this phase.
    done: u64,
    last: Option<Instant>,
}

impl State {
    fn phrase(&self) -> String {
        let pct = self
            .total
            .filter(|t| *t > 0)
            .map(|t| format!(", {}%", (self.done.min(t) * 100) / t))
            .unwrap_or_default();
        match self.layer {
            Some((i, n)) => format!("pulling layer {i}/{n}{pct}"),
            None => format!("unpacking the image into the node's store{pct}"),
        }
    }
}

impl<'a> PullProgress<'a> {
    /// Reports through `tell`.
    pub fn new(tell: &'a (dyn Fn(&str) + Sync)) -> PullProgress<'a> {
        PullProgress {
            tell,
            state: Mutex::default(),
        }
    }

    /// Changes the state with `f`, then tells it if the last report is old enough (or
    /// `now`).
    fn update(&self, now: bool, f: impl FnOnce(&mut State)) {
        let message = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut s);
            if !now && s.last.is_some_and(|t| t.elapsed() < EVERY) {
                return;
            }
            s.last = Some(Instant::now());
            s.phrase()
        };
        (self.tell)(&message);
    }
}

impl Progress for PullProgress<'_> {
    fn bytes(&self, n: u64) {
        self.update(false, |s| s.done += n);
    }
}

impl ImportProgress for PullProgress<'_> {
    fn layer(&self, index: usize, count: usize, _digest: &str, size: Option<u64>) {
        self.update(true, |s| {
            *s = State {
                layer: Some((index, count)),
                total: size,
                last: s.last,
                ..State::default()
            }
        });
    }

    fn packing(&self, bytes: u64) {
        self.update(true, |s| {
            *s = State {
                total: Some(bytes),
                last: s.last,
                ..State::default()
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_name_the_layer_and_its_share_then_packing() {
        let told = Mutex::new(Vec::new());
        let tell = |m: &str| told.lock().unwrap().push(m.to_owned());
        let p = PullProgress::new(&tell);
        p.layer(2, 5, "sha256:ab", Some(200));
        p.bytes(86); // within the second: not told
        p.layer(3, 5, "sha256:cd", None);
        p.packing(1000);
        let told = told.into_inner().unwrap();
        assert_eq!(
            told,
            [
                "pulling layer 2/5, 0%",
                "pulling layer 3/5",
                "unpacking the image into the node's store, 0%"
            ]
        );
        let mut s = State {
            layer: Some((2, 5)),
            total: Some(200),
            done: 86,
            last: None,
        };
        assert_eq!(s.phrase(), "pulling layer 2/5, 43%");
        s.done = 500;
        assert_eq!(s.phrase(), "pulling layer 2/5, 100%");
    }
}

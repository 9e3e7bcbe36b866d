//! Long-lived answers (followed logs, events) that cost the node little each: a per-owner
//! cap on how many are open, and a log follower that is a task on the async runtime, not a
//! thread of the blocking pool. Following a log in a blocking loop used to hold one pool
//! thread per stream: 520 followed logs of one VM filled the pool and every other request
//! waited.

use crate::engine::{ConsoleLog, Engine};
use axum::body::Bytes;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use zos_types::PublicKey;

/// How often an idle followed log is looked at again.
const POLL: Duration = Duration::from_millis(500);
/// How long an answer to "does the log's VM still run" is reused by every follower of it.
const ACTIVE_FOR: Duration = Duration::from_secs(2);

/// How many streams each owner has open, under a cap.
pub struct StreamSlots {
    max_per_owner: usize,
    open: Mutex<HashMap<PublicKey, usize>>,
}

/// One open stream of one owner; the count goes down when it is dropped.
pub struct StreamSlot {
    slots: Arc<StreamSlots>,
    owner: PublicKey,
}

impl StreamSlots {
    /// A cap of `max_per_owner` open streams for each owner.
    pub fn new(max_per_owner: usize) -> Arc<StreamSlots> {
        Arc::new(StreamSlots {
            max_per_owner,
            open: Mutex::default(),
        })
    }

    /// A slot for one more stream of `owner`, or why there is none.
    pub fn take(self: &Arc<Self>, owner: &PublicKey) -> Result<StreamSlot, String> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(*owner).or_default();
        if *n >= self.max_per_owner {
            return Err(format!(
                "you already have {n} streams open (followed logs and events), the most this \
                 node allows one owner (max_streams_per_owner = {}): close one and try again",
                self.max_per_owner
            ));
        }
        *n += 1;
        Ok(StreamSlot {
            slots: self.clone(),
            owner: *owner,
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.owner) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.owner);
            }
        }
    }
}

/// Whether each followed log's writer still runs, asked of the VMM once per [`ACTIVE_FOR`]
/// however many follow it (asking takes the VM's lock).
#[derive(Default)]
pub struct ActiveWriters {
    answers: Mutex<HashMap<PathBuf, Arc<Answer>>>,
}

/// The last answer for one log, and when it was had; its lock is held while asking.
type Answer = tokio::sync::Mutex<Option<(Instant, bool)>>;

impl ActiveWriters {
    async fn active(&self, engine: &Arc<Engine>, log: &Arc<ConsoleLog>) -> bool {
        let entry = {
            let mut answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
            // Entries of logs nobody follows any more go with the next new one.
            answers.retain(|_, a| Arc::strong_count(a) > 1);
            answers.entry(log.path.clone()).or_default().clone()
        };
        // One asks while the others wait for its answer.
        let mut answer = entry.lock().await;
        if let Some((at, active)) = *answer {
            if at.elapsed() < ACTIVE_FOR {
                return active;
            }
        }
        let (engine, log) = (engine.clone(), log.clone());
        let active = tokio::task::spawn_blocking(move || engine.console_active(&log))
            .await
            .unwrap_or(false);
        *answer = Some((Instant::now(), active));
        active
    }
}

/// Sends `log` to `tx` as it grows: its whole content, then (when `follow`) what is appended,
/// until its writer is down and nothing new came, the receiver is gone, or the node stops.
/// Each read is a short job on the blocking pool; between reads the task only waits.
pub async fn follow_log(
    engine: Arc<Engine>,
    writers: Arc<ActiveWriters>,
    log: ConsoleLog,
    follow: bool,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    mut stopping: watch::Receiver<bool>,
    _slot: Option<StreamSlot>,
) {
    let log = Arc::new(log);
    let mut follower = Some(zos_vmm::console::Follower::new(&log.path));
    loop {
        let Some(mut f) = follower.take() else {
            return;
        };
        let read = tokio::task::spawn_blocking(move || {
            let chunk = f.read_new();
            (f, chunk)
        })
        .await;
        let chunk = match read {
            Ok((f, chunk)) => {
                follower = Some(f);
                chunk
            }
            Err(e) => Err(std::io::Error::other(format!("reading the log: {e}"))),
        };
        match chunk {
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
            Ok(chunk) if !chunk.is_empty() => {
                if tx.send(Ok(Bytes::from(chunk))).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(_) => {}
        }
        if !follow || *stopping.borrow() || !writers.active(&engine, &log).await {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            () = tx.closed() => return,
            _ = stopping.wait_for(|stop| *stop) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_owner_has_their_own_cap_and_a_closed_stream_frees_its_slot() {
        let slots = StreamSlots::new(2);
        let (a, b) = (
            zos_types::Keypair::generate().public(),
            zos_types::Keypair::generate().public(),
        );
        let first = slots.take(&a).unwrap();
        let _second = slots.take(&a).unwrap();
        let err = slots.take(&a).err().unwrap();
        assert!(err.contains("max_streams_per_owner = 2"), "{err}");
        let _other = slots.take(&b).unwrap();
        drop(first);
        let _third = slots.take(&a).unwrap();
        assert!(slots.take(&a).is_err());
    }
}

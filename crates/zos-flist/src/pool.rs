//! A small fixed pool of worker threads fed through a bounded queue. The bound is what keeps
//! pack and unpack memory flat however large the tree: the walker can only run a few jobs
//! ahead of the workers.

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use std::sync::atomic::{AtomicBool, Ordering};

/// The walker's side of the pool: submit jobs, collect results.
pub(crate) struct Pool<J, R> {
    jobs: Sender<J>,
    results: Receiver<R>,
}

impl<J, R> Pool<J, R> {
    /// Queues a job, waiting while the queue is full.
    pub(crate) fn submit(&self, job: J) {
        // Workers only stop after the sender is dropped, so the queue cannot be closed here.
        let _ = self.jobs.send(job);
    }

    /// A result if one is ready.
    pub(crate) fn try_result(&self) -> Option<R> {
        self.results.try_recv().ok()
    }

    /// Waits for the next result.
    pub(crate) fn result(&self) -> Option<R> {
        self.results.recv().ok()
    }
}

/// Blocks per job when pack or unpack splits a file: big enough to amortise the hand-off,
/// small enough that one large file keeps every core busy.
pub(crate) const SEGMENT_BLOCKS: usize = 16;

/// Number of workers: the cores, doubled so that store round-trips overlap with hashing.
pub(crate) fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()) * 2
}

/// Runs `drive` with a pool of `workers` threads applying `work` to each submitted job.
/// `drive` must collect every result it needs before returning; when it fails, queued jobs
/// are skipped and the error is returned once the workers have stopped.
pub(crate) fn with_workers<J, R, T, E>(
    workers: usize,
    work: impl Fn(J) -> R + Sync,
    drive: impl FnOnce(&Pool<J, R>) -> Result<T, E>,
) -> Result<T, E>
where
    J: Send,
    R: Send,
{
    let workers = workers.max(1);
    let (job_tx, job_rx) = bounded::<J>(workers * 2);
    let (result_tx, result_rx) = unbounded::<R>();
    let pool = Pool {
        jobs: job_tx,
        results: result_rx,
    };
    let abort = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let (jobs, results, work, abort) = (job_rx.clone(), result_tx.clone(), &work, &abort);
            scope.spawn(move || {
                for job in jobs {
                    if abort.load(Ordering::Relaxed) {
                        continue;
                    }
                    if results.send(work(job)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(result_tx);
        let out = drive(&pool);
        if out.is_err() {
            abort.store(true, Ordering::Relaxed);
        }
        let Pool { jobs, results } = pool;
        drop(jobs);
        // Keep draining so no worker blocks on a full result channel while exiting.
        drop(results);
        out
    })
}

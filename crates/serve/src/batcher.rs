//! The inference thread: one thread owns the model and runs queued images as batches.
//!
//! Handlers queue [`Job`]s of one preprocessed `[3, S, S]` f32 image each. The thread takes
//! the first queued job, waits up to the batch window for more (only while other admitted
//! requests have not reached the queue yet, so a lone request does not wait), drops jobs
//! whose caller has given up, and runs predictions and explanations as one `[b, 3, S, S]`
//! batch each, of at most `max_batch`. Counters for `/healthz` are kept in [`Stats`].

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use lesion::gradcam::Cam;
use lesion::predict::{Prediction, Predictor};
use tokio::sync::oneshot;

use crate::Batching;

/// What a queued job asks for.
pub(crate) enum Work {
    Predict,
    Explain,
}

/// What a job answers: a prediction for [`Work::Predict`], a CAM for [`Work::Explain`].
pub(crate) enum Output {
    Prediction(Prediction),
    Cam(Cam),
}

/// One queued image and where its answer goes.
pub(crate) struct Job {
    /// One preprocessed image, `[3, S, S]` f32.
    pub(crate) input: Vec<f32>,
    pub(crate) work: Work,
    pub(crate) reply: oneshot::Sender<Result<Output, String>>,
}

/// Counters shown by `/healthz`.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) requests: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) images: AtomicU64,
    pub(crate) largest_batch: AtomicUsize,
}

/// Starts the inference thread and returns its queue. The thread ends once every sender of
/// the queue is gone.
pub(crate) fn spawn(
    predictor: Arc<Predictor>,
    batching: Batching,
    tta: bool,
    active: Arc<AtomicUsize>,
    stats: Arc<Stats>,
) -> std::io::Result<mpsc::Sender<Job>> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("lesion-inference".into())
        .spawn(move || inference_loop(&predictor, &rx, &batching, tta, &active, &stats))?;
    Ok(tx)
}

fn inference_loop(
    predictor: &Predictor,
    rx: &mpsc::Receiver<Job>,
    batching: &Batching,
    tta: bool,
    active: &AtomicUsize,
    stats: &Stats,
) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        let deadline = Instant::now() + batching.window;
        while jobs.len() < batching.max_batch {
            // Take whatever is already queued; wait only if more requests are on their way.
            match rx.try_recv() {
                Ok(job) => {
                    jobs.push(job);
                    continue;
                }
                Err(mpsc::TryRecvError::Disconnected) => break,
                Err(mpsc::TryRecvError::Empty) => {}
            }
            let now = Instant::now();
            if now >= deadline || active.load(Ordering::Acquire) <= jobs.len() {
                break;
            }
            match rx.recv_timeout(deadline - now) {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        // Callers that gave up (timed out) need no answer.
        jobs.retain(|j| !j.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.images.fetch_add(jobs.len() as u64, Ordering::Relaxed);
        stats.largest_batch.fetch_max(jobs.len(), Ordering::Relaxed);
        let (predict, explain): (Vec<Job>, Vec<Job>) = jobs
            .into_iter()
            .partition(|j| matches!(j.work, Work::Predict));
        run_jobs(predict, |x| {
            predictor
                .predict_preprocessed(x, tta)
                .map(|v| v.into_iter().map(Output::Prediction).collect())
                .map_err(|e| e.to_string())
        });
        run_jobs(explain, |x| {
            predictor
                .cams_preprocessed(x, None)
                .map(|v| v.into_iter().map(Output::Cam).collect())
                .map_err(|e| e.to_string())
        });
    }
}

fn run_jobs(jobs: Vec<Job>, f: impl FnOnce(&[Vec<f32>]) -> Result<Vec<Output>, String>) {
    if jobs.is_empty() {
        return;
    }
    let (inputs, replies): (Vec<Vec<f32>>, Vec<_>) =
        jobs.into_iter().map(|j| (j.input, j.reply)).unzip();
    match f(&inputs) {
        Ok(outputs) => {
            for (reply, out) in replies.into_iter().zip(outputs) {
                let _ = reply.send(Ok(out));
            }
        }
        Err(msg) => {
            for reply in replies {
                let _ = reply.send(Err(msg.clone()));
            }
        }
    }
}

//! `lesion-serve`: a local HTTP service for one trained run, and a web page to try it.
//!
//! Endpoints (JSON unless noted):
//! - `POST /v1/predict`: an image as `multipart/form-data` (exactly one part, named `image`;
//!   its file name, if any, is not used) or as the raw body (`Content-Type: image/*` or
//!   `application/octet-stream`) →
//!   for two classes `{probability, logit, malignant, label, probabilities, threshold, tta,
//!   model_id, timing_ms}` (`probability`: malignant; `probabilities`: an object class →
//!   probability, in class order); for more classes `{label, top_class, top_probability,
//!   logits, probabilities, tta, model_id, timing_ms}` plus, where the run has malignant
//!   classes, their summed `probability`, the decision `malignant` and the `threshold` (the
//!   `label` is then the most probable class of the decided side); both with `warnings`
//!   (a list of sentences) when the photo differs markedly from the run's training images
//!   in size, aspect ratio or colour (`lesion::drift`; never for a run without
//!   `input_profile.json`), which the page shows above the result;
//! - `POST /v1/explain`: the same input → `image/png`, the Grad-CAM heatmap of the answer's
//!   class (two classes: the malignant logit) over the photo; the prediction is in the
//!   `x-lesion-*` headers (with more classes `x-lesion-explained-class` names the class;
//!   `x-lesion-warnings` joins the drift warnings with `; `);
//! - `GET /v1/model`: the run's configuration, threshold and evaluation summary
//!   (`<run>/eval-test/metrics.json`, when present), and the service's limits;
//! - `GET /healthz`: liveness and batching counters;
//! - `GET /`: a self-contained page (no external resources) to drop a photo on.
//!
//! Errors are `{"error": {"status", "code", "message"}}` with a 4xx status naming the
//! problem: `unsupported_media_type` (415, wrong `Content-Type`), `not_an_image` (415),
//! `unsupported_image` (415), `corrupt_image` (422, truncated or damaged),
//! `too_many_pixels` (413), `payload_too_large` (413, body over the limit), `empty_body`
//! (400), `missing_image` (400, a form without a field `image`), `unexpected_field` (400, a
//! form with any other part, or a second `image`; the message names it), `bad_multipart`
//! (400), `bad_body` (400, the body could not be read); `busy` (503) when the concurrency
//! cap is reached and `timeout` (503) past the request time limit. No other 5xx is expected:
//! `internal` (500) and `unavailable` (503) mean the inference thread failed or stopped.
//!
//! Connections: at most `max_connections` are open at once (further ones wait, unaccepted,
//! until one closes), and one that takes longer than `header_read_timeout` to send a
//! request's headers, or sits idle that long between requests, is closed without an answer.
//!
//! Inference: handlers decode and preprocess on Tokio's blocking pool (at most twice the
//! core count at once, which bounds decoded-image memory), then queue `[3, S, S]` f32 inputs
//! for one dedicated inference thread. That thread takes the first queued job, waits up to
//! the batch window for more (only while other requests are in flight, so a lone request
//! does not wait), and runs them as one `[b, 3, S, S]` batch of at most `max_batch`.
//!
//! Privacy: uploaded bytes live only in memory for the duration of the request; nothing is
//! written to disk and nothing about an image is logged.
//!
//! Files: `lib.rs` the options, [`Server`] (a loaded run and its inference thread) and
//! [`Running`] (a server in a background thread); `handlers.rs` the routes and handlers;
//! `upload.rs` reading an uploaded image from the request; `error.rs` [`ApiError`];
//! `batcher.rs` the inference thread that batches queued images.

mod batcher;
mod error;
mod handlers;
mod upload;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use lesion::predict::Predictor;
use serde_json::Value;
use tokio::sync::{oneshot, watch, Semaphore};

use batcher::{Job, Stats};
use handlers::model_info;

pub use error::ApiError;
pub use handlers::router;

/// The page served at `/`.
pub const PAGE: &str = include_str!("page.html");
/// Statement shown on the page and returned with every prediction.
pub const DISCLAIMER: &str =
    "Research tool, not a diagnosis: do not use it to make clinical decisions.";

/// Resource caps.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Largest request body (default 10 MiB).
    pub max_body_bytes: usize,
    /// Largest decoded image, width x height (default 25 megapixels).
    pub max_pixels: u64,
    /// Image requests handled at once; more get `503 busy` (default 32).
    pub max_concurrency: usize,
    /// Longest time a request may take; past it `503 timeout` (default 30 s).
    pub request_timeout: Duration,
    /// Open connections at once (default 256); further ones wait, unaccepted, until one
    /// closes.
    pub max_connections: usize,
    /// Longest time a connection may take to send a request's headers, counted from when the
    /// connection opens or its previous answer is sent, so it also closes idle kept-alive
    /// connections (default 10 s). Past it the connection is closed without an answer.
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 10 << 20,
            max_pixels: 25_000_000,
            max_concurrency: 32,
            request_timeout: Duration::from_secs(30),
            max_connections: 256,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Most connections `--max-connections` may allow (each may hold a file descriptor and a
/// task).
pub const MAX_CONNECTIONS: usize = 1 << 20;

/// How requests from concurrent callers are grouped into batches.
#[derive(Debug, Clone, PartialEq)]
pub struct Batching {
    /// How long the first request of a batch may wait for company (default 5 ms).
    pub window: Duration,
    /// Largest batch (default 32).
    pub max_batch: usize,
}

impl Default for Batching {
    fn default() -> Self {
        Self {
            window: Duration::from_millis(5),
            max_batch: 32,
        }
    }
}

/// Everything `lesion-serve` is configured with.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeOptions {
    pub run: PathBuf,
    /// Address to bind (default `127.0.0.1:8080`: this machine only).
    pub addr: SocketAddr,
    /// auto, cpu, cuda, cuda:N or metal.
    pub device: String,
    /// Decision threshold instead of the run's.
    pub threshold: Option<f64>,
    /// Test-time augmentation; `None` follows the run's threshold.
    pub tta: Option<bool>,
    pub limits: Limits,
    pub batching: Batching,
}

impl ServeOptions {
    pub fn new(run: impl Into<PathBuf>) -> Self {
        Self {
            run: run.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            device: "auto".into(),
            threshold: None,
            tta: None,
            limits: Limits::default(),
            batching: Batching::default(),
        }
    }

    /// Checks every limit, naming the command-line option of the first one out of range.
    // The library's one error type, as every stage returns it.
    #[allow(clippy::result_large_err)]
    pub fn validate(&self) -> lesion::Result<()> {
        let bad = |m: String| Err(lesion::Error::InvalidOption(m));
        let l = &self.limits;
        if l.max_body_bytes == 0 {
            return bad("--max-body-mib must allow at least one byte".into());
        }
        if l.max_pixels == 0 {
            return bad("--max-pixels must be at least 1".into());
        }
        if l.max_concurrency == 0 {
            return bad("--max-concurrency must be at least 1".into());
        }
        if l.request_timeout.is_zero() {
            return bad("--timeout must be more than 0 seconds".into());
        }
        if !(1..=MAX_CONNECTIONS).contains(&l.max_connections) {
            return bad(format!(
                "--max-connections {} is outside 1..={MAX_CONNECTIONS}",
                l.max_connections
            ));
        }
        if l.header_read_timeout.is_zero() {
            return bad("--header-timeout-secs must be more than 0 seconds".into());
        }
        if self.batching.max_batch == 0 {
            return bad("--max-batch must be at least 1".into());
        }
        if let Some(t) = self.threshold.filter(|t| !(0.0..=1.0).contains(t)) {
            return bad(format!(
                "--threshold must be a probability in [0, 1], got {t}"
            ));
        }
        Ok(())
    }
}

struct Inner {
    predictor: Arc<Predictor>,
    queue: mpsc::Sender<Job>,
    tta: bool,
    limits: Limits,
    permits: Arc<Semaphore>,
    decoders: Semaphore,
    /// Image requests admitted and not yet answered; the batcher waits only while some are
    /// not in its batch yet.
    active: Arc<AtomicUsize>,
    stats: Arc<Stats>,
    model: Value,
    started: Instant,
}

/// Shared handler state.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

/// A loaded run with its inference thread; [`Server::router`] gives the HTTP routes.
///
/// The inference thread ends by itself once the server and every router made from it are
/// gone (its queue then has no sender left).
pub struct Server {
    state: AppState,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("model_id", &self.state.0.predictor.model_id())
            .finish()
    }
}

impl Server {
    /// Loads the run of `opts` (see [`Predictor::load`]) and starts the inference thread.
    // The library's one error type, as every stage returns it; loading happens once.
    #[allow(clippy::result_large_err)]
    pub fn load(opts: &ServeOptions) -> lesion::Result<Self> {
        opts.validate()?;
        let device = lesion::device::parse_device(&opts.device)?;
        let predictor = Predictor::load(&opts.run, &device, opts.threshold)?;
        Self::new(predictor, opts)
    }

    /// Serves an already loaded predictor.
    #[allow(clippy::result_large_err)]
    pub fn new(mut predictor: Predictor, opts: &ServeOptions) -> lesion::Result<Self> {
        opts.validate()?;
        predictor.set_max_pixels(opts.limits.max_pixels);
        predictor.set_batch_size(opts.batching.max_batch);
        let tta = opts.tta.unwrap_or_else(|| predictor.default_tta());
        let model = model_info(&predictor, tta, &opts.limits, &opts.batching);
        let predictor = Arc::new(predictor);
        let active = Arc::new(AtomicUsize::new(0));
        let stats = Arc::new(Stats::default());
        let queue = batcher::spawn(
            predictor.clone(),
            opts.batching.clone(),
            tta,
            active.clone(),
            stats.clone(),
        )
        .map_err(|e| lesion::Error::io("<inference thread>", e))?;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(Self {
            state: AppState(Arc::new(Inner {
                predictor,
                queue,
                tta,
                limits: opts.limits.clone(),
                permits: Arc::new(Semaphore::new(opts.limits.max_concurrency)),
                decoders: Semaphore::new(2 * cores),
                active,
                stats,
                model,
                started: Instant::now(),
            })),
        })
    }

    pub fn predictor(&self) -> &Predictor {
        &self.state.0.predictor
    }

    pub fn limits(&self) -> &Limits {
        &self.state.0.limits
    }

    /// The routes, with the body limit applied.
    pub fn router(&self) -> Router {
        router(self.state.clone())
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then lets the requests in
/// progress finish.
///
/// At most `limits.max_connections` connections are open at once: the next is accepted only
/// when one closes (until then it waits in the listen queue, its request unanswered). A
/// connection that has not sent a request's complete headers within
/// `limits.header_read_timeout` (since it opened, or since its previous answer) is closed,
/// so stalled or idle clients cannot hold those slots.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: &Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let cap = limits.max_connections.clamp(1, MAX_CONNECTIONS);
    let slots = Arc::new(Semaphore::new(cap));
    let (closing, closing_seen) = watch::channel(());
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let service = TowerToHyperService::new(router);
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) if is_connection_error(&e) => continue,
                // Out of file descriptors and the like: wait rather than spin.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = http.serve_connection(TokioIo::new(stream), service.clone());
        let mut closing_seen = closing_seen.clone();
        tokio::spawn(async move {
            let _slot = slot;
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = closing_seen.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(listener);
    let _ = closing.send(());
    // Every connection holds a slot until it ends.
    let _all = slots.acquire_many(cap as u32).await;
    Ok(())
}

/// Errors of one connection that `accept` reports, after which the listener still works.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// A server running on its own Tokio runtime in a background thread (for tests, the load
/// test and embedding); it stops when dropped.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl Running {
    /// Binds `addr` (port 0 picks a free one) and serves `server` in the background.
    pub fn start(server: Server, addr: SocketAddr) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("lesion-serve".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    let router = server.router();
                    let limits = server.state.0.limits.clone();
                    let result = serve(listener, router, &limits, async {
                        let _ = stopped.await;
                    })
                    .await;
                    drop(server);
                    result
                })
            })?;
        Ok(Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server and waits for it.
    pub fn stop(mut self) -> std::io::Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> std::io::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("server thread panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

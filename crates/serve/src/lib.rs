//! `lesion-serve`: a local HTTP service for one trained run, and a web page to try it.
//!
//! Endpoints (JSON unless noted):
//! - `POST /v1/predict`: an image as `multipart/form-data` (field `image`, or any file field)
//!   or as the raw body (`Content-Type: image/*` or `application/octet-stream`) →
//!   `{probability, logit, malignant, label, threshold, tta, model_id, timing_ms}`;
//! - `POST /v1/explain`: the same input → `image/png`, the Grad-CAM heatmap of the malignant
//!   logit over the photo; the prediction is in the `x-lesion-*` headers;
//! - `GET /v1/model`: the run's configuration, threshold and evaluation summary
//!   (`<run>/eval-test/metrics.json`, when present), and the service's limits;
//! - `GET /healthz`: liveness and batching counters;
//! - `GET /`: a self-contained page (no external resources) to drop a photo on.
//!
//! Errors are `{"error": {"status", "code", "message"}}` with a 4xx status naming the
//! problem: `unsupported_media_type` (415, wrong `Content-Type`), `not_an_image` (415),
//! `unsupported_image` (415), `corrupt_image` (422, truncated or damaged),
//! `too_many_pixels` (413), `payload_too_large` (413, body over the limit), `empty_body`
//! (400), `missing_image` (400, a form without a file), `bad_multipart` (400); `busy` (503)
//! when the concurrency cap is reached and `timeout` (503) past the request time limit.
//!
//! Inference: handlers decode and preprocess on Tokio's blocking pool (at most twice the
//! core count at once, which bounds decoded-image memory), then queue `[3, S, S]` f32 inputs
//! for one dedicated inference thread. That thread takes the first queued job, waits up to
//! the batch window for more (only while other requests are in flight, so a lone request
//! does not wait), and runs them as one `[b, 3, S, S]` batch of at most `max_batch`.
//!
//! Privacy: uploaded bytes live only in memory for the duration of the request; nothing is
//! written to disk and nothing about an image is logged.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::BodyExt as _;
use image::RgbImage;
use lesion::gradcam::{self, Cam};
use lesion::predict::{Prediction, Predictor};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{oneshot, Semaphore};

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
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 10 << 20,
            max_pixels: 25_000_000,
            max_concurrency: 32,
            request_timeout: Duration::from_secs(30),
        }
    }
}

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
}

/// What a queued job asks for.
enum Work {
    Predict,
    Explain,
}

enum Output {
    Prediction(Prediction),
    Cam(Cam),
}

struct Job {
    input: Vec<f32>,
    work: Work,
    reply: oneshot::Sender<Result<Output, String>>,
}

/// Counters shown by `/healthz`.
#[derive(Debug, Default)]
struct Stats {
    requests: AtomicU64,
    batches: AtomicU64,
    images: AtomicU64,
    largest_batch: AtomicUsize,
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
        let device = lesion::device::parse_device(&opts.device)?;
        let predictor = Predictor::load(&opts.run, &device, opts.threshold)?;
        Self::new(predictor, opts)
    }

    /// Serves an already loaded predictor.
    #[allow(clippy::result_large_err)]
    pub fn new(mut predictor: Predictor, opts: &ServeOptions) -> lesion::Result<Self> {
        if opts.batching.max_batch == 0 || opts.limits.max_concurrency == 0 {
            return Err(lesion::Error::InvalidOption(
                "--max-batch and --max-concurrency must be at least 1".into(),
            ));
        }
        predictor.set_max_pixels(opts.limits.max_pixels);
        predictor.set_batch_size(opts.batching.max_batch);
        let tta = opts.tta.unwrap_or_else(|| predictor.default_tta());
        let model = model_info(&predictor, tta, &opts.limits, &opts.batching);
        let predictor = Arc::new(predictor);
        let (tx, rx) = mpsc::channel();
        let active = Arc::new(AtomicUsize::new(0));
        let stats = Arc::new(Stats::default());
        {
            let (p, a, s, b) = (
                predictor.clone(),
                active.clone(),
                stats.clone(),
                opts.batching.clone(),
            );
            std::thread::Builder::new()
                .name("lesion-inference".into())
                .spawn(move || inference_loop(&p, &rx, &b, tta, &a, &s))
                .map_err(|e| lesion::Error::io("<inference thread>", e))?;
        }
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(Self {
            state: AppState(Arc::new(Inner {
                predictor,
                queue: tx,
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

    /// The routes, with the body limit applied.
    pub fn router(&self) -> Router {
        router(self.state.clone())
    }
}

/// The HTTP routes over `state`.
pub fn router(state: AppState) -> Router {
    let max_body = state.0.limits.max_body_bytes;
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(healthz))
        .route("/v1/model", get(model))
        .route("/v1/predict", post(predict))
        .route("/v1/explain", post(explain))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
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
                    let result = serve(listener, router, async {
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

// ------------------------------------------------------------------------------------
// Inference thread.

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
                .cams_preprocessed(x)
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

// ------------------------------------------------------------------------------------
// Errors.

/// A JSON error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// Maps a decoding failure to the status and code that name it.
    fn from_image(err: &lesion::Error) -> Self {
        let reason = match err {
            lesion::Error::BadImage { reason, .. } => reason.clone(),
            other => other.to_string(),
        };
        let (status, code) = if reason.starts_with("empty") {
            (StatusCode::BAD_REQUEST, "empty_body")
        } else if reason.starts_with("not an image") {
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "not_an_image")
        } else if reason.starts_with("unsupported") {
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_image")
        } else if reason.starts_with("too large") {
            (StatusCode::PAYLOAD_TOO_LARGE, "too_many_pixels")
        } else {
            (StatusCode::UNPROCESSABLE_ENTITY, "corrupt_image")
        };
        Self::new(status, code, reason)
    }

    fn body_limit(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the request body is larger than the limit of {} bytes ({:.1} MiB)",
                limit,
                limit as f64 / 1048576.0
            ),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "status": self.status.as_u16(),
            "code": self.code,
            "message": self.message,
        }});
        let mut res = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        res
    }
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see GET / , GET /healthz, GET /v1/model, POST /v1/predict, \
         POST /v1/explain",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this endpoint (predict and explain take POST, the others GET)",
    )
}

// ------------------------------------------------------------------------------------
// Handlers.

async fn index() -> Response {
    let mut res = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response();
    res.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; form-action 'none'",
        ),
    );
    res
}

async fn healthz(State(s): State<AppState>) -> Json<Value> {
    let st = &s.0.stats;
    let batches = st.batches.load(Ordering::Relaxed);
    let images = st.images.load(Ordering::Relaxed);
    Json(json!({
        "status": "ok",
        "model_id": s.0.predictor.model_id(),
        "uptime_s": s.0.started.elapsed().as_secs_f64(),
        "requests": st.requests.load(Ordering::Relaxed),
        "in_flight": s.0.active.load(Ordering::Relaxed),
        "batches": batches,
        "images": images,
        "mean_batch": if batches == 0 { 0.0 } else { images as f64 / batches as f64 },
        "largest_batch": st.largest_batch.load(Ordering::Relaxed),
    }))
}

async fn model(State(s): State<AppState>) -> Json<Value> {
    Json(s.0.model.clone())
}

/// What `/v1/model` returns; built once at start-up.
fn model_info(p: &Predictor, tta: bool, limits: &Limits, batching: &Batching) -> Value {
    let eval_path = p
        .run_dir()
        .join("eval-test")
        .join(lesion::eval::METRICS_FILE);
    let eval = std::fs::read(&eval_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .map(|m| {
            let pick = |k: &str| m.get(k).cloned().unwrap_or(Value::Null);
            json!({
                "split": pick("split"),
                "tta": pick("tta"),
                "checkpoint_sha256": pick("checkpoint_sha256"),
                "matches_checkpoint": m.get("checkpoint_sha256").and_then(Value::as_str)
                    == Some(p.checkpoint_sha256()),
                "at_default_threshold": pick("at_default_threshold"),
                "at_chosen_threshold": pick("at_chosen_threshold"),
                "bootstrap": pick("bootstrap"),
                "warnings": pick("warnings"),
            })
        });
    json!({
        "model_id": p.model_id(),
        "run_dir": p.run_dir(),
        "checkpoint_sha256": p.checkpoint_sha256(),
        "class_names": p.class_names(),
        "image_size": p.image_size(),
        "resize": p.resize_policy(),
        "threshold": {
            "value": p.threshold(),
            "description": p.describe_threshold(),
            "overridden": p.threshold_overridden(),
            "run": p.run_threshold(),
        },
        "tta": tta,
        "config": p.config(),
        "eval": eval,
        "warnings": p.warnings(),
        "limits": {
            "max_body_bytes": limits.max_body_bytes,
            "max_pixels": limits.max_pixels,
            "max_concurrency": limits.max_concurrency,
            "request_timeout_s": limits.request_timeout.as_secs_f64(),
            "batch_window_ms": batching.window.as_secs_f64() * 1e3,
            "max_batch": batching.max_batch,
        },
        "disclaimer": DISCLAIMER,
    })
}

/// Milliseconds since `t`, rounded to microseconds.
fn ms(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 1e6).round() / 1e3
}

#[derive(Serialize)]
struct PredictResponse {
    probability: f64,
    logit: f32,
    malignant: bool,
    label: String,
    threshold: f64,
    tta: bool,
    model_id: String,
    timing_ms: Timing,
    disclaimer: &'static str,
}

#[derive(Serialize)]
struct Timing {
    /// Reading the body, decoding and preprocessing.
    decode: f64,
    /// Waiting for a batch and the forward pass.
    inference: f64,
    total: f64,
}

async fn predict(State(s): State<AppState>, req: Request) -> Response {
    let state = s.clone();
    guarded(&s, async move {
        let start = Instant::now();
        let bytes = read_image(&state, req).await?;
        let (input, _) = state.decode(bytes, false).await?;
        let decoded = ms(start);
        let t = Instant::now();
        let pred = match state.submit(input, Work::Predict).await? {
            Output::Prediction(p) => p,
            Output::Cam(_) => unreachable!("predict jobs return predictions"),
        };
        let inference = ms(t);
        Ok(Json(PredictResponse {
            probability: pred.probability,
            logit: pred.logit,
            malignant: pred.malignant,
            label: pred.label,
            threshold: state.0.predictor.threshold(),
            tta: state.0.tta,
            model_id: state.0.predictor.model_id().to_string(),
            timing_ms: Timing {
                decode: decoded,
                inference,
                total: ms(start),
            },
            disclaimer: DISCLAIMER,
        })
        .into_response())
    })
    .await
}

async fn explain(State(s): State<AppState>, req: Request) -> Response {
    let state = s.clone();
    guarded(&s, async move {
        let start = Instant::now();
        let bytes = read_image(&state, req).await?;
        let (input, image) = state.decode(bytes, true).await?;
        let cam = match state.submit(input, Work::Explain).await? {
            Output::Cam(c) => c,
            Output::Prediction(_) => unreachable!("explain jobs return CAMs"),
        };
        let image = image.expect("kept for explain");
        let p = state.0.predictor.clone();
        let (png, pred) = tokio::task::spawn_blocking(move || {
            let e = p.explanation(&image, cam);
            gradcam::encode_png(&e.overlay)
                .map(|png| (png, e.prediction))
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| internal(format!("rendering failed: {e}")))?
        .map_err(internal)?;
        let mut headers = HeaderMap::new();
        let mut put = |k: &'static str, v: String| {
            if let Ok(v) = HeaderValue::from_str(&v) {
                headers.insert(k, v);
            }
        };
        put("content-type", "image/png".into());
        put("cache-control", "no-store".into());
        put("x-lesion-probability", format!("{:.6}", pred.probability));
        put("x-lesion-label", pred.label.clone());
        put("x-lesion-malignant", pred.malignant.to_string());
        put(
            "x-lesion-threshold",
            state.0.predictor.threshold().to_string(),
        );
        put("x-lesion-model", state.0.predictor.model_id().to_string());
        put("x-lesion-time-ms", ms(start).to_string());
        Ok((headers, png).into_response())
    })
    .await
}

fn internal(msg: String) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", msg)
}

/// Admission control and the time limit around an image request.
async fn guarded(s: &AppState, work: impl Future<Output = Result<Response, ApiError>>) -> Response {
    s.0.stats.requests.fetch_add(1, Ordering::Relaxed);
    let Ok(_permit) = s.0.permits.clone().try_acquire_owned() else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            format!(
                "the server is handling its maximum of {} requests; retry shortly",
                s.0.limits.max_concurrency
            ),
        )
        .into_response();
    };
    s.0.active.fetch_add(1, Ordering::AcqRel);
    let _active = ActiveGuard(s.0.active.clone());
    let limit = s.0.limits.request_timeout;
    match tokio::time::timeout(limit, work).await {
        Ok(Ok(res)) => res,
        Ok(Err(e)) => e.into_response(),
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!("the request took longer than {:.1} s", limit.as_secs_f64()),
        )
        .into_response(),
    }
}

struct ActiveGuard(Arc<AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Most bytes read and thrown away after a body has passed the limit, and for how long:
/// a client that is still sending when the answer comes gets a broken pipe instead of the
/// 413, so a moderately oversized upload is drained first (a huge one is cut off).
const DRAIN_MAX_BYTES: usize = 64 << 20;
const DRAIN_MAX_TIME: Duration = Duration::from_secs(5);

/// Reads a body of at most `limit` bytes; past it, drains what follows (bounded) and
/// answers 413.
async fn read_body(body: Body, limit: usize, declared: Option<u64>) -> Result<Bytes, ApiError> {
    let mut body = body;
    let mut buf = Vec::with_capacity(declared.map_or(0, |n| n.min(limit as u64) as usize));
    let mut over = declared.is_some_and(|n| n > limit as u64);
    let mut seen = 0usize;
    let started = Instant::now();
    loop {
        let frame = if over {
            match tokio::time::timeout_at((started + DRAIN_MAX_TIME).into(), body.frame()).await {
                Ok(f) => f,
                Err(_) => break,
            }
        } else {
            body.frame().await
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("the request body could not be read: {e}"),
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen += data.len();
        if over {
            if seen > DRAIN_MAX_BYTES {
                break;
            }
            continue;
        }
        if seen > limit {
            over = true;
            buf = Vec::new();
            continue;
        }
        buf.extend_from_slice(&data);
    }
    if over {
        return Err(ApiError::body_limit(limit));
    }
    Ok(Bytes::from(buf))
}

/// The image bytes of a request: a multipart form's file field or the raw body.
async fn read_image(s: &AppState, req: Request) -> Result<Bytes, ApiError> {
    let limit = s.0.limits.max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mime = content_type.split(';').next().unwrap_or("").trim();
    let multipart = mime == "multipart/form-data";
    if !multipart && !mime.starts_with("image/") && mime != "application/octet-stream" {
        // Answered without reading the body; drained (bounded) so the client sees it.
        let _ = read_body(req.into_body(), 0, None).await;
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "Content-Type `{}` is not accepted: send the image as multipart/form-data \
                 (field `image`) or as the raw body with Content-Type image/* or \
                 application/octet-stream",
                if mime.is_empty() { "(none)" } else { mime }
            ),
        ));
    }
    let (parts, body) = req.into_parts();
    let bytes = read_body(body, limit, declared).await?;
    if !multipart {
        return Ok(bytes);
    }
    let bad = |e: &dyn std::fmt::Display| {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_multipart", e.to_string())
    };
    let req = Request::from_parts(parts, Body::from(bytes));
    let mut form = Multipart::from_request(req, &())
        .await
        .map_err(|e| bad(&e.body_text()))?;
    loop {
        let Some(field) = form.next_field().await.map_err(|e| bad(&e.body_text()))? else {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "missing_image",
                "the form has no file: send the image in a field named `image`",
            ));
        };
        if matches!(field.name(), Some("image" | "file")) || field.file_name().is_some() {
            return field.bytes().await.map_err(|e| bad(&e.body_text()));
        }
    }
}

impl AppState {
    /// Decodes and preprocesses on the blocking pool; keeps the decoded photo if asked.
    async fn decode(
        &self,
        bytes: Bytes,
        keep: bool,
    ) -> Result<(Vec<f32>, Option<RgbImage>), ApiError> {
        let _slot = self
            .0
            .decoders
            .acquire()
            .await
            .map_err(|_| internal("decoder pool closed".into()))?;
        let p = self.0.predictor.clone();
        tokio::task::spawn_blocking(move || {
            let img = p
                .decode(&bytes, Path::new("upload"))
                .map_err(|e| ApiError::from_image(&e))?;
            let input = p.preprocess(&img);
            // A heatmap needs only a display-sized copy of a possibly huge photo.
            Ok((input, keep.then(|| gradcam::display_image(&img))))
        })
        .await
        .map_err(|e| internal(format!("decoding failed: {e}")))?
    }

    /// Queues one input for the inference thread and waits for its result.
    async fn submit(&self, input: Vec<f32>, work: Work) -> Result<Output, ApiError> {
        let (reply, answer) = oneshot::channel();
        let unavailable = || {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the inference thread has stopped",
            )
        };
        self.0
            .queue
            .send(Job { input, work, reply })
            .map_err(|_| unavailable())?;
        answer
            .await
            .map_err(|_| unavailable())?
            .map_err(|e| internal(format!("inference failed: {e}")))
    }
}

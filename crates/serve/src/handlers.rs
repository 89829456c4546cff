//! The HTTP routes and their handlers: `/`, `/healthz`, `/v1/model`, `/v1/predict`,
//! `/v1/explain`. Image requests pass admission control and the time limit
//! ([`guarded`]), decode on Tokio's blocking pool ([`AppState::decode`]) and queue for the
//! inference thread ([`AppState::submit`]).

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use image::RgbImage;
use lesion::gradcam;
use lesion::predict::{ClassProbabilities, Prediction, Predictor};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::batcher::{Job, Output, Work};
use crate::error::{internal, method_not_allowed, not_found, ApiError};
use crate::upload::read_image;
use crate::{AppState, Batching, Limits, DISCLAIMER, PAGE};

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
pub(crate) fn model_info(p: &Predictor, tta: bool, limits: &Limits, batching: &Batching) -> Value {
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
    let mut info = json!({
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
    });
    if !p.classes().is_binary() {
        info["malignant_classes"] = json!(p.classes().positive_names());
    }
    info
}

/// Milliseconds since `t`, rounded to microseconds.
fn ms(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 1e6).round() / 1e3
}

/// The answer of `/v1/predict`. Two classes: `probability` (malignant), `logit`,
/// `malignant`, `label`, `probabilities`, `threshold`. More: `label`, `top_class`,
/// `top_probability`, `logits`, `probabilities` and, with a malignant group,
/// `probability` (the group's), `malignant` and `threshold`.
#[derive(Serialize)]
struct PredictResponse {
    #[serde(skip_serializing_if = "Option::is_none")]
    probability: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logit: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logits: Option<Vec<f32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    malignant: Option<bool>,
    label: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_class: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_probability: Option<f64>,
    /// Every class's probability, in class order.
    probabilities: ClassProbabilities,
    #[serde(skip_serializing_if = "Option::is_none")]
    threshold: Option<f64>,
    tta: bool,
    model_id: String,
    timing_ms: Timing,
    /// Why the image differs markedly from the run's training images (size, aspect ratio,
    /// colour; see `lesion::drift`); absent when it does not or the run has no profile.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
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

impl PredictResponse {
    /// The prediction's part of the answer; the rest is filled by the caller.
    fn new(p: &Predictor, pred: Prediction) -> Self {
        let names = p.class_names();
        let binary = p.classes().is_binary();
        Self {
            probability: pred.probability,
            logit: binary.then(|| pred.logits[0]),
            logits: (!binary).then(|| pred.logits.clone()),
            malignant: pred.malignant,
            top_class: (!binary).then(|| names[pred.top].clone()),
            top_probability: (!binary).then(|| pred.top_probability()),
            probabilities: ClassProbabilities(
                names.iter().cloned().zip(pred.probabilities).collect(),
            ),
            label: pred.label,
            threshold: p.threshold(),
            tta: false,
            model_id: p.model_id().to_string(),
            timing_ms: Timing {
                decode: 0.0,
                inference: 0.0,
                total: 0.0,
            },
            warnings: Vec::new(),
            disclaimer: DISCLAIMER,
        }
    }
}

async fn predict(State(s): State<AppState>, req: Request) -> Response {
    let state = s.clone();
    guarded(&s, async move {
        let start = Instant::now();
        let bytes = read_image(&state, req).await?;
        let (input, warnings, _) = state.decode(bytes, false).await?;
        let decoded = ms(start);
        let t = Instant::now();
        let pred = match state.submit(input, Work::Predict).await? {
            Output::Prediction(p) => p,
            Output::Cam(_) => unreachable!("predict jobs return predictions"),
        };
        let inference = ms(t);
        Ok(Json(PredictResponse {
            tta: state.0.tta,
            timing_ms: Timing {
                decode: decoded,
                inference,
                total: ms(start),
            },
            warnings,
            ..PredictResponse::new(&state.0.predictor, pred)
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
        let (input, warnings, image) = state.decode(bytes, true).await?;
        let cam = match state.submit(input, Work::Explain).await? {
            Output::Cam(c) => c,
            Output::Prediction(_) => unreachable!("explain jobs return CAMs"),
        };
        let image = image.expect("kept for explain");
        let p = state.0.predictor.clone();
        let (png, pred, class) = tokio::task::spawn_blocking(move || {
            let e = p.explanation(&image, cam);
            gradcam::encode_png(&e.overlay)
                .map(|png| (png, e.prediction, e.class))
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
        let p = &state.0.predictor;
        if let Some(probability) = pred.probability {
            put("x-lesion-probability", format!("{probability:.6}"));
        }
        put("x-lesion-label", pred.label.clone());
        if let Some(malignant) = pred.malignant {
            put("x-lesion-malignant", malignant.to_string());
        }
        if let Some(threshold) = p.threshold() {
            put("x-lesion-threshold", threshold.to_string());
        }
        if !p.classes().is_binary() {
            put("x-lesion-explained-class", p.class_names()[class].clone());
        }
        if !warnings.is_empty() {
            // A header value is ASCII.
            let text = warnings.join("; ");
            put(
                "x-lesion-warnings",
                text.chars()
                    .map(|c| if c.is_ascii() { c } else { '?' })
                    .collect(),
            );
        }
        put("x-lesion-model", state.0.predictor.model_id().to_string());
        put("x-lesion-time-ms", ms(start).to_string());
        Ok((headers, png).into_response())
    })
    .await
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

impl AppState {
    /// Decodes and preprocesses on the blocking pool: the model input, the image's
    /// input-drift warnings, and the decoded photo if asked.
    async fn decode(
        &self,
        bytes: Bytes,
        keep: bool,
    ) -> Result<(Vec<f32>, Vec<String>, Option<RgbImage>), ApiError> {
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
            let (input, _, warnings) = p.preprocess_checked(&img);
            // A heatmap needs only a display-sized copy of a possibly huge photo.
            Ok((input, warnings, keep.then(|| gradcam::display_image(&img))))
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

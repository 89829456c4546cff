//! The JSON error responses: `{"error": {"status", "code", "message"}}`, with the status
//! and code that name the problem (see the crate docs for the list).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// A JSON error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// Maps a decoding failure to the status and code that name it.
    pub(crate) fn from_image(err: &lesion::Error) -> Self {
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

    pub(crate) fn body_limit(limit: usize) -> Self {
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

pub(crate) async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see GET / , GET /healthz, GET /v1/model, POST /v1/predict, \
         POST /v1/explain",
    )
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this endpoint (predict and explain take POST, the others GET)",
    )
}

pub(crate) fn internal(msg: String) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", msg)
}

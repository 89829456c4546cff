//! Reading an uploaded image: the raw body or a multipart form's one field `image`, at most
//! `max_body_bytes`; an oversized body is drained (bounded) before the 413 so that the
//! client reads the answer instead of a broken pipe.

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{header, StatusCode};
use http_body_util::BodyExt as _;

use crate::error::ApiError;
use crate::AppState;

/// Most bytes read and thrown away after a body has passed the limit, and for how long:
/// a client that is still sending when the answer comes gets a broken pipe instead of the
/// 413, so a moderately oversized upload is drained first (a huge one is cut off).
const DRAIN_MAX_BYTES: usize = 64 << 20;
const DRAIN_MAX_TIME: Duration = Duration::from_secs(5);
/// Most bytes reserved for a body before they arrive, whatever its Content-Length says.
const PREALLOCATE_MAX: usize = 16 << 20;

/// Reads a body of at most `limit` bytes; past it, drains what follows (bounded) and
/// answers 413.
async fn read_body(body: Body, limit: usize, declared: Option<u64>) -> Result<Bytes, ApiError> {
    let mut body = body;
    // The declared length is only a hint: it reserves at most PREALLOCATE_MAX bytes.
    let mut buf = Vec::with_capacity(
        declared.map_or(0, |n| n.min(limit.min(PREALLOCATE_MAX) as u64) as usize),
    );
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

/// The image bytes of a request: a multipart form's field `image` (a form with no such
/// field, or with any other part, is refused) or the raw body.
pub(crate) async fn read_image(s: &AppState, req: Request) -> Result<Bytes, ApiError> {
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
    // Every part is read, so that a form with anything besides one `image` is refused
    // whatever the order of its parts: answering for one of two files would be a guess.
    let mut image = None;
    while let Some(field) = form.next_field().await.map_err(|e| bad(&e.body_text()))? {
        match field.name() {
            Some(IMAGE_FIELD) if image.is_none() => {
                image = Some(field.bytes().await.map_err(|e| bad(&e.body_text()))?);
            }
            Some(IMAGE_FIELD) => {
                return Err(unexpected_field(format!(
                    "the form has more than one field `{IMAGE_FIELD}`: send one image per request"
                )));
            }
            name => {
                return Err(unexpected_field(format!(
                    "the form has a field {}: send only the image, in a field named \
                     `{IMAGE_FIELD}`",
                    name.map_or_else(|| "without a name".to_string(), |n| format!("`{n}`"))
                )));
            }
        }
    }
    image.ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing_image",
            format!("the form has no field `{IMAGE_FIELD}`: send the image in a field named `{IMAGE_FIELD}`"),
        )
    })
}

/// The one form field a multipart upload may have.
pub(crate) const IMAGE_FIELD: &str = "image";

fn unexpected_field(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "unexpected_field", message)
}

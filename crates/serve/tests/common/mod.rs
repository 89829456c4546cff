//! Shared helpers of the lesion-serve tests: a run folder, a server on a free loopback
//! port, and a small blocking HTTP client.

#![allow(dead_code)]

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use image::RgbImage;
use lesion_serve::{Running, ServeOptions, Server};

/// A run folder with seeded random weights at `size` px and threshold 0.5, unless
/// `LESION_SERVE_RUN` names a real one.
pub fn run_dir(dir: &Path, size: usize) -> PathBuf {
    if let Some(run) = std::env::var_os("LESION_SERVE_RUN") {
        return PathBuf::from(run);
    }
    let run =
        lesion::run::fixtures::write_untrained_run(&dir.join("run"), size, 7, Some(0.5)).unwrap();
    // Without a recorded resize policy, as api.rs expects (the fallback's warning).
    lesion::run::fixtures::forget_resize_policy(&run).unwrap();
    run
}

pub fn options(run: &Path) -> ServeOptions {
    let mut o = ServeOptions::new(run);
    o.device = "cpu".into();
    o.addr = SocketAddr::from(([127, 0, 0, 1], 0));
    o
}

pub fn start(opts: &ServeOptions) -> Running {
    Running::start(Server::load(opts).unwrap(), opts.addr).unwrap()
}

pub fn encode(img: &RgbImage, format: image::ImageFormat) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, format).unwrap();
    buf.into_inner()
}

/// A synthetic lesion photo as JPEG.
pub fn photo(class: usize, index: usize) -> Vec<u8> {
    encode(
        &lesion::synth::render(class, index, 11),
        image::ImageFormat::Jpeg,
    )
}

pub const BOUNDARY: &str = "----lesion-test-boundary-7MA4YWxkTrZu0gW";

/// A multipart/form-data body with one field, and its Content-Type.
pub fn multipart(field: &str, filename: Option<&str>, data: &[u8]) -> (String, Vec<u8>) {
    let mut body = format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"");
    if let Some(f) = filename {
        body.push_str(&format!("; filename=\"{f}\"\r\nContent-Type: image/jpeg"));
    }
    body.push_str("\r\n\r\n");
    let mut body = body.into_bytes();
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={BOUNDARY}"), body)
}

/// A multipart/form-data body with the given parts (name, file name, data), and its
/// Content-Type.
pub fn multipart_parts(parts: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    let mut body = Vec::new();
    for (field, filename, data) in parts {
        let mut head = format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"");
        if let Some(f) = filename {
            head.push_str(&format!("; filename=\"{f}\"\r\nContent-Type: image/jpeg"));
        }
        head.push_str("\r\n\r\n");
        body.extend_from_slice(head.as_bytes());
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={BOUNDARY}"), body)
}

/// How a raw exchange on a socket ended.
#[derive(Debug, PartialEq)]
pub enum Ended {
    /// The server closed the connection (or reset it).
    Closed,
    /// Nothing more arrived within the read timeout; the connection is still open.
    Silent,
}

/// Reads from `s` until the server closes the connection or `wait` passes without a byte;
/// returns what arrived, how it ended and when.
pub fn read_until_closed(
    s: &mut std::net::TcpStream,
    wait: Duration,
) -> (Vec<u8>, Ended, Duration) {
    let start = std::time::Instant::now();
    s.set_read_timeout(Some(wait)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, Ended::Closed, start.elapsed()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (got, Ended::Silent, start.elapsed())
            }
            Err(_) => return (got, Ended::Closed, start.elapsed()),
        }
    }
}

/// An HTTP answer, whatever its status.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): HTTP {} {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `error.code` of a JSON error, checking the status it carries.
    pub fn error_code(&self) -> String {
        let j = self.json();
        assert_eq!(j["error"]["status"], self.status, "{j}");
        assert!(!j["error"]["message"].as_str().unwrap().is_empty(), "{j}");
        j["error"]["code"].as_str().unwrap().to_string()
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build()
}

fn reply(res: Result<ureq::Response, ureq::Error>) -> Reply {
    let res = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("request failed: {e}"),
    };
    let status = res.status();
    let content_type = res.header("content-type").unwrap_or("").to_string();
    let headers = res
        .headers_names()
        .into_iter()
        .map(|k| {
            let v = res.header(&k).unwrap_or("").to_string();
            (k, v)
        })
        .collect();
    let mut body = Vec::new();
    res.into_reader()
        .take(64 << 20)
        .read_to_end(&mut body)
        .unwrap();
    Reply {
        status,
        content_type,
        headers,
        body,
    }
}

pub fn get(url: &str) -> Reply {
    reply(agent().get(url).call())
}

pub fn post(url: &str, content_type: Option<&str>, body: &[u8]) -> Reply {
    let mut req = agent().post(url);
    if let Some(ct) = content_type {
        req = req.set("Content-Type", ct);
    }
    reply(req.send_bytes(body))
}

/// POST with chunked transfer encoding (no Content-Length for the server to check).
pub fn post_chunked(url: &str, content_type: &str, body: Vec<u8>) -> Reply {
    reply(
        agent()
            .post(url)
            .set("Content-Type", content_type)
            .send(std::io::Cursor::new(body)),
    )
}

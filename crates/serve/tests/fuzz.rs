//! Random and mutated requests to a running lesion-serve, over real HTTP on loopback: raw
//! bodies (random bytes, damaged images), multipart forms with random boundaries and parts,
//! random content types, methods and paths, and bytes that are not HTTP at all. Every
//! request must be answered (or, for what is not HTTP, closed) within a time limit, with no
//! 5xx but the documented `busy` and `timeout`, and the server must still answer afterwards.
//!
//! The number of cases is bounded so that the file runs in seconds; `PROPTEST_CASES` runs
//! more, and `PROPTEST_RNG_SEED` other ones (the seed is fixed otherwise, so that a failure
//! reproduces).

mod common;

use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::sync::LazyLock;
use std::time::Duration;

use common::*;
use image::{ImageFormat, RgbImage};
use lesion_serve::Running;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};

/// Longest a request may take to be answered here; the server's own time limit is shorter.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

fn runner(cases: u32) -> TestRunner {
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(0x1e5_10e);
    }
    // Nothing is written next to the sources; a failure prints its input and seed.
    config.failure_persistence = None;
    config.max_shrink_iters = 64;
    TestRunner::new(config)
}

/// A server with small limits, so that random inputs reach them.
fn server() -> (tempfile::TempDir, Running) {
    let dir = tempfile::tempdir().unwrap();
    let run = run_dir(dir.path(), 32);
    let mut opts = options(&run);
    opts.limits.max_body_bytes = 64 << 10;
    opts.limits.max_pixels = 1 << 20;
    // Short, because a damaged Content-Length leaves the server waiting for bytes that never
    // come (it answers 503 timeout), and a damaged Connection header keeps the connection
    // open until the header timeout.
    opts.limits.request_timeout = Duration::from_secs(3);
    opts.limits.header_read_timeout = Duration::from_secs(1);
    let running = start(&opts);
    (dir, running)
}

/// Valid images to damage: a photo as JPEG and PNG, a tiny PNG, a BMP and a TIFF.
static BASES: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
    let small = lesion::synth::render(1, 4, 11);
    vec![
        photo(0, 3),
        encode(&small, ImageFormat::Png),
        encode(&RgbImage::new(1, 1), ImageFormat::Png),
        encode(&RgbImage::new(9, 7), ImageFormat::Bmp),
        encode(&RgbImage::new(5, 5), ImageFormat::Tiff),
    ]
});

/// A change to an image's bytes.
#[derive(Debug, Clone)]
enum Mutation {
    Set(Index, u8),
    Insert(Index, Vec<u8>),
    Remove(Index, usize),
    Truncate(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..64))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<Index>(), 1..256usize).prop_map(|(i, n)| Mutation::Remove(i, n)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        if bytes.is_empty() {
            break;
        }
        match m {
            Mutation::Set(i, b) => {
                let i = i.index(bytes.len());
                bytes[i] = *b;
            }
            Mutation::Insert(i, b) => {
                let i = i.index(bytes.len());
                bytes.splice(i..i, b.iter().copied());
            }
            Mutation::Remove(i, n) => {
                let i = i.index(bytes.len());
                let end = (i + n).min(bytes.len());
                bytes.drain(i..end);
            }
            Mutation::Truncate(i) => bytes.truncate(i.index(bytes.len())),
        }
    }
    bytes
}

/// Image-like bytes: random, a valid image, or a damaged one.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..2048),
        1 => any::<Index>().prop_map(|i| BASES[i.index(BASES.len())].clone()),
        4 => (any::<Index>(), prop::collection::vec(mutation(), 1..4))
            .prop_map(|(i, m)| mutate(BASES[i.index(BASES.len())].clone(), &m)),
    ]
}

/// A string of 1..`max` characters from `chars`.
fn word(chars: &'static str, max: usize) -> impl Strategy<Value = String> {
    let chars: Vec<char> = chars.chars().collect();
    prop::collection::vec(any::<Index>(), 1..max)
        .prop_map(move |v| v.iter().map(|i| chars[i.index(chars.len())]).collect())
}

/// Visible ASCII and spaces: anything a header value may hold.
const VISIBLE: &str = " !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`\
                       abcdefghijklmnopqrstuvwxyz{|}~";

/// `value` as a header parameter: quoted unless it is a token.
fn quoted(value: &str) -> String {
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if value.chars().all(token) {
        value.to_string()
    } else {
        format!("\"{value}\"")
    }
}

/// A Content-Type header: mostly one the endpoints accept (with `boundary`, for a form),
/// sometimes another or none.
fn content_type(boundary: Option<String>) -> BoxedStrategy<Option<String>> {
    let others = prop_oneof![
        Just(None),
        Just(Some("text/plain".to_string())),
        Just(Some("multipart/form-data".to_string())),
        Just(Some("multipart/mixed; boundary=x".to_string())),
        word(VISIBLE, 60).prop_map(Some),
    ];
    match boundary {
        Some(b) => prop_oneof![
            6 => Just(Some(format!("multipart/form-data; boundary={}", quoted(&b)))),
            1 => Just(Some(format!("multipart/form-data; boundary={b}"))),
            1 => Just(Some(format!("Multipart/Form-Data; boundary=\"{b}\"; charset=utf-8"))),
            1 => Just(Some("image/jpeg".to_string())),
            2 => others,
        ]
        .boxed(),
        None => prop_oneof![
            2 => Just(Some("image/jpeg".to_string())),
            2 => Just(Some("image/png".to_string())),
            1 => Just(Some("IMAGE/WEBP; q=1".to_string())),
            2 => Just(Some("application/octet-stream".to_string())),
            2 => others,
        ]
        .boxed(),
    }
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => Just("/v1/predict".to_string()),
        4 => Just("/v1/explain".to_string()),
        1 => Just("/healthz".to_string()),
        1 => Just("/v1/model".to_string()),
        1 => Just("/".to_string()),
        1 => word("abcdefghijklmnopqrstuvwxyz0123456789/._-~%?=&+", 40)
            .prop_map(|p| format!("/{p}")),
        1 => word("abcdefghijklmnopqrstuvwxyz0123456789/._-~%?=&+", 40)
            .prop_map(|p| format!("/v1/predict{p}")),
    ]
}

fn method() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        24 => Just("POST"),
        1 => Just("GET"),
        1 => Just("PUT"),
        1 => Just("DELETE"),
        1 => Just("HEAD"),
        1 => Just("OPTIONS"),
        1 => Just("BREW"),
    ]
}

/// One part of a form: its name (`None`: no name), file name, part content type and data.
#[derive(Debug, Clone)]
struct Part {
    name: Option<String>,
    filename: Option<String>,
    content_type: Option<String>,
    data: Vec<u8>,
}

fn part() -> impl Strategy<Value = Part> {
    let name = prop_oneof![
        6 => Just(Some("image".to_string())),
        1 => Just(Some("other".to_string())),
        1 => Just(Some("file".to_string())),
        1 => Just(None),
        1 => word(VISIBLE, 20).prop_map(|w| Some(w.replace('"', ""))),
    ];
    let filename = prop_oneof![
        Just(None),
        Just(Some("photo.jpg".to_string())),
        word(VISIBLE, 30).prop_map(|w| Some(w.replace('"', ""))),
    ];
    let ct = prop_oneof![
        Just(None),
        Just(Some("image/jpeg".to_string())),
        word(VISIBLE, 30).prop_map(Some),
    ];
    (name, filename, ct, body()).prop_map(|(name, filename, content_type, data)| Part {
        name,
        filename,
        content_type,
        data,
    })
}

/// Characters RFC 2046 allows in a boundary (without the space).
const BOUNDARY_CHARS: &str =
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'()+_,-./:=?";

/// How a form's body is damaged, if at all.
#[derive(Debug, Clone, Copy)]
enum FormDamage {
    None,
    NoClosingBoundary,
    LfOnly,
    Preamble,
    Truncated(Index),
}

fn form_body(boundary: &str, parts: &[Part], damage: FormDamage) -> Vec<u8> {
    let mut body = Vec::new();
    if let FormDamage::Preamble = damage {
        body.extend_from_slice(b"preamble text\r\n");
    }
    for p in parts {
        let mut head = format!("--{boundary}\r\nContent-Disposition: form-data");
        if let Some(n) = &p.name {
            head.push_str(&format!("; name=\"{n}\""));
        }
        if let Some(f) = &p.filename {
            head.push_str(&format!("; filename=\"{f}\""));
        }
        if let Some(ct) = &p.content_type {
            head.push_str(&format!("\r\nContent-Type: {ct}"));
        }
        head.push_str("\r\n\r\n");
        body.extend_from_slice(head.as_bytes());
        body.extend_from_slice(&p.data);
        body.extend_from_slice(b"\r\n");
    }
    if !matches!(damage, FormDamage::NoClosingBoundary) {
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    }
    match damage {
        FormDamage::LfOnly => {
            let mut out = Vec::with_capacity(body.len());
            for (i, &b) in body.iter().enumerate() {
                if !(b == b'\r' && body.get(i + 1) == Some(&b'\n')) {
                    out.push(b);
                }
            }
            out
        }
        FormDamage::Truncated(i) => {
            body.truncate(i.index(body.len() + 1));
            body
        }
        _ => body,
    }
}

fn form_damage() -> impl Strategy<Value = FormDamage> {
    prop_oneof![
        6 => Just(FormDamage::None),
        1 => Just(FormDamage::NoClosingBoundary),
        1 => Just(FormDamage::LfOnly),
        1 => Just(FormDamage::Preamble),
        1 => any::<Index>().prop_map(FormDamage::Truncated),
    ]
}

/// A request: method, path, Content-Type and body.
#[derive(Debug, Clone)]
struct Req {
    method: &'static str,
    path: String,
    content_type: Option<String>,
    body: Vec<u8>,
}

impl Req {
    fn bytes(&self) -> Vec<u8> {
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n",
            self.method, self.path
        );
        if let Some(ct) = &self.content_type {
            head.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", self.body.len()));
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

fn raw_request() -> impl Strategy<Value = Req> {
    (method(), path(), content_type(None), body()).prop_map(|(method, path, content_type, body)| {
        Req {
            method,
            path,
            content_type,
            body,
        }
    })
}

fn multipart_request() -> impl Strategy<Value = Req> {
    let boundary = prop_oneof![
        4 => word(BOUNDARY_CHARS, 70),
        1 => word(VISIBLE, 90).prop_map(|w| w.replace('"', "")),
    ];
    (
        prop_oneof![9 => Just("POST"), 1 => method()],
        path(),
        boundary,
        prop_oneof![
            3 => prop::collection::vec(part(), 1..=1),
            1 => prop::collection::vec(part(), 0..4),
        ],
        form_damage(),
    )
        .prop_flat_map(|(method, path, boundary, parts, damage)| {
            let body = form_body(&boundary, &parts, damage);
            content_type(Some(boundary.trim().to_string())).prop_map(move |content_type| Req {
                method,
                path: path.clone(),
                content_type,
                body: body.clone(),
            })
        })
}

/// What came back for one request.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// Sends `bytes` and reads until the server closes the connection; `None` if it closed
/// without an answer.
fn exchange(addr: SocketAddr, bytes: &[u8]) -> Result<Option<Answer>, TestCaseError> {
    let mut s = TcpStream::connect(addr).map_err(|e| TestCaseError::fail(e.to_string()))?;
    // The server may answer and close before reading everything (an unsupported type, a
    // body over the limit), so a failed write is not the server's fault.
    let _ = s.write_all(bytes);
    let (got, ended, after) = read_until_closed(&mut s, ANSWER_WITHIN);
    if ended != Ended::Closed {
        return Err(TestCaseError::fail(format!(
            "no complete answer within {after:?}: {:?}",
            String::from_utf8_lossy(&got[..got.len().min(300)])
        )));
    }
    if got.is_empty() {
        return Ok(None);
    }
    let split = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| TestCaseError::fail(format!("no header end: {got:?}")))?;
    let head = String::from_utf8_lossy(&got[..split]).to_string();
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|h| h.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| TestCaseError::fail(format!("no status line: {head}")))?;
    Ok(Some(Answer {
        status,
        head,
        body: got[split + 4..].to_vec(),
    }))
}

/// The checks every answer to a well-framed request must pass.
fn check(req: &Req, answer: Option<Answer>) -> Result<(), TestCaseError> {
    let Some(a) = answer else {
        return Err(TestCaseError::fail("closed without an answer"));
    };
    let json_error = || -> Result<serde_json::Value, TestCaseError> {
        let j: serde_json::Value = serde_json::from_slice(&a.body).map_err(|e| {
            TestCaseError::fail(format!(
                "HTTP {} without a JSON error ({e}): {}\n{:?}",
                a.status,
                a.head,
                String::from_utf8_lossy(&a.body)
            ))
        })?;
        prop_assert_eq!(&j["error"]["status"], a.status, "{}", j);
        prop_assert!(
            !j["error"]["message"].as_str().unwrap_or("").is_empty(),
            "{}",
            j
        );
        Ok(j)
    };
    match a.status {
        200 if req.method == "POST" && req.path == "/v1/predict" => {
            let j: serde_json::Value =
                serde_json::from_slice(&a.body).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let p = j["probability"].as_f64().unwrap_or(f64::NAN);
            prop_assert!((0.0..=1.0).contains(&p), "{}", j);
        }
        503 => {
            let j = json_error()?;
            let code = j["error"]["code"].as_str().unwrap_or("");
            prop_assert!(
                code == "busy" || code == "timeout",
                "undocumented 503: {}",
                j
            );
        }
        s if s >= 500 => {
            return Err(TestCaseError::fail(format!(
                "HTTP {s}: {}\n{:?}",
                a.head,
                String::from_utf8_lossy(&a.body)
            )));
        }
        // Our routes' errors are JSON; a HEAD answer has no body.
        s if s >= 400 && req.method != "HEAD" => {
            json_error()?;
        }
        _ => {}
    }
    Ok(())
}

fn still_answers(server: &Running) {
    let h = get(&format!("{}/healthz", server.url()));
    assert_eq!(h.status, 200);
    let jpeg = photo(1, 1);
    let r = post(
        &format!("{}/v1/predict", server.url()),
        Some("image/jpeg"),
        &jpeg,
    );
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
}

#[test]
fn random_and_damaged_raw_bodies_are_answered_without_5xx() {
    let (_dir, server) = server();
    let addr = server.addr();
    runner(96)
        .run(&raw_request(), |req| {
            check(&req, exchange(addr, &req.bytes())?)
        })
        .unwrap();
    still_answers(&server);
}

#[test]
fn random_multipart_forms_are_answered_without_5xx() {
    let (_dir, server) = server();
    let addr = server.addr();
    runner(96)
        .run(&multipart_request(), |req| {
            check(&req, exchange(addr, &req.bytes())?)
        })
        .unwrap();
    still_answers(&server);
}

/// Bytes that are not (quite) HTTP: random garbage, or a valid request with bytes damaged.
fn broken_http() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 1..512),
        (raw_request(), prop::collection::vec(mutation(), 1..4))
            .prop_map(|(req, m)| mutate(req.bytes(), &m)),
    ]
}

#[test]
fn bytes_that_are_not_http_get_an_answer_or_a_close() {
    let (_dir, server) = server();
    let addr = server.addr();
    runner(48)
        .run(&broken_http(), |bytes| {
            // Any answer is fine here but a 5xx other than the documented ones, and the
            // connection must end (at the latest after the header timeout).
            if let Some(a) = exchange(addr, &bytes)? {
                prop_assert!(
                    a.status < 500 || a.status == 503,
                    "HTTP {}: {}",
                    a.status,
                    a.head
                );
            }
            Ok(())
        })
        .unwrap();
    still_answers(&server);
}

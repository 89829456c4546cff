//! Every endpoint of lesion-serve over real HTTP on loopback, including each bad-input case.

mod common;

use std::io::Write as _;
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use image::{ImageFormat, RgbImage};
use lesion::predict::Predictor;

fn cpu() -> candle_core::Device {
    lesion::device::parse_device("cpu").unwrap()
}

/// Small limits so that every cap can be hit with small inputs.
fn small_limits(run: &Path) -> lesion_serve::ServeOptions {
    let mut o = options(run);
    o.limits.max_body_bytes = 256 << 10;
    o.limits.max_pixels = 1_000_000;
    o
}

fn files_of(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = walk(dir)
        .into_iter()
        .map(|p| p.strip_prefix(dir).unwrap().display().to_string())
        .collect();
    v.sort();
    v
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flat_map(|e| {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p)
            } else {
                vec![p]
            }
        })
        .collect()
}

#[test]
fn health_model_and_page() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_dir(dir.path(), 32);
    let server = start(&options(&run));
    let base = server.url();

    let h = get(&format!("{base}/healthz"));
    assert_eq!(h.status, 200);
    let hj = h.json();
    assert_eq!(hj["status"], "ok");
    assert!(hj["model_id"].as_str().unwrap().starts_with("run@"));

    let m = get(&format!("{base}/v1/model"));
    assert_eq!(m.status, 200);
    let mj = m.json();
    assert_eq!(mj["model_id"], hj["model_id"]);
    assert_eq!(mj["threshold"]["value"], 0.5);
    assert_eq!(mj["threshold"]["overridden"], false);
    assert_eq!(mj["image_size"], 32);
    assert_eq!(mj["resize"], "stretch");
    assert_eq!(
        mj["class_names"],
        serde_json::json!(["Benign", "Malignant"])
    );
    assert_eq!(mj["config"]["image_size"], 32);
    assert_eq!(mj["limits"]["max_body_bytes"], 10 << 20);
    assert_eq!(mj["limits"]["max_batch"], 32);
    assert!(mj["eval"].is_null(), "no evaluation yet: {}", mj["eval"]);
    assert!(mj["warnings"][0].as_str().unwrap().contains("stretch"));

    let page = get(&format!("{base}/"));
    assert_eq!(page.status, 200);
    assert!(
        page.content_type.starts_with("text/html"),
        "{}",
        page.content_type
    );
    assert!(page.header("content-security-policy").is_some());
    let html = String::from_utf8(page.body).unwrap();
    assert!(html.contains("Research tool, not a diagnosis"));
    for id in [
        "id=\"file\"",
        "id=\"probability\"",
        "id=\"label\"",
        "id=\"heatmap\"",
    ] {
        assert!(html.contains(id), "page lacks {id}");
    }
    // Self-contained: nothing is loaded from elsewhere.
    for external in [
        "src=\"http",
        "href=\"http",
        "src=\"//",
        "href=\"//",
        "@import",
        "url(",
    ] {
        assert!(
            !html.contains(external),
            "page loads an external resource: {external}"
        );
    }

    let missing = get(&format!("{base}/nope"));
    assert_eq!(missing.status, 404);
    assert_eq!(missing.error_code(), "not_found");
    let wrong_method = get(&format!("{base}/v1/predict"));
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.error_code(), "method_not_allowed");
}

#[test]
fn model_endpoint_includes_the_evaluation_summary() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_dir(dir.path(), 32);
    let eval = run.join("eval-test");
    std::fs::create_dir_all(&eval).unwrap();
    let sha = lesion::fsutil::sha256_file(run.join("best.safetensors")).unwrap();
    std::fs::write(
        eval.join("metrics.json"),
        serde_json::json!({
            "split": "test", "tta": false, "checkpoint_sha256": sha,
            "at_default_threshold": {"roc_auc": 0.91, "n": 100},
            "at_chosen_threshold": {"roc_auc": 0.91, "sensitivity": 0.8, "specificity": 0.85, "n": 100},
            "calibration": {"bins": []}
        })
        .to_string(),
    )
    .unwrap();
    let mut opts = options(&run);
    opts.threshold = Some(0.25);
    let server = start(&opts);
    let m = get(&format!("{}/v1/model", server.url())).json();
    assert_eq!(m["eval"]["split"], "test");
    assert_eq!(m["eval"]["matches_checkpoint"], true);
    assert_eq!(m["eval"]["at_chosen_threshold"]["roc_auc"], 0.91);
    assert!(m["eval"].get("calibration").is_none(), "summary only");
    assert_eq!(m["threshold"]["value"], 0.25);
    assert_eq!(m["threshold"]["overridden"], true);
    assert_eq!(m["threshold"]["run"]["threshold"], 0.5);
}

#[test]
fn predict_and_explain_accept_raw_and_multipart_uploads() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_dir(dir.path(), 32);
    let before = files_of(dir.path());
    let server = start(&options(&run));
    let url = |p: &str| format!("{}{p}", server.url());
    let jpeg = photo(1, 3);

    let raw = post(&url("/v1/predict"), Some("image/jpeg"), &jpeg);
    assert_eq!(raw.status, 200, "{:?}", String::from_utf8_lossy(&raw.body));
    let r = raw.json();
    let prob = r["probability"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&prob));
    assert_eq!(r["threshold"], 0.5);
    assert_eq!(r["malignant"], prob >= 0.5);
    assert_eq!(r["label"], if prob >= 0.5 { "Malignant" } else { "Benign" });
    assert_eq!(r["tta"], false);
    assert!(r["model_id"].as_str().unwrap().starts_with("run@"));
    assert!(r["timing_ms"]["total"].as_f64().unwrap() > 0.0);
    assert!(r["disclaimer"]
        .as_str()
        .unwrap()
        .contains("not a diagnosis"));

    // The same number as the library gives for the same bytes.
    let p = Predictor::load(&run, &cpu(), None).unwrap();
    let direct = p.predict_bytes(&[(Path::new("x"), &jpeg)], false);
    let direct = direct[0].as_ref().unwrap();
    let direct_prob = direct.probability.unwrap();
    assert!((direct_prob - prob).abs() < 1e-6, "{direct_prob} vs {prob}");

    let (ct, body) = multipart("image", Some("lesion.jpg"), &jpeg);
    let mp = post(&url("/v1/predict"), Some(&ct), &body);
    assert_eq!(mp.status, 200, "{:?}", String::from_utf8_lossy(&mp.body));
    assert!((mp.json()["probability"].as_f64().unwrap() - prob).abs() < 1e-9);
    let octet = post(&url("/v1/predict"), Some("application/octet-stream"), &jpeg);
    assert_eq!(octet.status, 200);
    // The field `image` without a file name is the image too.
    let (ct_plain, plain) = multipart("image", None, &jpeg);
    let mp_plain = post(&url("/v1/predict"), Some(&ct_plain), &plain);
    assert_eq!(mp_plain.status, 200);
    assert!((mp_plain.json()["probability"].as_f64().unwrap() - prob).abs() < 1e-9);

    let ex = post(&url("/v1/explain"), Some("image/jpeg"), &jpeg);
    assert_eq!(ex.status, 200, "{:?}", String::from_utf8_lossy(&ex.body));
    assert_eq!(ex.content_type, "image/png");
    let png = image::load_from_memory_with_format(&ex.body, ImageFormat::Png)
        .unwrap()
        .to_rgb8();
    let src = image::load_from_memory(&jpeg).unwrap();
    assert_eq!(
        png.dimensions(),
        lesion::gradcam::overlay_size(src.width(), src.height())
    );
    let hp: f64 = ex.header("x-lesion-probability").unwrap().parse().unwrap();
    assert!((hp - prob).abs() < 1e-5, "{hp} vs {prob}");
    assert_eq!(ex.header("x-lesion-label").unwrap(), r["label"]);
    let ex_mp = post(&url("/v1/explain"), Some(&ct), &body);
    assert_eq!(ex_mp.status, 200);
    assert_eq!(
        ex_mp.body, ex.body,
        "multipart and raw uploads give the same heatmap"
    );

    // Nothing about the uploads is written anywhere near the run.
    drop(server);
    assert_eq!(files_of(dir.path()), before);
}

#[test]
fn bad_inputs_get_4xx_json_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_dir(dir.path(), 32);
    let server = start(&small_limits(&run));
    let jpeg = photo(0, 1);
    let truncated = &jpeg[..jpeg.len() / 2];
    // 1100 x 1000 = 1.1 Mpx > the 1 Mpx cap, yet a tiny PNG.
    let huge_pixels = encode(&RgbImage::new(1100, 1000), ImageFormat::Png);
    assert!(huge_pixels.len() < 256 << 10);
    // Incompressible noise over the 256 KiB body cap.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let big: Vec<u8> = (0..300 << 10)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();

    for endpoint in ["/v1/predict", "/v1/explain"] {
        let url = format!("{}{endpoint}", server.url());
        let check = |what: &str, r: Reply, status: u16, code: &str| {
            assert_eq!(
                (r.status, r.error_code().as_str()),
                (status, code),
                "{endpoint} {what}: {}",
                String::from_utf8_lossy(&r.body)
            );
            assert!(r.content_type.starts_with("application/json"), "{what}");
        };
        check(
            "text/plain",
            post(&url, Some("text/plain"), b"hello"),
            415,
            "unsupported_media_type",
        );
        check(
            "json body",
            post(&url, Some("application/json"), b"{}"),
            415,
            "unsupported_media_type",
        );
        check(
            "no content type",
            post(&url, None, &jpeg),
            415,
            "unsupported_media_type",
        );
        check(
            "text as image",
            post(&url, Some("image/jpeg"), b"definitely not a JPEG"),
            415,
            "not_an_image",
        );
        check(
            "truncated JPEG",
            post(&url, Some("image/jpeg"), truncated),
            422,
            "corrupt_image",
        );
        check(
            "too many pixels",
            post(&url, Some("image/png"), &huge_pixels),
            413,
            "too_many_pixels",
        );
        check(
            "body over the limit",
            post(&url, Some("image/png"), &big),
            413,
            "payload_too_large",
        );
        check(
            "chunked body over the limit",
            post_chunked(&url, "image/png", big.clone()),
            413,
            "payload_too_large",
        );
        check(
            "empty body",
            post(&url, Some("image/jpeg"), b""),
            400,
            "empty_body",
        );
        let (ct, body) = multipart("image", Some("x.jpg"), &big);
        check(
            "multipart over the limit",
            post(&url, Some(&ct), &body),
            413,
            "payload_too_large",
        );
        let (ct, body) = multipart("image", Some("cut.jpg"), truncated);
        check(
            "multipart truncated",
            post(&url, Some(&ct), &body),
            422,
            "corrupt_image",
        );
        let (ct, body) = multipart("comment", None, b"no file here");
        check(
            "multipart with another field instead of the image",
            post(&url, Some(&ct), &body),
            400,
            "unexpected_field",
        );
        let (ct, body) = multipart_parts(&[]);
        check(
            "multipart without parts",
            post(&url, Some(&ct), &body),
            400,
            "missing_image",
        );
        check(
            "multipart without boundary",
            post(&url, Some("multipart/form-data"), b"x"),
            400,
            "bad_multipart",
        );
        let (ct, _) = multipart("image", Some("x.jpg"), &jpeg);
        check(
            "malformed multipart",
            post(&url, Some(&ct), b"garbage that is not multipart at all"),
            400,
            "bad_multipart",
        );
    }
    // After all that, the service still answers.
    let ok = post(
        &format!("{}/v1/predict", server.url()),
        Some("image/jpeg"),
        &jpeg,
    );
    assert_eq!(ok.status, 200);
}

/// Starts a request whose body never finishes, holding a concurrency slot.
fn stalled_request(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n\
         Content-Length: 100000\r\n\r\nabc"
    )
    .unwrap();
    s.flush().unwrap();
    s
}

/// Posts small photos until one gets `status`, for at most 20 s.
fn post_until(url: &str, status: u16) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = post(url, Some("image/jpeg"), &photo(0, 0));
        if r.status == status {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "never HTTP {status}: HTTP {}",
            r.status
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn concurrency_cap_answers_503_busy_until_the_slot_is_free() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_dir(dir.path(), 32);
    let mut opts = options(&run);
    opts.limits.max_concurrency = 1;
    // Long enough that the stalled request cannot time out (and free its slot) while a
    // loaded machine answers the probes.
    opts.limits.request_timeout = Duration::from_secs(120);
    let server = start(&opts);
    let url = format!("{}/v1/predict", server.url());

    let stalled = stalled_request(server.addr());
    let busy = post_until(&url, 503);
    assert_eq!(busy.error_code(), "busy");
    assert_eq!(busy.header("retry-after"), Some("1"));
    // A client that goes away frees its slot.
    drop(stalled);
    post_until(&url, 200);
}

#[test]
fn a_request_past_the_time_limit_answers_503_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_dir(dir.path(), 32);
    let mut opts = options(&run);
    opts.limits.max_concurrency = 1;
    opts.limits.request_timeout = Duration::from_millis(800);
    let server = start(&opts);
    let url = format!("{}/v1/predict", server.url());

    let mut s = stalled_request(server.addr());
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut answer = String::new();
    let mut buf = [0u8; 4096];
    while !answer.contains("\"timeout\"") {
        let n = std::io::Read::read(&mut s, &mut buf).unwrap();
        assert!(n > 0, "closed without an answer: {answer}");
        answer.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    drop(s);
    // The slot is free again.
    post_until(&url, 200);
}

#[test]
fn concurrent_requests_are_batched_and_answered_correctly() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_dir(dir.path(), 32);
    let mut opts = options(&run);
    opts.batching.window = Duration::from_millis(20);
    let server = start(&opts);
    let url = format!("{}/v1/predict", server.url());
    let p = Predictor::load(&run, &cpu(), None).unwrap();
    let images: Vec<Vec<u8>> = (0..8).map(|i| photo(i % 2, i)).collect();
    let expected: Vec<f64> = images
        .iter()
        .map(|b| {
            p.predict_bytes(&[(Path::new("x"), b)], false)[0]
                .as_ref()
                .unwrap()
                .probability
                .unwrap()
        })
        .collect();

    std::thread::scope(|s| {
        for t in 0..12 {
            let (url, images, expected) = (&url, &images, &expected);
            s.spawn(move || {
                for k in 0..4 {
                    let i = (t + k) % images.len();
                    let r = post(url, Some("image/jpeg"), &images[i]);
                    assert_eq!(r.status, 200);
                    let got = r.json()["probability"].as_f64().unwrap();
                    // Each caller gets its own image's answer, whatever it was batched with.
                    assert!(
                        (got - expected[i]).abs() < 1e-5,
                        "image {i}: {got} vs {}",
                        expected[i]
                    );
                }
            });
        }
    });
    let h = get(&format!("{}/healthz", server.url())).json();
    assert_eq!(h["images"], 48);
    assert!(
        h["largest_batch"].as_u64().unwrap() > 1,
        "no request was batched with another: {h}"
    );
    println!("batching: {h}");
}

/// A form part: name, file name, data.
type Part<'a> = (&'a str, Option<&'a str>, &'a [u8]);

/// `(status, code, message)` of an error answer.
fn refusal(r: &Reply) -> (u16, String, String) {
    let code = r.error_code();
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    (r.status, code, message)
}

#[test]
fn multipart_takes_only_the_field_image_and_refuses_any_other_part() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_dir(dir.path(), 32);
    let server = start(&options(&run));
    let benign = photo(0, 2);
    let malignant = photo(1, 5);
    for endpoint in ["/v1/predict", "/v1/explain"] {
        let url = format!("{}{endpoint}", server.url());
        let send = |parts: &[Part]| {
            let (ct, body) = multipart_parts(parts);
            post(&url, Some(&ct), &body)
        };
        let cases: [(&str, Vec<Part>, &str, &str); 7] = [
            (
                "a file in another field before the image",
                vec![
                    ("other", Some("benign.jpg"), &benign),
                    ("image", Some("malignant.jpg"), &malignant),
                ],
                "unexpected_field",
                "`other`",
            ),
            (
                "a file in another field after the image",
                vec![
                    ("image", Some("malignant.jpg"), &malignant),
                    ("other", Some("benign.jpg"), &benign),
                ],
                "unexpected_field",
                "`other`",
            ),
            (
                "a file in another field alone",
                vec![("other", Some("x.jpg"), &benign)],
                "unexpected_field",
                "`other`",
            ),
            (
                "a file in a field named file",
                vec![("file", Some("x.jpg"), &benign)],
                "unexpected_field",
                "`file`",
            ),
            (
                "a text field besides the image",
                vec![("note", None, b"hello"), ("image", Some("x.jpg"), &benign)],
                "unexpected_field",
                "`note`",
            ),
            (
                "two images",
                vec![
                    ("image", Some("benign.jpg"), &benign),
                    ("image", Some("malignant.jpg"), &malignant),
                ],
                "unexpected_field",
                "`image`",
            ),
            ("a form without parts", vec![], "missing_image", "`image`"),
        ];
        for (what, parts, code, named) in cases {
            let r = send(&parts);
            let (status, got_code, message) = refusal(&r);
            assert_eq!(
                (status, got_code.as_str()),
                (400, code),
                "{endpoint} {what}: {message}"
            );
            assert!(
                message.contains(named),
                "{endpoint} {what}: the message does not name {named}: {message}"
            );
        }
    }
    // The image alone is answered, for itself.
    let url = format!("{}/v1/predict", server.url());
    let raw = post(&url, Some("image/jpeg"), &malignant).json();
    let (ct, body) = multipart_parts(&[("image", Some("malignant.jpg"), &malignant)]);
    let mp = post(&url, Some(&ct), &body);
    assert_eq!(mp.status, 200);
    assert_eq!(mp.json()["probability"], raw["probability"]);
}

/// Half a request: the request line and one header, no blank line.
const HALF_A_HEADER: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n";

#[test]
fn a_connection_that_never_finishes_its_headers_is_closed_within_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_dir(dir.path(), 32);
    let mut opts = options(&run);
    opts.limits.header_read_timeout = Duration::from_secs(1);
    let server = start(&opts);

    let mut half = TcpStream::connect(server.addr()).unwrap();
    half.write_all(HALF_A_HEADER).unwrap();
    let mut silent = TcpStream::connect(server.addr()).unwrap();
    for (what, s) in [
        ("half a header", &mut half),
        ("nothing at all", &mut silent),
    ] {
        let (got, ended, after) = read_until_closed(s, Duration::from_secs(15));
        assert_eq!(ended, Ended::Closed, "{what}: still open after {after:?}");
        assert!(
            after < Duration::from_secs(10),
            "{what}: closed after {after:?}"
        );
        assert!(
            got.is_empty() || got.starts_with(b"HTTP/1.1 4"),
            "{what}: {}",
            String::from_utf8_lossy(&got)
        );
    }

    // A kept-alive connection is answered, then closed once idle for as long.
    let mut kept = TcpStream::connect(server.addr()).unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (got, ended, after) = read_until_closed(&mut kept, Duration::from_secs(15));
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(
        ended,
        Ended::Closed,
        "idle connection still open after {after:?}"
    );
    assert!(
        after < Duration::from_secs(10),
        "idle connection closed after {after:?}"
    );

    // Meanwhile the server answers others.
    assert_eq!(get(&format!("{}/healthz", server.url())).status, 200);
}

#[test]
fn connections_past_the_cap_wait_until_one_closes() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_dir(dir.path(), 32);
    let mut opts = options(&run);
    opts.limits.max_connections = 2;
    // Long enough that the held connections cannot time out during the test.
    opts.limits.header_read_timeout = Duration::from_secs(120);
    let server = start(&opts);

    let mut held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(server.addr()).unwrap();
            s.write_all(HALF_A_HEADER).unwrap();
            s
        })
        .collect();
    let mut extra = TcpStream::connect(server.addr()).unwrap();
    extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (got, ended, _) = read_until_closed(&mut extra, Duration::from_millis(1500));
    assert_eq!(
        (ended, got.len()),
        (Ended::Silent, 0),
        "a third connection was served past a cap of 2: {}",
        String::from_utf8_lossy(&got)
    );
    // Once one of the two closes, the waiting one is served.
    drop(held.pop());
    let (got, ended, after) = read_until_closed(&mut extra, Duration::from_secs(20));
    assert_eq!(ended, Ended::Closed, "no answer after {after:?}");
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    drop(held);
}

#[test]
fn stalled_connections_at_the_cap_do_not_starve_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_dir(dir.path(), 32);
    let mut opts = options(&run);
    opts.limits.max_connections = 2;
    opts.limits.header_read_timeout = Duration::from_secs(1);
    let server = start(&opts);

    let _stalled: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect(server.addr()).unwrap();
            s.write_all(HALF_A_HEADER).unwrap();
            s
        })
        .collect();
    let start = Instant::now();
    let r = post(
        &format!("{}/v1/predict", server.url()),
        Some("image/jpeg"),
        &photo(0, 0),
    );
    assert_eq!(r.status, 200);
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn invalid_options_exit_2_naming_the_option() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_dir(dir.path(), 32);
    for args in [
        &["--max-body-mib", "0"][..],
        &["--max-pixels", "0"],
        &["--max-concurrency", "0"],
        &["--max-batch", "0"],
        &["--timeout", "0"],
        &["--batch-window-ms", "inf"],
        &["--max-connections", "0"],
        &["--header-timeout-secs", "0"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lesion-serve"))
            .arg("--run")
            .arg(&run)
            .args(["--device", "cpu", "--addr", "127.0.0.1:0"])
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("invalid option") && stderr.contains(args[0]),
            "{args:?}: {stderr}"
        );
    }
}

/// Keys of a JSON object, in the order of the document's text.
fn keys_in_order(body: &[u8], object: &serde_json::Value) -> Vec<String> {
    let text = String::from_utf8_lossy(body);
    let mut keys: Vec<(usize, String)> = object
        .as_object()
        .unwrap()
        .keys()
        .map(|k| (text.find(&format!("\"{k}\":")).unwrap(), k.clone()))
        .collect();
    keys.sort();
    keys.into_iter().map(|(_, k)| k).collect()
}

#[test]
fn two_class_answers_add_only_the_class_probabilities() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_dir(dir.path(), 32);
    let server = start(&options(&run));
    let r = post(
        &format!("{}/v1/predict", server.url()),
        Some("image/jpeg"),
        &photo(1, 3),
    );
    let j = r.json();
    let mut keys: Vec<&str> = j.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "disclaimer",
            "label",
            "logit",
            "malignant",
            "model_id",
            "probabilities",
            "probability",
            "threshold",
            "timing_ms",
            "tta"
        ]
    );
    let p = j["probability"].as_f64().unwrap();
    assert_eq!(j["probabilities"]["Malignant"].as_f64().unwrap(), p);
    assert_eq!(j["probabilities"]["Benign"].as_f64().unwrap(), 1.0 - p);
    assert_eq!(
        keys_in_order(&r.body, &j["probabilities"]),
        ["Benign", "Malignant"]
    );
    let m = get(&format!("{}/v1/model", server.url())).json();
    assert!(m.get("malignant_classes").is_none(), "{m}");
}

#[test]
fn n_class_answers_carry_every_class_the_top_one_and_no_threshold_without_a_group() {
    let dir = tempfile::tempdir().unwrap();
    let names = testkit::classes::ISIC2017;
    let run =
        testkit::classes::untrained_class_run(&dir.path().join("r"), 32, 5, &names, &[], None);
    let server = start(&options(&run));
    let url = |p: &str| format!("{}{p}", server.url());
    let m = get(&url("/v1/model")).json();
    assert_eq!(m["class_names"], serde_json::json!(names));
    assert!(m["threshold"]["value"].is_null(), "{m}");
    assert_eq!(m["malignant_classes"], serde_json::json!([]));
    assert!(m["threshold"]["description"]
        .as_str()
        .unwrap()
        .contains("most probable class"));

    let p = Predictor::load(&run, &cpu(), None).unwrap();
    for (class, index) in [(0, 1), (1, 2), (0, 7)] {
        let jpeg = photo(class, index);
        let r = post(&url("/v1/predict"), Some("image/jpeg"), &jpeg);
        assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
        let j = r.json();
        let direct = p.predict_bytes(&[(Path::new("x"), &jpeg)], false);
        let d = direct[0].as_ref().unwrap();
        assert_eq!(keys_in_order(&r.body, &j["probabilities"]), names);
        for (k, name) in names.iter().enumerate() {
            let got = j["probabilities"][name].as_f64().unwrap();
            assert!((got - d.probabilities[k]).abs() < 1e-6, "{j}");
        }
        let sum: f64 = names
            .iter()
            .map(|n| j["probabilities"][n].as_f64().unwrap())
            .sum();
        assert!((sum - 1.0).abs() < 1e-12, "{sum}");
        assert_eq!(j["top_class"], names[d.top]);
        assert_eq!(j["label"], names[d.top]);
        assert_eq!(
            j["top_probability"].as_f64().unwrap(),
            j["probabilities"][names[d.top]].as_f64().unwrap()
        );
        assert_eq!(j["logits"].as_array().unwrap().len(), 3);
        for absent in ["probability", "malignant", "threshold", "logit"] {
            assert!(j.get(absent).is_none(), "{absent} in {j}");
        }

        let ex = post(&url("/v1/explain"), Some("image/jpeg"), &jpeg);
        assert_eq!(ex.status, 200, "{:?}", String::from_utf8_lossy(&ex.body));
        assert_eq!(ex.content_type, "image/png");
        assert_eq!(ex.header("x-lesion-label").unwrap(), names[d.top]);
        assert_eq!(ex.header("x-lesion-explained-class").unwrap(), names[d.top]);
        assert!(ex.header("x-lesion-probability").is_none());
        assert!(ex.header("x-lesion-threshold").is_none());
    }
}

#[test]
fn n_class_answers_with_a_malignant_group_decide_at_the_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let names = testkit::classes::ISIC2017;
    let run = testkit::classes::untrained_class_run(
        &dir.path().join("r"),
        32,
        5,
        &names,
        &["melanoma"],
        Some(0.3),
    );
    let server = start(&options(&run));
    let url = |p: &str| format!("{}{p}", server.url());
    let m = get(&url("/v1/model")).json();
    assert_eq!(m["threshold"]["value"], 0.3);
    assert_eq!(m["malignant_classes"], serde_json::json!(["melanoma"]));
    let jpeg = photo(1, 4);
    let j = post(&url("/v1/predict"), Some("image/jpeg"), &jpeg).json();
    let q: Vec<f64> = names
        .iter()
        .map(|n| j["probabilities"][n].as_f64().unwrap())
        .collect();
    assert_eq!(j["probability"].as_f64().unwrap(), q[0]);
    assert_eq!(j["threshold"], 0.3);
    let malignant = q[0] >= 0.3;
    assert_eq!(j["malignant"], malignant);
    let expect = if malignant {
        "melanoma"
    } else if q[2] > q[1] {
        "seborrheic_keratosis"
    } else {
        "nevus"
    };
    assert_eq!(j["label"], expect, "{j}");
    let ex = post(&url("/v1/explain"), Some("image/jpeg"), &jpeg);
    assert_eq!(
        ex.header("x-lesion-malignant").unwrap(),
        malignant.to_string()
    );
    assert_eq!(ex.header("x-lesion-threshold").unwrap(), "0.3");

    // The page has the class bar chart and its accessible name.
    let html = String::from_utf8(get(&url("/")).body).unwrap();
    assert!(html.contains("id=\"class-bars\""));
    assert!(html.contains("Probability of each class, most probable first"));
}

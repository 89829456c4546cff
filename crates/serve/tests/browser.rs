//! The page of lesion-serve in a real browser: headless Chromium driven through
//! chromedriver's WebDriver HTTP API uploads a photo through the file input and waits for
//! the probability, the label and the heatmap. Saves /tmp/lesion-serve-screenshot.png.
//!
//! Uses a run with random weights and a generated photo unless `LESION_SERVE_RUN` names a
//! trained run and `LESION_SERVE_PHOTO` a photo (e.g. after `just demo`).

mod common;

use std::io::{BufRead as _, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// The element key of the W3C WebDriver protocol.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process and its session, both ended on drop.
struct Driver {
    child: Child,
    base: String,
    session: Option<String>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(s) = &self.session {
            let _ = ureq::delete(&format!("{}/session/{s}", self.base)).call();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|d| names.iter().map(move |n| d.join(n)))
        .find(|p| p.is_file())
}

fn webdriver(method: &str, url: &str, body: Option<Value>) -> Value {
    let req = ureq::request(method, url).timeout(Duration::from_secs(120));
    let res = match body {
        Some(b) => req
            .set("Content-Type", "application/json")
            .send_string(&b.to_string()),
        None => req.call(),
    };
    let text = match res {
        Ok(r) => r.into_string().unwrap(),
        Err(ureq::Error::Status(code, r)) => panic!(
            "WebDriver {method} {url}: HTTP {code}: {}",
            r.into_string().unwrap_or_default()
        ),
        Err(e) => panic!("WebDriver {method} {url}: {e}"),
    };
    serde_json::from_str::<Value>(&text).unwrap()["value"].clone()
}

/// Standard base64 (as WebDriver's screenshot) to bytes.
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a' + 26),
            b'0'..=b'9' => u32::from(c - b'0' + 52),
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let clean: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(clean.len() / 4 * 3);
    for chunk in clean.chunks(4) {
        let pad = chunk.iter().filter(|&&c| c == b'=').count();
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= if c == b'=' { 0 } else { val(c) } << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    out
}

fn start_driver() -> Driver {
    let chromedriver = find_program(&["chromedriver"])
        .expect("chromedriver is not installed (on Debian: apt-get install chromium-driver)");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(&chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Drain chromedriver's stdout so that it never blocks on a full pipe.
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || for _ in BufReader::new(stdout).lines() {});
    let driver = Driver {
        child,
        base: format!("http://127.0.0.1:{port}"),
        session: None,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = ureq::get(&format!("{}/status", driver.base))
            .call()
            .ok()
            .and_then(|r| r.into_string().ok())
            .is_some_and(|s| s.contains("\"ready\":true"));
        if ready {
            return driver;
        }
        assert!(
            Instant::now() < deadline,
            "chromedriver did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "needs chromium and chromium-driver (apt-get install chromium chromium-driver)"]
fn page_uploads_a_photo_and_shows_probability_label_and_heatmap() {
    let chromium = find_program(&["chromium", "chromium-browser", "google-chrome"])
        .expect("chromium is not installed (on Debian: apt-get install chromium chromium-driver)");
    let dir = tempfile::tempdir().unwrap();
    let run = std::env::var_os("LESION_SERVE_RUN")
        .map_or_else(|| run_dir(dir.path(), 112), PathBuf::from);
    let server = start(&options(&run));
    let photo_path = match std::env::var_os("LESION_SERVE_PHOTO") {
        Some(p) => PathBuf::from(p),
        None => {
            let p = dir.path().join("malignant_lesion.jpg");
            std::fs::write(&p, photo(1, 2)).unwrap();
            p
        }
    };

    let mut driver = start_driver();
    let profile = tempfile::tempdir().unwrap();
    let caps = json!({
        "capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.to_string_lossy(),
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    format!("--user-data-dir={}", profile.path().display()),
                    "--window-size=1280,1000", "--hide-scrollbars"
                ]
            }
        }}
    });
    let session = webdriver("POST", &format!("{}/session", driver.base), Some(caps));
    let id = session["sessionId"].as_str().unwrap().to_string();
    driver.session = Some(id.clone());
    let s = format!("{}/session/{id}", driver.base);
    webdriver(
        "POST",
        &format!("{s}/window/rect"),
        Some(json!({"width": 1280, "height": 1000})),
    );
    webdriver(
        "POST",
        &format!("{s}/url"),
        Some(json!({"url": server.url()})),
    );

    let input = webdriver(
        "POST",
        &format!("{s}/element"),
        Some(json!({"using": "css selector", "value": "#file"})),
    );
    let input = input[ELEMENT].as_str().unwrap().to_string();
    webdriver(
        "POST",
        &format!("{s}/element/{input}/value"),
        Some(json!({"text": photo_path.to_string_lossy()})),
    );

    let script = r#"
        const $ = (id) => document.getElementById(id);
        const h = $("heatmap"), d = $("disclaimer");
        return {
          probability: $("probability").textContent,
          label: $("label").textContent,
          error: $("error").textContent,
          model: $("model").textContent,
          heatmap: {complete: h.complete, w: h.naturalWidth, h: h.naturalHeight,
                    src: h.getAttribute("src") || ""},
          preview: $("preview").naturalWidth,
          disclaimer: d.innerText,
          disclaimerTop: d.getBoundingClientRect().top,
          disclaimerVisible: d.offsetWidth > 0 && d.offsetHeight > 0,
        };"#;
    let deadline = Instant::now() + Duration::from_secs(90);
    let page = loop {
        let page = webdriver(
            "POST",
            &format!("{s}/execute/sync"),
            Some(json!({"script": script, "args": []})),
        );
        assert_eq!(page["error"], "", "the page shows an error: {page}");
        let done = page["probability"]
            .as_str()
            .is_some_and(|p| p.ends_with('%'))
            && page["heatmap"]["complete"] == true
            && page["heatmap"]["w"].as_u64().unwrap_or(0) > 0;
        if done {
            break page;
        }
        assert!(Instant::now() < deadline, "no result within 90 s: {page}");
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("page state: {page}");
    let shown = page["probability"].as_str().unwrap();
    let pct: f64 = shown
        .trim_start_matches("> ")
        .trim_start_matches("< ")
        .trim_end_matches('%')
        .parse()
        .unwrap();
    assert!((0.0..=100.0).contains(&pct), "{page}");
    let label = page["label"].as_str().unwrap();
    assert!(label == "Benign" || label == "Malignant", "{page}");
    assert!(page["heatmap"]["src"]
        .as_str()
        .unwrap()
        .starts_with("blob:"));
    assert!(page["preview"].as_u64().unwrap() > 0, "preview not shown");
    assert!(
        page["model"].as_str().unwrap().contains("threshold"),
        "{page}"
    );
    assert!(page["disclaimer"]
        .as_str()
        .unwrap()
        .contains("Research tool, not a diagnosis"));
    assert_eq!(page["disclaimerVisible"], true);
    let top = page["disclaimerTop"].as_f64().unwrap();
    assert!(
        (0.0..1000.0).contains(&top),
        "disclaimer off screen ({top})"
    );

    // The label on the page is the API's answer for the same bytes.
    let api = post(
        &format!("{}/v1/predict", server.url()),
        Some("image/jpeg"),
        &std::fs::read(&photo_path).unwrap(),
    )
    .json();
    assert_eq!(api["label"], label);
    let api_pct = api["probability"].as_f64().unwrap() * 100.0;
    match &shown[..2] {
        "> " => assert!(api_pct >= 99.95, "{shown} vs {api_pct}"),
        "< " => assert!(api_pct < 0.05, "{shown} vs {api_pct}"),
        _ => assert!((api_pct - pct).abs() < 0.051, "{shown} vs {api_pct}"),
    }

    let shot = webdriver("GET", &format!("{s}/screenshot"), None);
    let png = base64_decode(shot.as_str().unwrap());
    let img = image::load_from_memory(&png).unwrap().to_rgb8();
    let distinct: std::collections::HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    assert!(distinct.len() > 100, "the screenshot looks blank");
    std::fs::write("/tmp/lesion-serve-screenshot.png", &png).unwrap();
    println!(
        "screenshot: /tmp/lesion-serve-screenshot.png ({}x{})",
        img.width(),
        img.height()
    );
}

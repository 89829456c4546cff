//! Headless Chromium driven through chromedriver's W3C WebDriver HTTP API, for the browser
//! tests of the eval report (`crates/lesion/tests/eval.rs`) and of lesion-serve's page
//! (`crates/serve/tests/browser.rs`, which includes this file by path).
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them).

// Each test binary that includes this uses part of it.
#![allow(dead_code)]

use std::io::{BufRead as _, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The element key of the W3C WebDriver protocol.
pub const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process, ended on drop.
struct Chromedriver {
    child: Child,
    base: String,
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A chromedriver process with one headless Chromium session; both end on drop.
pub struct Browser {
    driver: Chromedriver,
    session: String,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    // Runs before the fields drop, so the session ends before chromedriver does.
    fn drop(&mut self) {
        let url = format!("{}/session/{}", self.driver.base, self.session);
        let _ = ureq::delete(&url).call();
    }
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session with a `width` x `height`
    /// window (a fresh profile, no network services, no scrollbars).
    pub fn start(width: u32, height: u32) -> Self {
        let chromium = find_program(&["chromium", "chromium-browser", "google-chrome"]).expect(
            "chromium is not installed (on Debian: apt-get install chromium chromium-driver)",
        );
        let driver = start_chromedriver();
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
                        format!("--window-size={width},{height}"), "--hide-scrollbars"
                    ]
                }
            }}
        });
        let session = call("POST", &format!("{}/session", driver.base), Some(caps))
            .unwrap_or_else(|e| panic!("{e}"))["sessionId"]
            .as_str()
            .unwrap()
            .to_string();
        let browser = Self {
            driver,
            session,
            _profile: profile,
        };
        browser.send(
            "POST",
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        );
        browser
    }

    /// A WebDriver command on this session (`path` after `/session/{id}`); its `value`.
    pub fn send(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.driver.base, self.session);
        call(method, &url, body).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn open(&self, url: &str) {
        self.send("POST", "/url", Some(json!({ "url": url })));
    }

    /// Runs `script` (a function body that returns a value) in the page.
    pub fn execute(&self, script: &str) -> Value {
        self.send(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    /// The window as PNG bytes.
    pub fn screenshot(&self) -> Vec<u8> {
        base64_decode(self.send("GET", "/screenshot", None).as_str().unwrap())
    }
}

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|d| names.iter().map(move |n| d.join(n)))
        .find(|p| p.is_file())
}

/// Starts chromedriver on a free port and waits until it is ready.
fn start_chromedriver() -> Chromedriver {
    let chromedriver = find_program(&["chromedriver"])
        .expect("chromedriver is not installed (on Debian: apt-get install chromium-driver)");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(&chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut driver = Chromedriver {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    // Drain chromedriver's stdout so that it never blocks on a full pipe.
    let stdout = driver.child.stdout.take().unwrap();
    std::thread::spawn(move || for _ in BufReader::new(stdout).lines() {});
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

/// One WebDriver HTTP call: the response's `value`, or what went wrong.
fn call(method: &str, url: &str, body: Option<Value>) -> Result<Value, String> {
    let req = ureq::request(method, url).timeout(Duration::from_secs(120));
    let res = match body {
        Some(b) => req
            .set("Content-Type", "application/json")
            .send_string(&b.to_string()),
        None => req.call(),
    };
    let text = match res {
        Ok(r) => r.into_string().unwrap(),
        Err(ureq::Error::Status(code, r)) => {
            return Err(format!(
                "WebDriver {method} {url}: HTTP {code}: {}",
                r.into_string().unwrap_or_default()
            ))
        }
        Err(e) => return Err(format!("WebDriver {method} {url}: {e}")),
    };
    Ok(serde_json::from_str::<Value>(&text).unwrap()["value"].clone())
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

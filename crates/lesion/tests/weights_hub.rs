//! The `--weights imagenet` download path, end to end through hf-hub, against a local HTTP
//! server that imitates the Hugging Face Hub (`HF_ENDPOINT` pointed at it, `HF_HOME` at a
//! temporary folder).
//!
//! What hf-hub 0.4.3's sync API needs from a server (see `FakeHub::respond`):
//! - `GET {endpoint}/{repo}/resolve/{revision}/{file}` with `Range: bytes=0-0` (redirects not
//!   followed): a reply carrying `x-repo-commit` (the snapshot folder name) and `x-linked-etag`
//!   or `etag` (the blob name; the Hub sends the SHA-256 of LFS files, quotes are stripped).
//!   Either that reply is a 206 with `Content-Range: bytes 0-0/{size}`, or it is a 3xx whose
//!   absolute `Location` answers the same range request with that `Content-Range`
//!   (the Hub redirects LFS files to its CDN this way);
//! - `GET` of the resolve URL with `Range: bytes={start}-`, redirects followed (the `Range`
//!   header is kept), streaming the bytes from `start`.
//!
//! Environment variables are process-global, so every test here holds `ENV_LOCK`.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use lesion::weights::{self, WeightsSource, IMAGENET_FILE, IMAGENET_REPO};
use lesion::Error;

static ENV_LOCK: Mutex<()> = Mutex::new(());

/// Commit hash the fake Hub reports for every repo.
const COMMIT: &str = "4b6a2c5d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f7";

/// How the fake Hub answers a resolve URL.
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// As the Hub does for LFS files: 302 to an absolute CDN-like URL, metadata in
    /// `x-linked-etag`/`x-linked-size` headers of the redirect.
    Lfs,
    /// The file straight from the resolve URL, metadata in `etag`.
    Direct,
}

#[derive(Clone)]
struct HubFile {
    bytes: Arc<Vec<u8>>,
    /// The ETag announced for the file: its SHA-256, unless a test wants a wrong one.
    etag: String,
}

#[derive(Clone)]
struct HubState {
    addr: SocketAddr,
    layout: Layout,
    /// `"{repo}/{file}"` → file.
    files: Arc<HashMap<String, HubFile>>,
    /// Send only this many bytes of a download, then hold the connection open in silence.
    stall_after: Option<usize>,
    /// One line per request: `"GET /path range"`.
    log: Arc<Mutex<Vec<String>>>,
}

/// A minimal HTTP/1.1 server (one request per connection, `Connection: close`) serving files
/// in the Hub's URL layout, until dropped or [`FakeHub::stop`]ped.
struct FakeHub {
    state: HubState,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeHub {
    fn start(layout: Layout, files: &[(&str, &str, &[u8])]) -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let files = files
            .iter()
            .map(|(repo, file, bytes)| {
                let hub_file = HubFile {
                    bytes: Arc::new(bytes.to_vec()),
                    etag: lesion::fsutil::sha256_hex(bytes),
                };
                (format!("{repo}/{file}"), hub_file)
            })
            .collect();
        FakeHub::serve(listener, layout, files, None)
    }

    fn serve(
        listener: TcpListener,
        layout: Layout,
        files: HashMap<String, HubFile>,
        stall_after: Option<usize>,
    ) -> FakeHub {
        let state = HubState {
            addr: listener.local_addr().unwrap(),
            layout,
            files: Arc::new(files),
            stall_after,
            log: Arc::default(),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let state = state.clone();
                    std::thread::spawn(move || {
                        let _ = handle(conn, &state);
                    });
                }
            })
        };
        FakeHub {
            state,
            stop,
            thread: Some(thread),
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.state.addr)
    }

    fn requests(&self) -> Vec<String> {
        self.state.log.lock().unwrap().clone()
    }

    /// Stops accepting and closes the listening socket: the port refuses connections after.
    fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.stop.store(true, Ordering::SeqCst);
            let _ = TcpStream::connect(self.state.addr);
            thread.join().unwrap();
        }
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop();
    }
}

fn handle(conn: TcpStream, state: &HubState) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let range = headers.get("range").cloned();
    state.log.lock().unwrap().push(format!(
        "{method} {target} {}",
        range.as_deref().unwrap_or("-")
    ));
    let (status, mut response_headers, body) = respond(state, method, target, range.as_deref());
    response_headers.push(("Content-Length".into(), body.len().to_string()));
    response_headers.push(("Connection".into(), "close".into()));
    let reason = match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Bad Request",
    };
    let mut out = conn;
    let mut head = format!("HTTP/1.1 {status} {reason}\r\n");
    for (name, value) in &response_headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    if method == "HEAD" {
        return out.flush();
    }
    match state.stall_after {
        Some(n) if body.len() > 1 && n < body.len() => {
            out.write_all(&body[..n])?;
            out.flush()?;
            std::thread::sleep(Duration::from_secs(30));
            Ok(())
        }
        _ => {
            out.write_all(&body)?;
            out.flush()
        }
    }
}

type Response = (u16, Vec<(String, String)>, Vec<u8>);

/// The Hub's behaviour, reduced to what a file download touches.
fn respond(state: &HubState, method: &str, target: &str, range: Option<&str>) -> Response {
    let not_found = |what: &str| -> Response {
        (
            404,
            vec![("x-error-code".into(), "EntryNotFound".into())],
            format!("{what} not found").into_bytes(),
        )
    };
    if method != "GET" && method != "HEAD" {
        return (400, vec![], b"bad method".to_vec());
    }
    let path = target.split('?').next().unwrap_or("");
    // CDN side of an LFS redirect: `/lfs/{etag}`.
    if let Some(etag) = path.strip_prefix("/lfs/") {
        return match state.files.values().find(|f| f.etag == etag) {
            Some(file) => ranged(file, range, vec![]),
            None => not_found("blob"),
        };
    }
    // `/{namespace}/{name}/resolve/{revision}/{file}`.
    let Some((repo, rest)) = path.trim_start_matches('/').split_once("/resolve/") else {
        return not_found("route");
    };
    let Some((_revision, filename)) = rest.split_once('/') else {
        return not_found("route");
    };
    let Some(file) = state.files.get(&format!("{repo}/{filename}")) else {
        return not_found("repo or file");
    };
    let commit = ("x-repo-commit".to_string(), COMMIT.to_string());
    match state.layout {
        Layout::Lfs => (
            302,
            vec![
                commit,
                // The git blob id of the LFS pointer; hf-hub must prefer x-linked-etag.
                ("ETag".into(), "\"0000pointer\"".into()),
                ("x-linked-etag".into(), format!("\"{}\"", file.etag)),
                ("x-linked-size".into(), file.bytes.len().to_string()),
                (
                    "Location".into(),
                    format!("http://{}/lfs/{}?X-Amz-Signature=x", state.addr, file.etag),
                ),
            ],
            Vec::new(),
        ),
        Layout::Direct => ranged(
            file,
            range,
            vec![commit, ("ETag".into(), format!("\"{}\"", file.etag))],
        ),
    }
}

/// 200 with the whole file, or 206 for `Range: bytes=a-` / `bytes=a-b`.
fn ranged(file: &HubFile, range: Option<&str>, mut headers: Vec<(String, String)>) -> Response {
    let total = file.bytes.len();
    headers.push(("Accept-Ranges".into(), "bytes".into()));
    let Some(spec) = range.and_then(|r| r.strip_prefix("bytes=")) else {
        return (200, headers, file.bytes.to_vec());
    };
    let (start, end) = spec.split_once('-').unwrap_or((spec, ""));
    let start: usize = start.parse().unwrap_or(usize::MAX);
    let end: usize = end
        .parse()
        .unwrap_or(total.saturating_sub(1))
        .min(total.saturating_sub(1));
    if start >= total || start > end {
        headers.push(("Content-Range".into(), format!("bytes */{total}")));
        return (416, headers, Vec::new());
    }
    headers.push((
        "Content-Range".into(),
        format!("bytes {start}-{end}/{total}"),
    ));
    (206, headers, file.bytes[start..=end].to_vec())
}

/// A port nothing listens on.
fn closed_port_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// Points hf-hub at `endpoint` and the cache at `$home/hub`; clears everything else that
/// could change where requests go (proxies: ureq 2 ignores `NO_PROXY`).
fn set_hub_env(endpoint: &str, home: &Path) {
    std::env::set_var("HF_ENDPOINT", endpoint);
    std::env::set_var("HF_HOME", home);
    for var in [
        "HF_HUB_CACHE",
        "HF_HUB_OFFLINE",
        weights::HUB_TIMEOUT_ENV,
        "ALL_PROXY",
        "all_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
    ] {
        std::env::remove_var(var);
    }
}

fn lock_env() -> std::sync::MutexGuard<'static, ()> {
    ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A small but multi-chunk safetensors file with torchvision-style names.
fn small_checkpoint(dir: &Path) -> (Vec<u8>, HashMap<String, Tensor>) {
    let cpu = Device::Cpu;
    let ramp = |n: usize, scale: f64| {
        Tensor::arange(0u32, n as u32, &cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .affine(scale, -0.5)
            .unwrap()
    };
    let tensors = HashMap::from([
        (
            "conv1.weight".to_string(),
            ramp(64 * 3 * 7 * 7, 1e-4).reshape((64, 3, 7, 7)).unwrap(),
        ),
        (
            "layer4.0.downsample.1.running_var".to_string(),
            ramp(512, 1e-3),
        ),
        (
            "fc.weight".to_string(),
            ramp(1000 * 64, 1e-6).reshape((1000, 64)).unwrap(),
        ),
    ]);
    let path = dir.join("generated.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    (std::fs::read(&path).unwrap(), tensors)
}

fn assert_same_tensors(got: &HashMap<String, Tensor>, want: &HashMap<String, Tensor>) {
    assert_eq!(got.len(), want.len());
    for (name, w) in want {
        let g = &got[name];
        assert_eq!(g.dims(), w.dims(), "{name}");
        assert_eq!(g.dtype(), w.dtype(), "{name}");
        let g = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let w = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(g, w, "{name}");
    }
}

fn repo_cache(hub_cache: &Path, repo: &str) -> PathBuf {
    hub_cache.join(format!("models--{}", repo.replace('/', "--")))
}

#[test]
fn imagenet_weights_download_cache_and_offline_errors() {
    let _env = lock_env();
    let tmp = tempfile::tempdir().unwrap();
    let (bytes, tensors) = small_checkpoint(tmp.path());
    let sha = lesion::fsutil::sha256_hex(&bytes);
    let mut hub = FakeHub::start(Layout::Lfs, &[(IMAGENET_REPO, IMAGENET_FILE, &bytes)]);

    // 1. First resolve downloads into the Hub cache layout.
    let home = tmp.path().join("home");
    set_hub_env(&hub.endpoint(), &home);
    assert_eq!(weights::hub_cache_dir(), home.join("hub"));
    assert_eq!(weights::hub_endpoint(), hub.endpoint());
    let path = weights::resolve(&WeightsSource::ImageNet, false)
        .unwrap()
        .expect("imagenet resolves to a file");
    let repo_dir = repo_cache(&home.join("hub"), IMAGENET_REPO);
    assert_eq!(
        path,
        repo_dir.join("snapshots").join(COMMIT).join(IMAGENET_FILE)
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "downloaded bytes differ"
    );
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(),
        COMMIT
    );
    let blob = repo_dir.join("blobs").join(&sha);
    assert_eq!(std::fs::read(&blob).unwrap(), bytes);
    assert_eq!(
        std::fs::canonicalize(&path).unwrap(),
        std::fs::canonicalize(&blob).unwrap()
    );
    let requests = hub.requests();
    let resolve_url = format!("/{IMAGENET_REPO}/resolve/main/{IMAGENET_FILE}");
    assert_eq!(
        requests.first().map(String::as_str),
        Some(format!("GET {resolve_url} bytes=0-0").as_str()),
        "{requests:?}"
    );
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with(&format!("GET /lfs/{sha}"))),
        "the LFS redirect was not followed: {requests:?}"
    );

    // 2. The file loads, and its identity names the Hub snapshot.
    assert_same_tensors(&weights::load_safetensors(&path).unwrap(), &tensors);
    let id = weights::identify(&WeightsSource::ImageNet, Some(&path)).unwrap();
    assert_eq!(id.sha256.as_deref(), Some(sha.as_str()));
    assert_eq!(id.bytes, Some(bytes.len() as u64));
    assert_eq!(id.file_name.as_deref(), Some(IMAGENET_FILE));
    assert_eq!(id.hub_repo.as_deref(), Some(IMAGENET_REPO));
    assert_eq!(id.hub_commit.as_deref(), Some(COMMIT));

    // 3. A cached file is used without any request, with the server up ...
    let before = hub.requests().len();
    let again = weights::resolve(&WeightsSource::ImageNet, true).unwrap();
    assert_eq!(again.as_deref(), Some(path.as_path()));
    assert_eq!(
        hub.requests().len(),
        before,
        "a cache hit touched the network"
    );

    // ... and with it gone.
    hub.stop();
    let offline = weights::resolve(&WeightsSource::ImageNet, false).unwrap();
    assert_eq!(offline.as_deref(), Some(path.as_path()));
    std::env::set_var("HF_HUB_OFFLINE", "1");
    assert_eq!(
        weights::resolve(&WeightsSource::ImageNet, false).unwrap(),
        Some(path.clone())
    );
    std::env::remove_var("HF_HUB_OFFLINE");

    // 4. Unreachable Hub and empty cache: the error says so and names the alternatives.
    let empty_home = tmp.path().join("empty-home");
    let dead = closed_port_endpoint();
    set_hub_env(&dead, &empty_home);
    let err = weights::resolve(&WeightsSource::ImageNet, false).unwrap_err();
    assert!(
        matches!(err, Error::WeightsUnavailable { .. }),
        "unexpected error: {err:?}"
    );
    let msg = err.to_string();
    for needle in [
        "could not be reached",
        dead.as_str(),
        IMAGENET_REPO,
        "--weights PATH",
        "--weights none",
        "models--timm--resnet18.tv_in1k/snapshots/*/model.safetensors",
    ] {
        assert!(msg.contains(needle), "missing {needle:?} in: {msg}");
    }
    let cache_dir = empty_home.join("hub").display().to_string();
    assert!(msg.contains(&cache_dir), "missing {cache_dir:?} in: {msg}");
    assert!(weights::identify(&WeightsSource::None, None)
        .unwrap()
        .sha256
        .is_none());

    // HF_HUB_OFFLINE with an empty cache: no request at all, same advice.
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let msg = weights::resolve(&WeightsSource::ImageNet, false)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("HF_HUB_OFFLINE"), "{msg}");
    assert!(
        msg.contains("--weights PATH") && msg.contains("--weights none"),
        "{msg}"
    );
    std::env::remove_var("HF_HUB_OFFLINE");
}

#[test]
fn hub_direct_layout_cache_override_and_bad_downloads() {
    let _env = lock_env();
    let tmp = tempfile::tempdir().unwrap();
    let (bytes, tensors) = small_checkpoint(tmp.path());

    // A file served straight from the resolve URL, into `HF_HUB_CACHE` (which wins over
    // `HF_HOME`), with a trailing `/` on the endpoint.
    let hub = FakeHub::start(Layout::Direct, &[(IMAGENET_REPO, IMAGENET_FILE, &bytes)]);
    set_hub_env(
        &format!("{}/", hub.endpoint()),
        &tmp.path().join("unused-home"),
    );
    let cache = tmp.path().join("hub-cache");
    std::env::set_var("HF_HUB_CACHE", &cache);
    let path = weights::resolve(&WeightsSource::ImageNet, true)
        .unwrap()
        .unwrap();
    assert_eq!(
        path,
        repo_cache(&cache, IMAGENET_REPO)
            .join("snapshots")
            .join(COMMIT)
            .join(IMAGENET_FILE)
    );
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert_same_tensors(&weights::load_safetensors(&path).unwrap(), &tensors);
    assert!(!tmp.path().join("unused-home").exists());
    let requests = hub.requests();
    assert!(
        requests
            .iter()
            .all(|r| r.starts_with(&format!("GET /{IMAGENET_REPO}/resolve/main/"))),
        "{requests:?}"
    );
    drop(hub);

    // A download whose content does not match the SHA-256 the Hub announced is rejected and
    // removed from the cache, so the next attempt starts clean.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let wrong = "f".repeat(64);
    let files = HashMap::from([(
        "test/corrupt/model.safetensors".to_string(),
        HubFile {
            bytes: Arc::new(bytes.clone()),
            etag: wrong.clone(),
        },
    )]);
    let hub = FakeHub::serve(listener, Layout::Lfs, files, None);
    set_hub_env(&hub.endpoint(), &tmp.path().join("home2"));
    let err = weights::hub_file("test/corrupt", "model.safetensors", false).unwrap_err();
    assert!(matches!(err, Error::BadArtifact { .. }), "{err:?}");
    assert!(err.to_string().contains(&wrong), "{err}");
    let repo_dir = repo_cache(&tmp.path().join("home2/hub"), "test/corrupt");
    assert!(!repo_dir.join("blobs").join(&wrong).exists());
    assert!(!repo_dir
        .join("snapshots")
        .join(COMMIT)
        .join("model.safetensors")
        .exists());

    // A file the Hub does not have is an HTTP error, not "unreachable".
    let err = weights::hub_file("test/missing", "model.safetensors", false).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::WeightsUnavailable { .. }), "{err:?}");
    assert!(msg.contains("HTTP 404"), "{msg}");
    assert!(!msg.contains("could not be reached"), "{msg}");
}

/// Runs `resolve(imagenet)` on another thread and gives up after `limit`, so that a hang
/// fails the test instead of stalling the suite.
fn resolve_within(limit: Duration) -> (lesion::Result<Option<PathBuf>>, Duration) {
    let (tx, rx) = std::sync::mpsc::channel();
    let start = std::time::Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(weights::resolve(&WeightsSource::ImageNet, false));
    });
    let Ok(result) = rx.recv_timeout(limit) else {
        panic!("--weights imagenet did not finish within {limit:?}");
    };
    (result, start.elapsed())
}

#[test]
fn a_silent_hub_times_out_naming_the_endpoint_and_the_alternatives() {
    let _env = lock_env();
    let tmp = tempfile::tempdir().unwrap();
    // Accepts connections and never answers; the connections stay open.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            held.push(conn);
        }
    });
    let home = tmp.path().join("home");
    set_hub_env(&endpoint, &home);
    std::env::set_var(weights::HUB_TIMEOUT_ENV, "1");

    let (result, elapsed) = resolve_within(Duration::from_secs(30));
    let err = result.unwrap_err();
    assert!(
        elapsed < Duration::from_secs(10),
        "took {elapsed:?} with a 1 s timeout"
    );
    assert!(
        matches!(err, Error::WeightsUnavailable { .. }),
        "unexpected error: {err:?}"
    );
    let msg = err.to_string();
    for needle in [
        endpoint.as_str(),
        "could not be reached",
        "sent no answer within 1 s",
        "LESION_HUB_TIMEOUT_SECS is 1 s",
        "--weights PATH",
        "--weights none",
    ] {
        assert!(msg.contains(needle), "missing {needle:?} in: {msg}");
    }
    assert!(
        !repo_cache(&home.join("hub"), IMAGENET_REPO)
            .join("snapshots")
            .exists(),
        "a failed download left a snapshot"
    );

    // A value that is not a number of seconds is refused, naming the variable.
    std::env::set_var(weights::HUB_TIMEOUT_ENV, "soon");
    let err = weights::resolve(&WeightsSource::ImageNet, false).unwrap_err();
    assert!(matches!(err, Error::InvalidOption(_)), "{err:?}");
    assert!(
        err.to_string().contains("LESION_HUB_TIMEOUT_SECS=soon"),
        "{err}"
    );
    std::env::remove_var(weights::HUB_TIMEOUT_ENV);
    assert_eq!(
        weights::hub_timeouts().unwrap(),
        weights::HubTimeouts {
            connect: weights::DEFAULT_CONNECT_TIMEOUT,
            read: weights::DEFAULT_READ_TIMEOUT,
            from_env: false,
        }
    );
}

#[test]
fn a_download_that_stalls_times_out_and_the_next_attempt_resumes_it() {
    let _env = lock_env();
    let tmp = tempfile::tempdir().unwrap();
    let (bytes, tensors) = small_checkpoint(tmp.path());
    let sha = lesion::fsutil::sha256_hex(&bytes);
    let files = || {
        HashMap::from([(
            format!("{IMAGENET_REPO}/{IMAGENET_FILE}"),
            HubFile {
                bytes: Arc::new(bytes.clone()),
                etag: sha.clone(),
            },
        )])
    };
    let sent = 1000;
    let stalling = FakeHub::serve(
        TcpListener::bind("127.0.0.1:0").unwrap(),
        Layout::Lfs,
        files(),
        Some(sent),
    );
    let home = tmp.path().join("home");
    set_hub_env(&stalling.endpoint(), &home);
    std::env::set_var(weights::HUB_TIMEOUT_ENV, "1");

    let (result, elapsed) = resolve_within(Duration::from_secs(30));
    let msg = result.unwrap_err().to_string();
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    for needle in [
        format!(
            "stalled: nothing arrived for 1 s after {sent} of {} bytes",
            bytes.len()
        ),
        stalling.endpoint(),
        "--weights none".to_string(),
    ] {
        assert!(msg.contains(&needle), "missing {needle:?} in: {msg}");
    }
    let blobs = repo_cache(&home.join("hub"), IMAGENET_REPO).join("blobs");
    let part = blobs.join(format!("{sha}.part"));
    assert_eq!(std::fs::read(&part).unwrap(), bytes[..sent]);
    assert!(!blobs.join(&sha).exists());

    // A Hub that answers: the download continues where it stopped.
    let hub = FakeHub::start(Layout::Lfs, &[(IMAGENET_REPO, IMAGENET_FILE, &bytes)]);
    set_hub_env(&hub.endpoint(), &home);
    let path = weights::resolve(&WeightsSource::ImageNet, true)
        .unwrap()
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert_same_tensors(&weights::load_safetensors(&path).unwrap(), &tensors);
    assert!(!part.exists());
    let requests = hub.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with(&format!("GET /lfs/{sha}"))
                && r.ends_with(&format!("bytes={sent}-"))),
        "the download did not resume at byte {sent}: {requests:?}"
    );
}

#[test]
#[ignore = "needs ../shared fixtures"]
fn hub_serves_the_parity_fixture_weights() {
    let _env = lock_env();
    let fixture = common::fixture("resnet18_parity_weights.safetensors");
    let bytes = std::fs::read(&fixture).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let hub = FakeHub::start(Layout::Lfs, &[(IMAGENET_REPO, IMAGENET_FILE, &bytes)]);
    set_hub_env(&hub.endpoint(), tmp.path());

    let path = weights::resolve(&WeightsSource::ImageNet, false)
        .unwrap()
        .unwrap();
    let id = weights::identify(&WeightsSource::ImageNet, Some(&path)).unwrap();
    assert_eq!(
        id.sha256.unwrap(),
        lesion::fsutil::sha256_file(&fixture).unwrap()
    );

    let map = weights::load_safetensors(&path).unwrap();
    // torchvision's ResNet-18 state dict has 122 entries; without the 20 `num_batches_tracked`
    // and the 1000-class `fc` that leaves 100 backbone tensors (20 convolution kernels, 20
    // BatchNorms x weight/bias/running_mean/running_var), plus the head's 6 (`fc.{0,3,6}`).
    assert_eq!(map.len(), 106, "{:?}", {
        let mut names: Vec<_> = map.keys().collect();
        names.sort();
        names
    });
    let running_var = &map["layer4.0.downsample.1.running_var"];
    assert_eq!(running_var.dims(), &[512]);
    assert_eq!(running_var.dtype(), DType::F32);
    assert_eq!(map["conv1.weight"].dims(), &[64, 3, 7, 7]);
    assert_eq!(map["fc.6.weight"].dims(), &[1, 32]);
    let direct = weights::load_safetensors(&fixture).unwrap();
    assert_same_tensors(&map, &direct);
}

//! Where the backbone's starting weights come from, and loading them.
//!
//! `--weights imagenet` (the default) is torchvision's `IMAGENET1K_V1` ResNet-18, fetched as
//! `model.safetensors` of the Hugging Face Hub repo [`IMAGENET_REPO`] (timm republishes exactly
//! those weights under torchvision's state-dict names). It is downloaded into the Hub's
//! on-disk cache, in the layout `hf-hub` and Python's `huggingface_hub` use, so a machine
//! downloads it once and later runs never touch the network. Requests time out
//! ([`hub_timeouts`], [`HUB_TIMEOUT_ENV`]). The environment is honoured as by Python's
//! `huggingface_hub`:
//! - `HF_HOME` (cache in `$HF_HOME/hub`, default `~/.cache/huggingface/hub`),
//! - `HF_HUB_CACHE` (the cache folder itself, overrides `HF_HOME`),
//! - `HF_ENDPOINT` (a mirror instead of `https://huggingface.co`),
//! - `HF_HUB_OFFLINE=1` (never contact the Hub; only the cache is used).
//!
//! `--weights PATH` is any local safetensors file with torchvision names;
//! `--weights none` means random initialisation.
//!
//! [`load_safetensors`] returns every tensor of a file on the CPU, with the dtype and shape
//! stored in the file (ImageNet checkpoints are f32, NCHW convolution kernels `[out, in, kh, kw]`).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use std::io::Write as _;
use std::time::Duration;

use hf_hub::{Cache, Repo};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::fsutil::sha256_file;

/// Hub repository of torchvision's `IMAGENET1K_V1` ResNet-18 weights, under torchvision's names.
pub const IMAGENET_REPO: &str = "timm/resnet18.tv_in1k";
/// The weights file inside [`IMAGENET_REPO`].
pub const IMAGENET_FILE: &str = "model.safetensors";
/// The public Hub, used when `HF_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Where the starting weights come from (the `--weights` option).
///
/// Parsed from `imagenet`, `none` (both case-insensitive) or, for anything else, a path to a
/// safetensors file; a file literally named `none` is reachable as `./none`. Serialised as the
/// same string, so configs round-trip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum WeightsSource {
    /// torchvision's ImageNet weights from the Hub (or its cache).
    ImageNet,
    /// Random initialisation.
    None,
    /// A local safetensors file.
    Path(PathBuf),
}

impl FromStr for WeightsSource {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        if s.trim().is_empty() {
            return Err(Error::InvalidOption(
                "--weights is empty; expected `imagenet`, `none` or a path to a safetensors file"
                    .into(),
            ));
        }
        Ok(match s.to_ascii_lowercase().as_str() {
            "imagenet" => WeightsSource::ImageNet,
            "none" => WeightsSource::None,
            _ => WeightsSource::Path(PathBuf::from(s)),
        })
    }
}

impl fmt::Display for WeightsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WeightsSource::ImageNet => f.write_str("imagenet"),
            WeightsSource::None => f.write_str("none"),
            WeightsSource::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

impl TryFrom<String> for WeightsSource {
    type Error = Error;

    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<WeightsSource> for String {
    fn from(w: WeightsSource) -> String {
        w.to_string()
    }
}

/// Turns a weights source into the local file to load: `None` for random initialisation,
/// the cached (downloading it first if needed) Hub file for ImageNet, the path itself
/// (checked to be a readable file) for a path.
///
/// `progress` shows a download progress bar on stderr. Fails with
/// [`Error::WeightsUnavailable`] when the ImageNet weights are neither cached nor downloadable.
pub fn resolve(source: &WeightsSource, progress: bool) -> Result<Option<PathBuf>> {
    match source {
        WeightsSource::None => Ok(None),
        WeightsSource::ImageNet => hub_file(IMAGENET_REPO, IMAGENET_FILE, progress).map(Some),
        WeightsSource::Path(path) => {
            let meta = std::fs::metadata(path).with_path(path)?;
            if !meta.is_file() {
                return Err(Error::InvalidOption(format!(
                    "--weights {}: not a file (expected a safetensors file, `imagenet` or `none`)",
                    path.display()
                )));
            }
            Ok(Some(path.clone()))
        }
    }
}

/// The Hub cache in effect: `HF_HUB_CACHE`, else `$HF_HOME/hub`, else
/// `~/.cache/huggingface/hub`.
pub fn hub_cache_dir() -> PathBuf {
    hub_cache().path().clone()
}

/// The Hub endpoint in effect: `HF_ENDPOINT` (without trailing `/`), else [`DEFAULT_ENDPOINT`].
pub fn hub_endpoint() -> String {
    match std::env::var("HF_ENDPOINT") {
        Ok(e) if !e.trim().is_empty() => e.trim().trim_end_matches('/').to_string(),
        _ => DEFAULT_ENDPOINT.to_string(),
    }
}

fn hub_cache() -> Cache {
    match std::env::var_os("HF_HUB_CACHE") {
        Some(dir) if !dir.is_empty() => Cache::new(PathBuf::from(dir)),
        _ => Cache::from_env(),
    }
}

fn hub_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

/// Local path of `file` in the Hub model repo `repo` (revision `main`): from the Hub cache
/// without any network access when it is there, else downloaded into the cache (resuming a
/// partial download) and, when the Hub gives the file's SHA-256 as its ETag (as it does for
/// every LFS file, weights included), verified against it.
///
/// Requests time out ([`hub_timeouts`]), so a Hub, mirror or proxy that accepts the
/// connection and never answers is an error rather than a hang. `progress` shows the
/// download's bytes on stderr (on a terminal).
pub fn hub_file(repo: &str, file: &str, progress: bool) -> Result<PathBuf> {
    let cache = hub_cache();
    let hub_repo = Repo::model(repo.to_string());
    if let Some(path) = cache.repo(hub_repo.clone()).get(file) {
        return Ok(path);
    }

    let endpoint = hub_endpoint();
    let unavailable = |reason: String| Error::WeightsUnavailable {
        repo: repo.to_string(),
        file: file.to_string(),
        endpoint: endpoint.clone(),
        cache_dir: cache.path().clone(),
        reason,
    };
    if hub_offline() {
        return Err(unavailable(
            "HF_HUB_OFFLINE is set, so the Hub was not contacted".into(),
        ));
    }
    let timeouts = hub_timeouts()?;
    let client = HubClient::new(&endpoint, cache.token(), timeouts);
    let url = format!("{endpoint}/{repo}/resolve/main/{file}");
    let meta = client
        .metadata(&url)
        .map_err(|e| unavailable(e.describe(&timeouts)))?;

    let repo_dir = cache.path().join(hub_repo.folder_name());
    let blob = repo_dir.join("blobs").join(&meta.etag);
    if !blob.is_file() {
        let bar = download_bar(progress, meta.size, repo, file);
        let fetched = client.download(&url, &blob, meta.size, &bar);
        bar.finish_and_clear();
        fetched.map_err(|e| match e {
            HubError::Cache(err) => *err,
            other => unavailable(other.describe(&timeouts)),
        })?;
    }
    let pointer = repo_dir.join("snapshots").join(&meta.commit).join(file);
    link_pointer(&blob, &pointer, file)?;
    let refs = repo_dir.join("refs");
    cache
        .repo(hub_repo)
        .create_ref(&meta.commit)
        .with_path(&refs)?;
    verify_blob(&pointer)?;
    Ok(pointer)
}

/// Environment variable that sets both Hub timeouts, in seconds.
pub const HUB_TIMEOUT_ENV: &str = "LESION_HUB_TIMEOUT_SECS";
/// How long connecting to the Hub may take, unless [`HUB_TIMEOUT_ENV`] says otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the Hub may stay silent (before its answer, or between two reads of a
/// download), unless [`HUB_TIMEOUT_ENV`] says otherwise.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The timeouts of Hub requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HubTimeouts {
    /// Establishing the connection (TCP, proxy, TLS).
    pub connect: Duration,
    /// Silence before the answer, or between two reads of the body.
    pub read: Duration,
    /// Whether [`HUB_TIMEOUT_ENV`] set them.
    pub from_env: bool,
}

/// The Hub timeouts in effect: [`HUB_TIMEOUT_ENV`] (a positive number of seconds, for both),
/// else [`DEFAULT_CONNECT_TIMEOUT`] and [`DEFAULT_READ_TIMEOUT`]. A value that is not a
/// positive number is an [`Error::InvalidOption`] naming the variable.
pub fn hub_timeouts() -> Result<HubTimeouts> {
    let Some(raw) = std::env::var_os(HUB_TIMEOUT_ENV) else {
        return Ok(HubTimeouts {
            connect: DEFAULT_CONNECT_TIMEOUT,
            read: DEFAULT_READ_TIMEOUT,
            from_env: false,
        });
    };
    let text = raw.to_string_lossy();
    match text.trim().parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 && secs <= 1e9 => {
            let t = Duration::from_secs_f64(secs);
            Ok(HubTimeouts {
                connect: t,
                read: t,
                from_env: true,
            })
        }
        _ => Err(Error::InvalidOption(format!(
            "{HUB_TIMEOUT_ENV}={text}: expected a positive number of seconds"
        ))),
    }
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0} s")
    } else {
        format!("{s} s")
    }
}

/// What the Hub said about a file before downloading it.
#[derive(Debug)]
struct HubMetadata {
    /// The commit the revision points to (the snapshot folder's name).
    commit: String,
    /// The blob's name in the cache: the SHA-256 of an LFS file.
    etag: String,
    size: u64,
}

/// Why talking to the Hub failed.
#[derive(Debug)]
enum HubError {
    /// The request failed: no connection, a timeout, or an HTTP error status.
    Request(Box<ureq::Error>),
    /// The download broke off (a timeout or a closed connection) after `got` of `size` bytes.
    Body {
        source: std::io::Error,
        got: u64,
        size: u64,
    },
    /// The server's answer lacks a header the Hub always sends, or has an unusable one.
    Header(&'static str),
    /// The download ended early.
    Incomplete { got: u64, size: u64 },
    /// Another process is downloading the same file into the cache.
    Busy(PathBuf),
    /// Writing into the cache failed.
    Cache(Box<Error>),
}

impl From<ureq::Error> for HubError {
    fn from(e: ureq::Error) -> Self {
        HubError::Request(Box::new(e))
    }
}

/// Whether `e` or one of its causes is a timed-out read or connect.
fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(err) = cause {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ) {
                return true;
            }
        }
        cause = err.source();
    }
    false
}

impl HubError {
    /// One line saying why the Hub request failed, leading with "could not be reached" for
    /// network failures so users see at once that it is connectivity, not the file, and
    /// naming the timeout (and how to change it) when one expired.
    fn describe(&self, t: &HubTimeouts) -> String {
        let how_to_wait = if t.from_env {
            format!("{HUB_TIMEOUT_ENV} is {}", secs(t.read))
        } else {
            format!("set {HUB_TIMEOUT_ENV} to wait longer")
        };
        match self {
            HubError::Request(err) => match err.as_ref() {
                ureq::Error::Status(code, response) => {
                    let hint = match code {
                        401 | 403 => " (access denied: a gated or private repo, or a bad token)",
                        404 => " (no such repo, revision or file)",
                        _ => "",
                    };
                    format!(
                        "the Hub answered HTTP {code} {}{hint} for {}",
                        response.status_text(),
                        response.get_url()
                    )
                }
                ureq::Error::Transport(tr) if is_timeout(tr) => {
                    if tr.kind() == ureq::ErrorKind::ConnectionFailed {
                        format!(
                            "the Hub could not be reached: no connection within {} \
                             (connect timeout; {how_to_wait})",
                            secs(t.connect)
                        )
                    } else {
                        format!(
                            "the Hub could not be reached: it accepted the connection but sent \
                             no answer within {} (read timeout; {how_to_wait})",
                            secs(t.read)
                        )
                    }
                }
                ureq::Error::Transport(tr) => format!("the Hub could not be reached: {tr}"),
            },
            HubError::Body { source, got, size } if is_timeout(source) => format!(
                "the download stalled: nothing arrived for {} after {got} of {size} bytes \
                 (read timeout; {how_to_wait}); the bytes so far are kept in the Hub cache and \
                 the next attempt resumes from them",
                secs(t.read)
            ),
            HubError::Body { source, got, size } => format!(
                "the download broke off after {got} of {size} bytes: {source}; the bytes so far \
                 are kept in the Hub cache and the next attempt resumes from them"
            ),
            HubError::Header(h) => format!(
                "the server is not a Hugging Face Hub (or a compatible mirror): its reply lacks \
                 a valid `{h}` header"
            ),
            HubError::Incomplete { got, size } => format!(
                "the download ended after {got} of {size} bytes; the next attempt resumes from \
                 there"
            ),
            HubError::Busy(part) => format!(
                "another process is downloading the same file ({} is locked); wait for it to \
                 finish",
                part.display()
            ),
            HubError::Cache(err) => err.to_string(),
        }
    }
}

/// HTTP access to the Hub with timeouts, in the request sequence of `hf-hub`'s sync API
/// (whose client cannot be given timeouts), so that the cache it fills is the one `hf-hub`
/// and Python's `huggingface_hub` read.
struct HubClient {
    /// Where the token may be sent: the endpoint's scheme and host.
    origin: String,
    token: Option<String>,
    /// Follows no redirect: the metadata request reads the redirect's own headers.
    direct: ureq::Agent,
    /// Follows redirects (to the CDN that serves LFS files).
    follow: ureq::Agent,
}

fn url_origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}

fn is_redirect(status: u16) -> bool {
    matches!(status, 301 | 302 | 303 | 307 | 308)
}

/// A header value usable as one path component of the cache (an ETag or a commit hash).
fn cache_name(value: Option<&str>, header: &'static str) -> std::result::Result<String, HubError> {
    let name = value.ok_or(HubError::Header(header))?.replace('"', "");
    let name = name.trim().to_string();
    let usable = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && name.len() <= 255;
    if usable {
        Ok(name)
    } else {
        Err(HubError::Header(header))
    }
}

impl HubClient {
    fn new(endpoint: &str, token: Option<String>, t: HubTimeouts) -> Self {
        let agent = |redirects: u32| {
            ureq::AgentBuilder::new()
                .try_proxy_from_env(true)
                .timeout_connect(t.connect)
                .timeout_read(t.read)
                .timeout_write(t.read)
                .redirects(redirects)
                .redirect_auth_headers(ureq::RedirectAuthHeaders::SameHost)
                .user_agent(concat!("lesion/", env!("CARGO_PKG_VERSION")))
                .build()
        };
        HubClient {
            origin: url_origin(endpoint).to_string(),
            token,
            direct: agent(0),
            follow: agent(5),
        }
    }

    fn get(&self, agent: &ureq::Agent, url: &str, range: &str) -> ureq::Request {
        let request = agent.get(url).set("Range", range);
        match &self.token {
            Some(token) if url_origin(url) == self.origin => {
                request.set("Authorization", &format!("Bearer {token}"))
            }
            _ => request,
        }
    }

    /// Commit, ETag and size of the file at the resolve URL `url`: a one-byte range request
    /// that follows redirects within the Hub, reads the commit and ETag from the last of
    /// them and the size from the `Content-Range` of the answer (the CDN's, for LFS files).
    fn metadata(&self, url: &str) -> std::result::Result<HubMetadata, HubError> {
        let mut url = url.to_string();
        let mut response = self.get(&self.direct, &url, "bytes=0-0").call()?;
        for _ in 0..10 {
            if !is_redirect(response.status()) {
                break;
            }
            match response.header("Location") {
                Some(location) if location.starts_with('/') && !location.starts_with("//") => {
                    url = format!("{}{location}", url_origin(&url));
                    response = self.get(&self.direct, &url, "bytes=0-0").call()?;
                }
                _ => break,
            }
        }
        let etag = cache_name(
            response
                .header("x-linked-etag")
                .or_else(|| response.header("etag")),
            "etag",
        )?;
        let commit = cache_name(response.header("x-repo-commit"), "x-repo-commit")?;
        let response = if is_redirect(response.status()) {
            let location = response
                .header("Location")
                .ok_or(HubError::Header("location"))?
                .to_string();
            self.get(&self.follow, &location, "bytes=0-0").call()?
        } else {
            response
        };
        let size = response
            .header("Content-Range")
            .ok_or(HubError::Header("content-range"))?
            .rsplit('/')
            .next()
            .and_then(|s| s.trim().parse().ok())
            .ok_or(HubError::Header("content-range"))?;
        Ok(HubMetadata { commit, etag, size })
    }

    /// Downloads `url` into `blob`, through `<blob>.part`, which a broken download leaves
    /// behind and the next one continues (a `Range` request from its length).
    fn download(
        &self,
        url: &str,
        blob: &Path,
        size: u64,
        bar: &ProgressBar,
    ) -> std::result::Result<(), HubError> {
        let cache_err =
            |path: &Path, e: std::io::Error| HubError::Cache(Box::new(Error::io(path, e)));
        let dir = blob.parent().expect("a blob lies in a folder");
        std::fs::create_dir_all(dir).map_err(|e| cache_err(dir, e))?;
        let mut part_name = blob.as_os_str().to_owned();
        part_name.push(".part");
        let part = PathBuf::from(part_name);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&part)
            .map_err(|e| cache_err(&part, e))?;
        // Two processes appending to one file would interleave their bytes.
        if file.try_lock().is_err() {
            return Err(HubError::Busy(part));
        }
        let mut start = file.metadata().map_err(|e| cache_err(&part, e))?.len();
        if start > size {
            file.set_len(0).map_err(|e| cache_err(&part, e))?;
            start = 0;
        }
        if start < size {
            let response = self
                .get(&self.follow, url, &format!("bytes={start}-"))
                .call()?;
            if response.status() != 206 && start > 0 {
                // The server sent the whole file rather than the rest.
                file.set_len(0).map_err(|e| cache_err(&part, e))?;
                start = 0;
            }
            bar.set_position(start);
            let mut reader = bar.wrap_read(response.into_reader());
            let copied = std::io::copy(&mut reader, &mut file);
            file.flush().map_err(|e| cache_err(&part, e))?;
            let got = file.metadata().map_err(|e| cache_err(&part, e))?.len();
            if let Err(source) = copied {
                return Err(HubError::Body { source, got, size });
            }
            start = got;
        }
        if start != size {
            if start > size {
                let _ = std::fs::remove_file(&part);
            }
            return Err(HubError::Incomplete { got: start, size });
        }
        drop(file);
        std::fs::rename(&part, blob).map_err(|e| cache_err(blob, e))
    }
}

/// A byte progress bar for a download, on stderr (drawn only on a terminal), or hidden.
fn download_bar(show: bool, size: u64, repo: &str, file: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} (eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(format!("downloading {repo}/{file}"));
    pb
}

/// Makes `pointer` (`snapshots/<commit>/<file>`) refer to `blob` as the Hub cache does: a
/// relative symbolic link where the platform has them, else a copy.
fn link_pointer(blob: &Path, pointer: &Path, file: &str) -> Result<()> {
    if pointer.exists() {
        return Ok(());
    }
    let dir = pointer.parent().expect("a pointer lies in a folder");
    std::fs::create_dir_all(dir).with_path(dir)?;
    #[cfg(unix)]
    {
        // From snapshots/<commit>/<file> back up to the repo folder.
        let depth = 2 + Path::new(file).components().count() - 1;
        let mut target = PathBuf::new();
        for _ in 0..depth {
            target.push("..");
        }
        target.push("blobs");
        target.push(blob.file_name().expect("a blob has a name"));
        std::os::unix::fs::symlink(&target, pointer).with_path(pointer)
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        std::fs::copy(blob, pointer).map(drop).with_path(pointer)
    }
}

/// hf-hub names each blob after the ETag the Hub sent; for LFS files that is the SHA-256 of
/// the content, so a corrupted or truncated download can be caught here. A mismatching blob
/// is deleted (with its snapshot link) so that the next run downloads it again.
fn verify_blob(pointer: &Path) -> Result<()> {
    let blob = std::fs::canonicalize(pointer).with_path(pointer)?;
    let Some(expected) = blob.file_name().and_then(|n| n.to_str()) else {
        return Ok(());
    };
    if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(());
    }
    let actual = sha256_file(&blob)?;
    if actual.eq_ignore_ascii_case(expected) {
        return Ok(());
    }
    let _ = std::fs::remove_file(pointer);
    let _ = std::fs::remove_file(&blob);
    Err(Error::BadArtifact {
        path: pointer.to_path_buf(),
        reason: format!(
            "downloaded file has SHA-256 {actual} but the Hub announced {expected}; \
             removed it from the cache, try again"
        ),
    })
}

/// Loads every tensor of a safetensors file onto the CPU, keeping the file's dtypes and
/// shapes. Errors name the file; a floating-point tensor holding NaN or infinity is an
/// [`Error::BadArtifact`] naming the tensor ([`check_finite`]).
pub fn load_safetensors(path: impl AsRef<Path>) -> Result<HashMap<String, candle_core::Tensor>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).with_path(path)?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::Safetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    check_finite(path, &st)?;
    Ok(candle_core::safetensors::load_buffer(
        &bytes,
        &candle_core::Device::Cpu,
    )?)
}

/// Fails with [`Error::BadArtifact`] naming `path` and the first tensor (in name order)
/// whose floating-point values include NaN or infinity, so that corrupt weights are
/// reported as such instead of as a diverging training. One pass over the raw bytes, no
/// copies; integer tensors are not looked at.
pub fn check_finite(path: &Path, st: &safetensors::SafeTensors<'_>) -> Result<()> {
    let mut names = st.names();
    names.sort_unstable();
    for name in names {
        let view = st.tensor(name).map_err(|e| Error::Safetensors {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if let Some((count, first)) = non_finite(view.dtype(), view.data()) {
            let total = view.shape().iter().product::<usize>();
            return Err(Error::BadArtifact {
                path: path.to_path_buf(),
                reason: format!(
                    "tensor `{name}` holds {count} non-finite value{} (NaN or infinity) of \
                     {total}, the first at flat index {first}: the file is corrupt or was saved \
                     from a diverged model",
                    if count == 1 { "" } else { "s" }
                ),
            });
        }
    }
    Ok(())
}

/// Number of NaN or infinite elements in little-endian `data` of `dtype`, and the index of
/// the first; `None` when there are none or the dtype is not floating point. An element is
/// non-finite exactly when its exponent bits are all ones.
fn non_finite(dtype: safetensors::Dtype, data: &[u8]) -> Option<(usize, usize)> {
    use safetensors::Dtype;
    fn scan<const N: usize>(data: &[u8], bad: impl Fn([u8; N]) -> bool) -> Option<(usize, usize)> {
        let (mut count, mut first) = (0usize, None);
        for (i, chunk) in data.chunks_exact(N).enumerate() {
            if bad(chunk.try_into().expect("chunks of N bytes")) {
                count += 1;
                first.get_or_insert(i);
            }
        }
        first.map(|f| (count, f))
    }
    match dtype {
        Dtype::F32 => scan::<4>(data, |b| u32::from_le_bytes(b) & 0x7f80_0000 == 0x7f80_0000),
        Dtype::F64 => scan::<8>(data, |b| {
            u64::from_le_bytes(b) & 0x7ff0_0000_0000_0000 == 0x7ff0_0000_0000_0000
        }),
        Dtype::F16 => scan::<2>(data, |b| u16::from_le_bytes(b) & 0x7c00 == 0x7c00),
        Dtype::BF16 => scan::<2>(data, |b| u16::from_le_bytes(b) & 0x7f80 == 0x7f80),
        // E4M3 has no infinity; its only NaN is S.1111.111.
        Dtype::F8_E4M3 => scan::<1>(data, |b| b[0] & 0x7f == 0x7f),
        Dtype::F8_E5M2 => scan::<1>(data, |b| b[0] & 0x7c == 0x7c),
        _ => None,
    }
}

/// What a run started from, for its `config.json`: enough to tell two runs' starting points
/// apart and to find the same file again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightsIdentity {
    /// The `--weights` value (`imagenet`, `none` or the path as given).
    pub source: WeightsSource,
    /// File name of the weights file (`model.safetensors` for the Hub); `None` for `none`.
    pub file_name: Option<String>,
    /// Lower-case hex SHA-256 of the file's bytes; `None` for `none`.
    pub sha256: Option<String>,
    /// File size in bytes; `None` for `none`.
    pub bytes: Option<u64>,
    /// Hub repo the file came from (ImageNet only).
    pub hub_repo: Option<String>,
    /// Hub commit of the cached snapshot the file came from (ImageNet only, when the file
    /// sits in the Hub cache layout `snapshots/<commit>/<file>`).
    pub hub_commit: Option<String>,
}

/// Identifies the weights `source` resolved to `resolved` (the result of [`resolve`]):
/// file name, size and SHA-256 of the file (which is read in full), plus the Hub repo and
/// commit for ImageNet.
pub fn identify(source: &WeightsSource, resolved: Option<&Path>) -> Result<WeightsIdentity> {
    let mut id = WeightsIdentity {
        source: source.clone(),
        file_name: None,
        sha256: None,
        bytes: None,
        hub_repo: None,
        hub_commit: None,
    };
    let Some(path) = resolved else {
        return Ok(id);
    };
    id.file_name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    id.bytes = Some(std::fs::metadata(path).with_path(path)?.len());
    id.sha256 = Some(sha256_file(path)?);
    if *source == WeightsSource::ImageNet {
        id.hub_repo = Some(IMAGENET_REPO.to_string());
        id.hub_commit = path
            .parent()
            .filter(|dir| {
                dir.parent()
                    .and_then(|p| p.file_name())
                    .is_some_and(|n| n == "snapshots")
            })
            .and_then(|dir| dir.file_name())
            .map(|n| n.to_string_lossy().into_owned());
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays_sources() {
        assert_eq!(
            "imagenet".parse::<WeightsSource>().unwrap(),
            WeightsSource::ImageNet
        );
        assert_eq!(
            "ImageNet".parse::<WeightsSource>().unwrap(),
            WeightsSource::ImageNet
        );
        assert_eq!(
            "none".parse::<WeightsSource>().unwrap(),
            WeightsSource::None
        );
        assert_eq!(
            "./none".parse::<WeightsSource>().unwrap(),
            WeightsSource::Path("./none".into())
        );
        assert_eq!(
            "w/x.safetensors".parse::<WeightsSource>().unwrap(),
            WeightsSource::Path("w/x.safetensors".into())
        );
        assert!("".parse::<WeightsSource>().is_err());
        for s in ["imagenet", "none", "a/b.safetensors"] {
            assert_eq!(s.parse::<WeightsSource>().unwrap().to_string(), s);
        }
        let json = serde_json::to_string(&WeightsSource::Path("a.safetensors".into())).unwrap();
        assert_eq!(json, "\"a.safetensors\"");
        let back: WeightsSource = serde_json::from_str("\"imagenet\"").unwrap();
        assert_eq!(back, WeightsSource::ImageNet);
    }

    #[test]
    fn resolve_none_and_paths() {
        assert_eq!(resolve(&WeightsSource::None, false).unwrap(), None);
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.safetensors");
        let err = resolve(&WeightsSource::Path(missing.clone()), false).unwrap_err();
        assert!(err.to_string().contains("missing.safetensors"), "{err}");
        let err = resolve(&WeightsSource::Path(dir.path().into()), false).unwrap_err();
        assert!(err.to_string().contains("not a file"), "{err}");
        let file = dir.path().join("w.safetensors");
        std::fs::write(&file, b"x").unwrap();
        assert_eq!(
            resolve(&WeightsSource::Path(file.clone()), false).unwrap(),
            Some(file)
        );
    }

    #[test]
    fn load_safetensors_roundtrip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let t = candle_core::Tensor::arange(0f32, 6f32, &candle_core::Device::Cpu)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        candle_core::safetensors::save(&HashMap::from([("a.weight".to_string(), t)]), &path)
            .unwrap();
        let map = load_safetensors(&path).unwrap();
        assert_eq!(map.len(), 1);
        assert_eq!(
            map["a.weight"].to_vec2::<f32>().unwrap(),
            vec![vec![0., 1., 2.], vec![3., 4., 5.]]
        );

        let bad = dir.path().join("bad.safetensors");
        std::fs::write(&bad, b"not a safetensors file at all").unwrap();
        let err = load_safetensors(&bad).unwrap_err();
        assert!(matches!(err, Error::Safetensors { .. }), "{err:?}");
        assert!(err.to_string().contains("bad.safetensors"), "{err}");

        let err = load_safetensors(dir.path().join("nope.safetensors")).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("nope.safetensors"), "{err}");
    }

    #[test]
    fn non_finite_values_are_found_in_every_float_dtype() {
        use safetensors::Dtype;
        let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        assert_eq!(non_finite(Dtype::F32, &f32s(&[1.0, -0.0, f32::MAX])), None);
        assert_eq!(
            non_finite(Dtype::F32, &f32s(&[1.0, f32::NAN, 2.0, f32::NEG_INFINITY])),
            Some((2, 1))
        );
        let f64s = |v: &[f64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        assert_eq!(
            non_finite(Dtype::F64, &f64s(&[f64::MIN_POSITIVE, 3.0])),
            None
        );
        assert_eq!(
            non_finite(Dtype::F64, &f64s(&[0.0, f64::INFINITY])),
            Some((1, 1))
        );
        // f16: 0x3c00 = 1.0, 0x7bff = 65504 (max), 0x7c00 = inf, 0xfe00 = NaN.
        let halves = |v: &[u16]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        assert_eq!(non_finite(Dtype::F16, &halves(&[0x3c00, 0x7bff])), None);
        assert_eq!(
            non_finite(Dtype::F16, &halves(&[0x3c00, 0x7c00, 0xfe00])),
            Some((2, 1))
        );
        // bf16: 0x3f80 = 1.0, 0x7f7f = max, 0xff80 = -inf.
        assert_eq!(non_finite(Dtype::BF16, &halves(&[0x3f80, 0x7f7f])), None);
        assert_eq!(non_finite(Dtype::BF16, &halves(&[0xff80])), Some((1, 0)));
        // Integers are never looked at.
        assert_eq!(non_finite(Dtype::U8, &[0xff; 8]), None);
        assert_eq!(non_finite(Dtype::I32, &[0xff; 8]), None);
    }

    #[test]
    fn load_safetensors_refuses_nan_naming_file_and_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let cpu = &candle_core::Device::Cpu;
        let tensors = HashMap::from([
            (
                "layer1.0.bn1.running_var".to_string(),
                candle_core::Tensor::new(&[1f32, f32::NAN, 2.0], cpu).unwrap(),
            ),
            (
                "labels".to_string(),
                candle_core::Tensor::new(&[255u8, 255], cpu).unwrap(),
            ),
        ]);
        candle_core::safetensors::save(&tensors, &path).unwrap();
        let err = load_safetensors(&path).unwrap_err();
        assert!(matches!(err, Error::BadArtifact { .. }), "{err:?}");
        let msg = err.to_string();
        for needle in [
            "w.safetensors",
            "`layer1.0.bn1.running_var`",
            "1 non-finite value (NaN or infinity) of 3",
            "index 1",
        ] {
            assert!(msg.contains(needle), "missing {needle:?} in: {msg}");
        }
    }

    #[test]
    fn identity_of_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        std::fs::write(&path, b"abc").unwrap();
        let source = WeightsSource::Path(path.clone());
        let id = identify(&source, Some(&path)).unwrap();
        assert_eq!(id.file_name.as_deref(), Some("w.safetensors"));
        assert_eq!(id.bytes, Some(3));
        // SHA-256("abc"), FIPS 180-2 test vector.
        assert_eq!(
            id.sha256.as_deref(),
            Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert_eq!(id.hub_repo, None);
        let none = identify(&WeightsSource::None, None).unwrap();
        assert_eq!(none.sha256, None);
        let json = serde_json::to_value(&id).unwrap();
        assert_eq!(json["source"], path.display().to_string());
    }
}

//! Where the backbone's starting weights come from, and loading them.
//!
//! `--weights imagenet` (the default) is torchvision's `IMAGENET1K_V1` ResNet-18, fetched as
//! `model.safetensors` of the Hugging Face Hub repo [`IMAGENET_REPO`] (timm republishes exactly
//! those weights under torchvision's state-dict names). The download goes through `hf-hub`
//! and its on-disk cache, so a machine downloads it once and later runs never touch the
//! network. The environment is honoured as by Python's `huggingface_hub`:
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

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo};
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

    let api = ApiBuilder::from_env()
        .with_endpoint(endpoint.clone())
        .with_cache_dir(cache.path().clone())
        .with_progress(progress)
        .build()
        .map_err(|e| unavailable(format!("cannot set up the Hub client: {e}")))?;
    let path = api
        .repo(hub_repo)
        .download(file)
        .map_err(|e| unavailable(describe_api_error(&e)))?;
    verify_blob(&path)?;
    Ok(path)
}

/// One line saying why the Hub request failed, leading with "could not be reached" for
/// network failures so users see at once that it is connectivity, not the file.
fn describe_api_error(e: &ApiError) -> String {
    match e {
        ApiError::RequestError(err) => match err.as_ref() {
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
            ureq::Error::Transport(t) => format!("the Hub could not be reached: {t}"),
        },
        ApiError::TooManyRetries(inner) => describe_api_error(inner),
        ApiError::MissingHeader(h) | ApiError::InvalidHeader(h) => format!(
            "the server is not a Hugging Face Hub (or a compatible mirror): its reply lacks a \
             valid `{h}` header"
        ),
        other => format!("the download failed: {other}"),
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
/// shapes. Errors name the file.
pub fn load_safetensors(path: impl AsRef<Path>) -> Result<HashMap<String, candle_core::Tensor>> {
    let path = path.as_ref();
    // Open first so that a missing or unreadable file is an I/O error, not a format error.
    std::fs::File::open(path).with_path(path)?;
    candle_core::safetensors::load(path, &candle_core::Device::Cpu).map_err(|e| {
        Error::Safetensors {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }
    })
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

//! `lesion-serve`: a local HTTP service and web page for a trained run (see `lesion_serve`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use lesion::cli::DeviceArg;
use lesion_serve::{Batching, Limits, ServeOptions, Server};

/// Serve a trained run over HTTP: POST /v1/predict and /v1/explain, GET /v1/model and
/// /healthz, and a page at / to drop a photo on. Requests from concurrent callers are
/// batched. Uploaded images are never written to disk or logged. A research tool, not a
/// diagnosis.
#[derive(Debug, Parser)]
#[command(
    name = "lesion-serve",
    version,
    about,
    after_help = "Examples:\n  lesion-serve --run runs/demo            # then open http://127.0.0.1:8080/\n  \
                  curl -F image=@photo.jpg http://127.0.0.1:8080/v1/predict\n  \
                  curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg' \
                  http://127.0.0.1:8080/v1/explain -o heatmap.png"
)]
pub struct Cli {
    /// Run folder written by lesion-train and evaluated by lesion-eval.
    #[arg(long, value_name = "RUN_DIR")]
    run: PathBuf,
    /// Address to listen on (the default accepts connections from this machine only).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    #[command(flatten)]
    device: DeviceArg,
    /// Decision threshold on the malignant probability, instead of the run's threshold.json.
    #[arg(long, value_name = "PROBABILITY")]
    threshold: Option<f64>,
    /// Test-time augmentation [default: as the run's threshold was chosen].
    #[arg(long, conflicts_with = "no_tta")]
    tta: bool,
    /// No test-time augmentation.
    #[arg(long)]
    no_tta: bool,
    /// Largest request body, in MiB.
    #[arg(long, default_value_t = 10.0, value_name = "MIB")]
    max_body_mib: f64,
    /// Largest image, in pixels (width x height).
    #[arg(long, default_value_t = 25_000_000)]
    max_pixels: u64,
    /// Image requests handled at once; more are answered 503 busy.
    #[arg(long, default_value_t = 32)]
    max_concurrency: usize,
    /// Longest time one request may take, in seconds.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    timeout: f64,
    /// Open connections at once; further ones wait until one closes.
    #[arg(long, default_value_t = 256)]
    max_connections: usize,
    /// Longest time a connection may take to send a request's headers, or stay idle between
    /// requests, before it is closed, in seconds.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    header_timeout_secs: f64,
    /// How long a request may wait for others to share its batch, in milliseconds.
    #[arg(long, default_value_t = 5.0, value_name = "MS")]
    batch_window_ms: f64,
    /// Largest batch.
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
}

/// `value` in `unit`s as a duration; `zero_ok` allows 0.
// The library's one error type, which carries the exit code of a bad option.
#[allow(clippy::result_large_err)]
fn duration(option: &str, value: f64, unit: f64, zero_ok: bool) -> lesion::Result<Duration> {
    let ok = if zero_ok { value >= 0.0 } else { value > 0.0 };
    match Duration::try_from_secs_f64(value * unit) {
        Ok(d) if ok => Ok(d),
        _ => Err(lesion::Error::InvalidOption(format!(
            "{option} {value} must be a {} number of {}",
            if zero_ok { "non-negative" } else { "positive" },
            if unit == 1.0 {
                "seconds"
            } else {
                "milliseconds"
            }
        ))),
    }
}

impl Cli {
    /// The options, each checked ([`ServeOptions::validate`]).
    #[allow(clippy::result_large_err)]
    pub fn options(&self) -> lesion::Result<ServeOptions> {
        if !(self.max_body_mib.is_finite() && self.max_body_mib > 0.0) {
            return Err(lesion::Error::InvalidOption(format!(
                "--max-body-mib {} must be a positive number of MiB",
                self.max_body_mib
            )));
        }
        let opts = ServeOptions {
            addr: self.addr,
            device: self.device.device.clone(),
            threshold: self.threshold,
            tta: match (self.tta, self.no_tta) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
            limits: Limits {
                max_body_bytes: (self.max_body_mib * 1048576.0) as usize,
                max_pixels: self.max_pixels,
                max_concurrency: self.max_concurrency,
                request_timeout: duration("--timeout", self.timeout, 1.0, false)?,
                max_connections: self.max_connections,
                header_read_timeout: duration(
                    "--header-timeout-secs",
                    self.header_timeout_secs,
                    1.0,
                    false,
                )?,
            },
            batching: Batching {
                window: duration("--batch-window-ms", self.batch_window_ms, 1e-3, true)?,
                max_batch: self.max_batch,
            },
            ..ServeOptions::new(&self.run)
        };
        opts.validate()?;
        Ok(opts)
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let opts = cli.options()?;
    let server = Server::load(&opts).with_context(|| format!("loading {}", cli.run.display()))?;
    let p = server.predictor();
    for w in p.warnings() {
        eprintln!("warning: {w}");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(opts.addr)
            .await
            .with_context(|| format!("cannot listen on {}", opts.addr))?;
        let addr = listener.local_addr()?;
        eprintln!(
            "lesion-serve: model {} ({} px, threshold {}, TTA {}, {})",
            p.model_id(),
            p.image_size(),
            p.describe_threshold(),
            if opts.tta.unwrap_or_else(|| p.default_tta()) {
                "on"
            } else {
                "off"
            },
            lesion::device::describe(p.device()),
        );
        eprintln!("lesion-serve: listening on http://{addr}/ (Ctrl-C stops)");
        if !addr.ip().is_loopback() {
            eprintln!(
                "warning: {addr} is reachable from other machines; this service has no \
                 authentication"
            );
        }
        let router = server.router();
        lesion_serve::serve(listener, router, server.limits(), async {
            shutdown_signal().await;
            eprintln!("lesion-serve: shutting down");
        })
        .await
        .context("serving")
    })
}

/// Ctrl-C, or SIGTERM (what service managers and `kill` send) on Unix.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

lesion::main!(Cli, run);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_bind_loopback_with_documented_limits() {
        let cli = Cli::try_parse_from(["lesion-serve", "--run", "r"]).unwrap();
        let o = cli.options().unwrap();
        assert_eq!(o.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(o.limits.max_body_bytes, 10 << 20);
        assert_eq!(o.batching.max_batch, 32);
        assert_eq!(o.batching.window, Duration::from_millis(5));
        assert_eq!(o.tta, None);
        assert_eq!(o.limits.max_connections, 256);
        assert_eq!(o.limits.header_read_timeout, Duration::from_secs(10));
        assert_eq!(o.limits, Limits::default());
    }

    #[test]
    fn rejects_nonsense_limits_naming_the_option() {
        for (args, named) in [
            (&["--max-body-mib", "0"][..], "--max-body-mib"),
            (&["--max-body-mib=-1"], "--max-body-mib"),
            (&["--max-body-mib", "NaN"], "--max-body-mib"),
            (&["--max-body-mib", "1e-12"], "--max-body-mib"),
            (&["--max-pixels", "0"], "--max-pixels"),
            (&["--max-concurrency", "0"], "--max-concurrency"),
            (&["--timeout", "0"], "--timeout"),
            (&["--timeout", "inf"], "--timeout"),
            (&["--timeout", "1e300"], "--timeout"),
            (&["--max-connections", "0"], "--max-connections"),
            (&["--max-connections", "99999999999"], "--max-connections"),
            (&["--header-timeout-secs", "0"], "--header-timeout-secs"),
            (&["--header-timeout-secs=-3"], "--header-timeout-secs"),
            (&["--batch-window-ms=-1"], "--batch-window-ms"),
            (&["--batch-window-ms", "inf"], "--batch-window-ms"),
            (&["--max-batch", "0"], "--max-batch"),
            (&["--threshold", "1.5"], "--threshold"),
            (&["--threshold", "NaN"], "--threshold"),
        ] {
            let cli = Cli::try_parse_from(["lesion-serve", "--run", "r"].iter().chain(args))
                .unwrap_or_else(|e| panic!("{args:?}: {e}"));
            match cli.options() {
                Err(e @ lesion::Error::InvalidOption(_)) => {
                    assert_eq!(e.exit_code(), 2, "{args:?}");
                    assert!(e.to_string().contains(named), "{args:?}: {e}");
                }
                other => panic!("{args:?}: {other:?}"),
            }
        }
        let cli = Cli::try_parse_from(["lesion-serve", "--run", "r", "--batch-window-ms", "0"]);
        assert_eq!(
            cli.unwrap().options().unwrap().batching.window,
            Duration::ZERO
        );
        assert!(Cli::try_parse_from(["lesion-serve", "--run", "r", "--tta", "--no-tta"]).is_err());
    }
}

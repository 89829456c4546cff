//! Running a binary under a hard timeout.
//!
//! [`spawn`] starts the command with piped stdout and stderr (read by two threads, so a
//! chatty child never blocks on a full pipe) and no stdin; [`Running::finish`] waits until
//! it exits or the deadline passes, then kills it. A test that talks to a long-running
//! child (a server) watches its stderr with [`Running::wait_for_stderr`] and stops it with
//! [`Running::terminate`].

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What a finished (or killed) process left.
#[derive(Debug, Clone)]
pub struct Output {
    /// The exit code; `None` when a signal ended it (a timeout kill included).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// Whether it was killed for running past its deadline.
    pub timed_out: bool,
    pub elapsed: Duration,
}

impl Output {
    /// stdout and stderr together, for messages that may go to either.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// A started child whose output is being collected.
#[derive(Debug)]
pub struct Running {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    start: Instant,
    deadline: Instant,
}

fn collect(mut from: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    })
}

/// Starts `cmd` (its stdin closed, stdout and stderr collected), to be killed if it is
/// still running `timeout` from now.
pub fn spawn(mut cmd: Command, timeout: Duration) -> Running {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()));
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let readers = vec![
        collect(child.stdout.take().unwrap(), stdout.clone()),
        collect(child.stderr.take().unwrap(), stderr.clone()),
    ];
    Running {
        child,
        stdout,
        stderr,
        readers,
        start,
        deadline: start + timeout,
    }
}

/// Runs `cmd` to completion, killing it after `timeout`.
pub fn run(cmd: Command, timeout: Duration) -> Output {
    spawn(cmd, timeout).finish()
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// stderr so far, lossily decoded.
    pub fn stderr_so_far(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Waits until stderr holds `needle` and returns that line; `Err` with stderr so far when
    /// `timeout` passes or the process exits first.
    pub fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) -> Result<String, String> {
        let until = Instant::now() + timeout;
        loop {
            let text = self.stderr_so_far();
            if let Some(line) = text.lines().find(|l| l.contains(needle)) {
                return Ok(line.to_string());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "exited ({status}) before printing `{needle}`; stderr:\n{text}"
                ));
            }
            if Instant::now() > until {
                return Err(format!(
                    "no `{needle}` on stderr after {timeout:?}; stderr:\n{text}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asks the process to stop as a service manager would (SIGTERM on Unix; a kill
    /// elsewhere).
    pub fn terminate(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        #[cfg(unix)]
        {
            let sent = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            if sent.is_ok_and(|s| s.success()) {
                return;
            }
        }
        let _ = self.child.kill();
    }

    /// Waits for the exit (killing the process at its deadline) and collects its output.
    pub fn finish(mut self) -> Output {
        let mut timed_out = false;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() >= self.deadline => {
                    timed_out = true;
                    let _ = self.child.kill();
                    break self.child.wait().ok();
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(_) => break None,
            }
        };
        let elapsed = self.start.elapsed();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let text =
            |b: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&b.lock().unwrap()).into_owned();
        Output {
            code: status.and_then(|s| s.code()),
            stdout: text(&self.stdout),
            stderr: text(&self.stderr),
            timed_out,
            elapsed,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn collects_code_and_both_streams() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let o = run(cmd, Duration::from_secs(20));
        assert_eq!((o.code, o.timed_out), (Some(3), false));
        assert_eq!((o.stdout.as_str(), o.stderr.as_str()), ("out\n", "err\n"));
    }

    #[test]
    fn kills_at_the_deadline() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let o = run(cmd, Duration::from_millis(300));
        assert!(o.timed_out && o.code.is_none(), "{o:?}");
        assert!(o.elapsed < Duration::from_secs(10));
    }
}

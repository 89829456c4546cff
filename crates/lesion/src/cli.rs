//! The plumbing every stage binary shares, so that each `main.rs` is only its clap
//! options and one call into the library:
//! - [`main!`](crate::main) writes the binary's `main`: mimalloc as the global allocator,
//!   tuned by [`crate::alloc::tune`], the command line parsed, and the result turned into
//!   the exit code by [`finish`];
//! - [`finish`] prints an error with its chain of causes and maps it to the process exit
//!   code (see [`crate::Error::exit_code`]);
//! - [`DeviceArg`] is the `--device` option of the stages that run a model.

use std::error::Error as StdError;
use std::process::{ExitCode, Termination};

#[doc(hidden)]
pub use clap;
/// The binaries' global allocator (installed by [`main!`](crate::main)).
pub use mimalloc::MiMalloc;

/// Writes a stage binary's `main`: `lesion::main!(Cli, run);` with `Cli` a
/// [`clap::Parser`] and `fn run(cli: &Cli) -> anyhow::Result<T>`, where `T` is `()` or an
/// [`ExitCode`] (any error type that [`finish`] takes will do).
///
/// The expansion installs mimalloc as the global allocator, tunes it
/// ([`crate::alloc::tune`]) before anything allocates much, parses the command line (usage
/// errors exit with 2, `--help` and `--version` with 0, as clap does) and hands `run`'s
/// result to [`finish`].
#[macro_export]
macro_rules! main {
    ($cli:ty, $run:path) => {
        #[global_allocator]
        static GLOBAL: $crate::cli::MiMalloc = $crate::cli::MiMalloc;

        fn main() -> ::std::process::ExitCode {
            $crate::alloc::tune();
            $crate::cli::finish($run(&<$cli as $crate::cli::clap::Parser>::parse()))
        }
    };
}

/// `--device` of the stages that run a model; the library parses the value
/// ([`crate::device::parse_device`]).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
// Keeps this doc comment out of the `about` text of the commands that flatten it.
#[command(about = None, long_about = None)]
pub struct DeviceArg {
    /// auto, cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// Turns a binary's result into its exit code: `Ok` reports its value (success for `()`),
/// an error is printed to stderr as `error: ...` followed by one `caused by: ...` line per
/// underlying cause.
///
/// The code of an error is the first [`crate::Error`]'s in the chain (2 for bad input or
/// usage), else 1. The error is taken by `AsRef` rather than converted into a boxed error:
/// `anyhow` boxes its own wrapper type, behind which the [`crate::Error`] is not found.
pub fn finish<T, E>(result: std::result::Result<T, E>) -> ExitCode
where
    T: Termination,
    E: AsRef<dyn StdError + Send + Sync + 'static>,
{
    match result {
        Ok(value) => value.report(),
        Err(err) => {
            let (text, code) = describe(err.as_ref());
            eprint!("{text}");
            ExitCode::from(code)
        }
    }
}

/// The printed report and the exit code of an error chain.
pub fn describe(err: &(dyn StdError + 'static)) -> (String, u8) {
    let mut text = format!("error: {err}\n");
    let mut code = None;
    let mut current = Some(err);
    let mut shown: Option<String> = None;
    while let Some(e) = current {
        let line = e.to_string();
        // An error that prints its source (`path: No such file…`) is not followed by
        // the same words again.
        if shown.as_ref().is_some_and(|above| !above.ends_with(&line)) {
            text.push_str(&format!("  caused by: {line}\n"));
        }
        shown = Some(line);
        if code.is_none() {
            code = e
                .downcast_ref::<crate::Error>()
                .map(crate::Error::exit_code);
        }
        current = e.source();
    }
    (text, code.unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[derive(Debug, thiserror::Error)]
    #[error("preparing data failed")]
    struct Outer(#[source] crate::Error);

    #[test]
    fn prints_the_chain_and_uses_the_library_exit_code() {
        let inner = crate::Error::BadDataset {
            path: PathBuf::from("images"),
            reason: "no class folders".into(),
        };
        let (text, code) = describe(&Outer(inner));
        assert_eq!(
            text,
            "error: preparing data failed\n  caused by: images: no class folders\n"
        );
        assert_eq!(code, 2);
    }

    #[test]
    fn device_arg_adds_only_the_flag() {
        use clap::Args as _;
        let cmd = DeviceArg::augment_args(clap::Command::new("stage"));
        assert!(cmd.get_about().is_none() && cmd.get_long_about().is_none());
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_id() == "device")
            .unwrap();
        assert_eq!(arg.get_long(), Some("device"));
        assert_eq!(
            arg.get_help().map(|h| h.to_string()).as_deref(),
            Some("auto, cpu, cuda, cuda:N or metal")
        );
        assert_eq!(arg.get_default_values(), ["auto"]);
    }

    #[test]
    fn a_cause_already_printed_is_not_repeated() {
        let inner = crate::Error::io(
            "data/manifest.json",
            std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory"),
        );
        let (text, code) = describe(&Outer(inner));
        assert_eq!(
            text,
            "error: preparing data failed\n  caused by: data/manifest.json: No such file or directory\n"
        );
        assert_eq!(code, 2);
    }

    #[test]
    fn other_errors_exit_with_one() {
        let err = std::io::Error::other("disk on fire");
        let (text, code) = describe(&err);
        assert_eq!(text, "error: disk on fire\n");
        assert_eq!(code, 1);
    }
}

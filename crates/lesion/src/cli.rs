//! What every stage binary does at exit: print the error with its chain of causes and map
//! it to the process exit code (see [`crate::Error::exit_code`]).

use std::error::Error as StdError;
use std::process::ExitCode;

/// Turns a binary's result into its exit code, printing an error to stderr as
/// `error: ...` followed by one `caused by: ...` line per underlying cause.
///
/// The code is the first [`crate::Error`]'s in the chain (2 for bad input or usage), else 1.
pub fn finish<E>(result: std::result::Result<(), E>) -> ExitCode
where
    E: AsRef<dyn StdError + Send + Sync + 'static>,
{
    match result {
        Ok(()) => ExitCode::SUCCESS,
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
    let mut first = true;
    while let Some(e) = current {
        if !first {
            text.push_str(&format!("  caused by: {e}\n"));
        }
        first = false;
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
    fn other_errors_exit_with_one() {
        let err = std::io::Error::other("disk on fire");
        let (text, code) = describe(&err);
        assert_eq!(text, "error: disk on fire\n");
        assert_eq!(code, 1);
    }
}

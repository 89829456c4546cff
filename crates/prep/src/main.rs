//! `lesion-prep`: turns a folder of class sub-folders of images into a prepared dataset of
//! safetensors shards (`lesion::prep`), verifies one, or generates the synthetic demo
//! dataset (`lesion::synth`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use lesion::image_io::{ResizePolicy, DEFAULT_MAX_PIXELS};
use lesion::prep::PrepOptions;

/// Prepare skin-lesion images for training: decode, resize, split 60/20/20, augment the
/// training split and write verified safetensors shards.
#[derive(Debug, Parser)]
#[command(
    name = "lesion-prep",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "Classes: every folder inside INPUT_DIR is a class, named as the folder is \
                  written (a folder holding no image, such as meta/, is ignored); names are \
                  sorted and a class's position is its label. With two \
                  classes the positive one is label 1: --positive NAME, else the one named \
                  Malignant (any case), else the second name.\n\n\
                  Class mapping (--classes FILE: one `folder = class` a line; --group \
                  FOLDER=CLASS adds one):\n  \
                  # HAM10000 as Benign / Malignant (a line starting with # is a comment)\n  \
                  mel = Malignant\n  \
                  bcc = Malignant\n  \
                  nv = Benign\n  \
                  # class - skips the folder\n  \
                  vasc = -\n\
                  Folders are matched ignoring case; a mapped folder that does not exist is an \
                  error; folders not mentioned keep their own name as class; at least two \
                  classes must remain.\n\n\
                  Examples:\n  lesion-prep data/isic --out data/prepared\n  \
                  lesion-prep ham10000 --out data/ham3 --group vasc=- --malignant mel,bcc,akiec\n  \
                  lesion-prep ham10000 --out data/ham2 --classes benign-malignant.txt\n  \
                  lesion-prep data/isic --out data/cv5 --folds 5\n  \
                  lesion-prep verify data/prepared\n  \
                  lesion-prep synth --out data/synthetic --per-class 200"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    prep: PrepArgs,
}

#[derive(Debug, Args)]
struct PrepArgs {
    /// Input folder with one sub-folder per class (e.g. Benign/ and Malignant/, or one
    /// folder per diagnosis).
    #[arg(value_name = "INPUT_DIR", required = true)]
    input: Option<PathBuf>,
    /// Prepared-dataset folder to create.
    #[arg(long, value_name = "PREPARED_DIR", required = true)]
    out: Option<PathBuf>,
    /// Side of the square output images, in pixels.
    #[arg(long, default_value_t = 224)]
    size: u32,
    /// How non-square images become square: stretch (scale each axis; keeps everything)
    /// or crop (scale the short side, cut the centre square).
    #[arg(long, value_enum, default_value_t = Resize::Stretch)]
    resize: Resize,
    /// Validation fraction of each class [default: 0.2] (not with --folds: there each
    /// fold is the validation set of one run).
    #[arg(long, value_name = "VAL")]
    val: Option<f64>,
    /// Test fraction of each class.
    #[arg(long, default_value_t = 0.2)]
    test: f64,
    /// K-fold cross-validation: hold out the test split as usual and divide the other
    /// images into K folds (stratified by class, copies of a file in one fold);
    /// `lesion-train --fold I` then validates on fold I and trains on the others.
    #[arg(long, value_name = "K")]
    folds: Option<u32>,
    /// With --folds: hold out no test split; every image is in a fold.
    #[arg(long, requires = "folds")]
    no_test: bool,
    /// Seed of the split, the row order and the augmentations.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Most images per shard file.
    #[arg(long, default_value_t = 1024)]
    shard_size: usize,
    /// Independently augmented copies of the training split (training uses view
    /// epoch % K).
    #[arg(long, default_value_t = 1, value_name = "K")]
    views: u32,
    /// Write training images without augmentation.
    #[arg(long)]
    no_augment: bool,
    /// Fail on the first unusable input file instead of reporting and skipping it.
    #[arg(long)]
    strict: bool,
    /// Replace an existing prepared dataset (only once the new one is complete). Never
    /// replaces a folder lesion-prep did not write, the input folder or a folder holding it.
    #[arg(long)]
    force: bool,
    /// Refuse images declaring more pixels than this (decompression-bomb guard).
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
    /// Worker threads (default: one per core). Output is identical for any value.
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// No progress bars.
    #[arg(long, short)]
    quiet: bool,
    /// Class mapping file: lines `folder = class` (class `-` skips the folder; `#` starts a
    /// comment line). Folders not mentioned keep their own name as class.
    #[arg(long = "classes", value_name = "FILE")]
    classes_file: Option<PathBuf>,
    /// Files folder FOLDER under class CLASS (repeatable; CLASS `-` skips the folder), after
    /// the mappings of --classes.
    #[arg(long = "group", value_name = "FOLDER=CLASS")]
    groups: Vec<String>,
    /// With two classes, the positive one (label 1). Default: the one named Malignant (any
    /// case), else the second in sorted order.
    #[arg(long, value_name = "NAME")]
    positive: Option<String>,
    /// With more than two classes, the ones forming the malignant group (the binary view of
    /// evaluation and prediction).
    #[arg(long, value_name = "NAME[,NAME...]", value_delimiter = ',')]
    malignant: Vec<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Resize {
    Stretch,
    Crop,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Re-hash every shard of a prepared dataset against its manifest.
    Verify {
        #[arg(value_name = "PREPARED_DIR")]
        dir: PathBuf,
    },
    /// Generate the synthetic lesion dataset (JPEGs in Benign/ and Malignant/).
    Synth {
        /// Folder to create.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Images per class.
        #[arg(long, default_value_t = 200, value_name = "N")]
        per_class: usize,
        /// Seed of the generator.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Replace an existing synthetic dataset. Never replaces a folder holding anything
        /// else (such as real photos).
        #[arg(long)]
        force: bool,
        /// No progress bar.
        #[arg(long, short)]
        quiet: bool,
    },
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq)]
enum Action {
    Prep(PrepOptions),
    Verify(PathBuf),
    Synth {
        out: PathBuf,
        per_class: usize,
        seed: u64,
        force: bool,
        progress: bool,
    },
}

impl Cli {
    /// What the command line asks for.
    // The library's one error type, so that the exit code follows it.
    #[allow(clippy::result_large_err)]
    fn action(&self) -> lesion::Result<Action> {
        match &self.command {
            Some(Command::Verify { dir }) => Ok(Action::Verify(dir.clone())),
            Some(Command::Synth {
                out,
                per_class,
                seed,
                force,
                quiet,
            }) => Ok(Action::Synth {
                out: out.clone(),
                per_class: *per_class,
                seed: *seed,
                force: *force,
                progress: !quiet,
            }),
            None => {
                let a = &self.prep;
                let (Some(input), Some(out)) = (&a.input, &a.out) else {
                    unreachable!("clap requires INPUT_DIR and --out without a subcommand")
                };
                let mut o = PrepOptions::new(input, out);
                o.size = a.size;
                o.resize = match a.resize {
                    Resize::Stretch => ResizePolicy::Stretch,
                    Resize::Crop => ResizePolicy::Crop,
                };
                if let (Some(k), Some(v)) = (a.folds, a.val) {
                    return Err(lesion::Error::InvalidOption(format!(
                        "--val {v} cannot be given with --folds {k}: with folds, the validation \
                         set of each run is its held-out fold"
                    )));
                }
                o.val = a.val.unwrap_or(o.val);
                o.test = a.test;
                o.folds = a.folds.unwrap_or(0);
                o.no_test = a.no_test;
                o.seed = a.seed;
                o.shard_size = a.shard_size;
                o.views = a.views;
                o.augment = !a.no_augment;
                o.strict = a.strict;
                o.force = a.force;
                o.max_pixels = a.max_pixels;
                o.threads = a.threads;
                o.progress = !a.quiet;
                o.classes_file = a.classes_file.clone();
                o.groups = a.groups.clone();
                o.positive = a.positive.clone();
                o.malignant = a.malignant.clone();
                Ok(Action::Prep(o))
            }
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    match cli.action()? {
        Action::Prep(opts) => {
            let summary = lesion::prep::run(&opts)?;
            println!("{summary}");
        }
        Action::Verify(dir) => {
            let report = lesion::prep::verify(&dir)?;
            if report.is_ok() {
                println!("{report}");
            }
            report.into_result()?;
        }
        Action::Synth {
            out,
            per_class,
            seed,
            force,
            progress,
        } => {
            let s = lesion::synth::generate(&out, per_class, seed, progress, force)?;
            println!(
                "wrote {} synthetic images ({} per class, {:.1} MB) into {}",
                s.images,
                s.per_class,
                s.bytes as f64 / 1e6,
                s.root.display()
            );
        }
    }
    Ok(())
}

lesion::main!(Cli, run);

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses arguments (the first is the program name) into an [`Action`].
    fn parse_args<I, T>(args: I) -> Result<Action, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Ok(Cli::try_parse_from(args)?
            .action()
            .expect("options without a conflict"))
    }

    fn prep(args: &[&str]) -> PrepOptions {
        match parse_args(args) {
            Ok(Action::Prep(o)) => o,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_match_the_library() {
        let o = prep(&["lesion-prep", "in", "--out", "out"]);
        assert_eq!(o, PrepOptions::new("in", "out"));
    }

    #[test]
    fn every_option_is_passed_through() {
        let o = prep(&[
            "lesion-prep",
            "in",
            "--out",
            "o",
            "--size",
            "128",
            "--resize",
            "crop",
            "--val",
            "0.1",
            "--test",
            "0.3",
            "--seed",
            "7",
            "--shard-size",
            "64",
            "--views",
            "3",
            "--strict",
            "--force",
            "--max-pixels",
            "1000",
            "--threads",
            "2",
            "--quiet",
        ]);
        assert_eq!(o.size, 128);
        assert_eq!(o.resize, ResizePolicy::Crop);
        assert_eq!((o.val, o.test, o.seed), (0.1, 0.3, 7));
        assert_eq!((o.shard_size, o.views), (64, 3));
        assert!(o.augment && o.strict && o.force && !o.progress);
        assert_eq!((o.max_pixels, o.threads), (1000, Some(2)));
        assert!(!prep(&["p", "in", "--out", "o", "--no-augment"]).augment);
    }

    #[test]
    fn class_options_are_passed_through() {
        let o = prep(&[
            "lesion-prep",
            "in",
            "--out",
            "o",
            "--classes",
            "map.txt",
            "--group",
            "mel=Malignant",
            "--group",
            "vasc=-",
            "--malignant",
            "mel,bcc",
            "--malignant",
            "akiec",
        ]);
        assert_eq!(o.classes_file, Some(PathBuf::from("map.txt")));
        assert_eq!(o.groups, ["mel=Malignant", "vasc=-"]);
        assert_eq!(o.malignant, ["mel", "bcc", "akiec"]);
        assert_eq!(o.positive, None);
        let o = prep(&["lesion-prep", "in", "--out", "o", "--positive", "melanoma"]);
        assert_eq!(o.positive.as_deref(), Some("melanoma"));
        assert!(o.groups.is_empty() && o.malignant.is_empty() && o.classes_file.is_none());
    }

    #[test]
    fn fold_options_are_passed_through() {
        let o = prep(&["lesion-prep", "in", "--out", "o", "--folds", "5"]);
        assert_eq!((o.folds, o.no_test), (5, false));
        assert_eq!(o.val, PrepOptions::new("in", "out").val);
        let o = prep(&[
            "lesion-prep",
            "in",
            "--out",
            "o",
            "--folds",
            "3",
            "--no-test",
        ]);
        assert_eq!((o.folds, o.no_test), (3, true));
        let d = prep(&["lesion-prep", "in", "--out", "o"]);
        assert_eq!((d.folds, d.no_test), (0, false));
        // --no-test needs --folds.
        let err =
            Cli::try_parse_from(["lesion-prep", "in", "--out", "o", "--no-test"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        // The fold is the validation set: --val with --folds is refused, naming both.
        let cli = Cli::try_parse_from([
            "lesion-prep",
            "in",
            "--out",
            "o",
            "--folds",
            "5",
            "--val",
            "0.1",
        ])
        .unwrap();
        let err = cli.action().unwrap_err();
        assert!(matches!(err, lesion::Error::InvalidOption(_)), "{err:?}");
        assert_eq!(err.exit_code(), 2);
        let msg = err.to_string();
        assert!(
            msg.contains("--val 0.1") && msg.contains("--folds 5"),
            "{msg}"
        );
    }

    #[test]
    fn subcommands() {
        assert_eq!(
            parse_args(["lesion-prep", "verify", "d"]).unwrap(),
            Action::Verify("d".into())
        );
        assert_eq!(
            parse_args(["lesion-prep", "synth", "--out", "s"]).unwrap(),
            Action::Synth {
                out: "s".into(),
                per_class: 200,
                seed: 42,
                force: false,
                progress: true
            }
        );
        let a = parse_args([
            "lesion-prep",
            "synth",
            "--out",
            "s",
            "--per-class",
            "5",
            "--seed",
            "1",
            "--force",
        ])
        .unwrap();
        assert!(matches!(
            a,
            Action::Synth {
                per_class: 5,
                seed: 1,
                force: true,
                ..
            }
        ));
    }

    #[test]
    fn usage_errors() {
        use clap::error::ErrorKind;
        let kind = |args: &[&str]| parse_args(args).unwrap_err().kind();
        assert_eq!(
            kind(&["lesion-prep", "in"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            kind(&["lesion-prep", "--out", "o"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(kind(&["lesion-prep"]), ErrorKind::MissingRequiredArgument);
        assert_eq!(
            kind(&["lesion-prep", "in", "--out", "o", "--resize", "squash"]),
            ErrorKind::InvalidValue
        );
        assert_eq!(
            kind(&["lesion-prep", "verify"]),
            ErrorKind::MissingRequiredArgument
        );
        // Exit code 2 for usage errors, as for bad input.
        assert_eq!(parse_args(["lesion-prep"]).unwrap_err().exit_code(), 2);
    }
}

//! Untrained run folders with more than two classes (N logits, softmax), for the tests of
//! prediction and serving: [`untrained_class_run`].

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use lesion::model::{self, ResNet18};
use lesion::run::checkpoint::{self, TrainState};
use lesion::run::{fixtures, read_config, write_config, BEST_FILE, THRESHOLD_FILE};

/// The three diagnoses of ISIC 2017, in label order.
pub const ISIC2017: [&str; 3] = ["melanoma", "nevus", "seborrheic_keratosis"];

/// Writes a run folder like [`fixtures::write_untrained_run`] (`size` px, `stretch`) whose
/// classes are `names` (more than two; `malignant` names its malignant group, possibly
/// none) and whose `best.safetensors` holds a head of `names.len()` logits with weights
/// seeded by `seed`. With `threshold`, a `threshold.json` for that checkpoint (as
/// lesion-eval writes on the malignant group's probability).
pub fn untrained_class_run(
    dir: &Path,
    size: usize,
    seed: u64,
    names: &[&str],
    malignant: &[&str],
    threshold: Option<f64>,
) -> PathBuf {
    assert!(
        names.len() > 2,
        "two classes: use fixtures::write_untrained_run"
    );
    let run = fixtures::write_untrained_run(dir, size, seed, threshold).unwrap();
    let varmap = VarMap::new();
    ResNet18::new(
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        0.25,
        names.len(),
    )
    .unwrap();
    model::init_seeded(&varmap, seed).unwrap();
    let best = run.join(BEST_FILE);
    checkpoint::save(
        &best,
        &model::snapshot(&varmap).unwrap(),
        &TrainState::new(seed, 0.0),
    )
    .unwrap();
    let mut config = read_config(&run).unwrap();
    config.class_names = names.iter().map(|s| s.to_string()).collect();
    config.malignant = malignant.iter().map(|s| s.to_string()).collect();
    write_config(&run, &config).unwrap();
    let t = run.join(THRESHOLD_FILE);
    if t.exists() {
        let sha = lesion::fsutil::sha256_file(&best).unwrap();
        crate::data::edit_json(&t, |v| v["checkpoint_sha256"] = sha.into());
    }
    run
}

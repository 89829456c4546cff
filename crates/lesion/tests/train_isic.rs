//! The train stage on real images: ISIC 2017 (../shared/data/isic2017-256) prepared at
//! 112 px, two epochs from random initialisation.

mod common;

use lesion::prep::{self, PrepOptions};
use lesion::train;

#[test]
#[ignore = "needs ../shared/data (run by CI with --include-ignored)"]
fn trains_two_epochs_on_isic2017_at_112px() {
    let images = common::isic2017();
    let dir = tempfile::tempdir().unwrap();
    let prepared = dir.path().join("prepared");
    let mut opts = PrepOptions::new(&images, &prepared);
    opts.size = 112;
    opts.progress = false;
    prep::run(&opts).unwrap();

    let run = dir.path().join("run");
    let cfg = common::cpu_train_config(&prepared, &run, 2, 32);
    let summary = train::train(&cfg, false).unwrap();
    println!("{summary}");
    assert_eq!(summary.epochs_completed, 2);
    for f in common::RUN_FILES {
        let meta = std::fs::metadata(run.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(meta.len() > 100, "{f} is suspiciously small");
    }
    let history = lesion::run::history::read(&run.join("history.csv")).unwrap();
    assert_eq!(history.len(), 2);
    for r in &history {
        println!("{r:?}");
        assert!(r.val_loss.is_finite() && r.train_loss.is_finite(), "{r:?}");
        // 1,650 training images per epoch; the val split is 550 images (104 malignant).
        assert!(r.val_auc.is_finite() && (0.0..=1.0).contains(&r.val_auc));
    }
}

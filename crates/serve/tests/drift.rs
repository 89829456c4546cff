//! Input-drift warnings of `lesion-serve`: per request in the JSON answer (and the
//! explain headers), none for an image like the training ones or for a run without a
//! profile.

mod common;

use common::*;
use image::{imageops, ImageFormat};
use lesion::drift::{InputProfile, ProfileBuilder};
use lesion::image_io::{resize_square, ResizePolicy};
use lesion::transforms::to_chw;

/// Writes into `run` the profile of synthetic photos (`lesion::synth`, seed 11, as
/// [`photo`] draws them) at 32 px, as `lesion-train` would of its training images.
fn write_profile(run: &std::path::Path) {
    let mut b = ProfileBuilder::default();
    for class in 0..2 {
        for index in 0..12 {
            let img = lesion::synth::render(class, index, 11);
            let chw = to_chw(&resize_square(&img, 32, ResizePolicy::Stretch));
            b.push(img.width(), img.height(), &chw, 32);
        }
    }
    b.finish().unwrap().write(run).unwrap();
}

#[test]
fn predict_answers_carry_drift_warnings_for_odd_photos_only() {
    let dir = tempfile::tempdir().unwrap();
    let run = lesion::run::fixtures::write_untrained_run(&dir.path().join("run"), 32, 7, Some(0.5))
        .unwrap();
    let url = |server: &lesion_serve::Running, p: &str| format!("{}{p}", server.url());

    // A run without a profile: never a warning.
    let server = start(&options(&run));
    let wide = encode(
        &imageops::resize(
            &lesion::synth::render(0, 2, 11),
            4000,
            300,
            imageops::FilterType::Triangle,
        ),
        ImageFormat::Png,
    );
    let r = post(&url(&server, "/v1/predict"), Some("image/png"), &wide);
    assert_eq!(r.status, 200);
    assert_eq!(r.json().get("warnings"), None, "{}", r.json());
    drop(server);

    write_profile(&run);
    assert!(InputProfile::read(&run).unwrap().is_some());
    let server = start(&options(&run));
    // A training photo: no warning.
    let r = post(
        &url(&server, "/v1/predict"),
        Some("image/jpeg"),
        &photo(1, 3),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json().get("warnings"), None, "{}", r.json());
    // 4000x300: the aspect ratio is far outside the training range.
    let r = post(&url(&server, "/v1/predict"), Some("image/png"), &wide);
    assert_eq!(r.status, 200);
    let j = r.json();
    let warnings: Vec<&str> = j["warnings"]
        .as_array()
        .unwrap_or_else(|| panic!("no warnings: {j}"))
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("aspect ratio 13.33 (4000x300) is outside the training range")),
        "{warnings:?}"
    );
    let ex = post(&url(&server, "/v1/explain"), Some("image/png"), &wide);
    assert_eq!(ex.status, 200);
    assert!(
        ex.header("x-lesion-warnings")
            .is_some_and(|h| h.contains("aspect ratio 13.33")),
        "{:?}",
        ex.header("x-lesion-warnings")
    );
    // The page shows them.
    let page = get(&url(&server, "/"));
    let html = String::from_utf8_lossy(&page.body);
    assert!(
        html.contains("id=\"drift\"") && html.contains("showDrift(p.warnings"),
        "the page has a place for the warnings"
    );
}

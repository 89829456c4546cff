//! The page of lesion-serve in a real browser: headless Chromium driven through
//! chromedriver's WebDriver HTTP API uploads a photo through the file input and waits for
//! the probability, the label and the heatmap. Saves /tmp/lesion-serve-screenshot.png.
//!
//! Uses a run with random weights and a generated photo unless `LESION_SERVE_RUN` names a
//! trained run and `LESION_SERVE_PHOTO` a photo (e.g. after `just demo`).

mod common;
#[path = "../../lesion/tests/support/webdriver.rs"]
mod webdriver;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use webdriver::{Browser, ELEMENT};

#[test]
#[ignore = "needs chromium and chromium-driver (apt-get install chromium chromium-driver)"]
fn page_uploads_a_photo_and_shows_probability_label_and_heatmap() {
    let dir = tempfile::tempdir().unwrap();
    let run = std::env::var_os("LESION_SERVE_RUN")
        .map_or_else(|| run_dir(dir.path(), 112), PathBuf::from);
    let server = start(&options(&run));
    let photo_path = match std::env::var_os("LESION_SERVE_PHOTO") {
        Some(p) => PathBuf::from(p),
        None => {
            let p = dir.path().join("malignant_lesion.jpg");
            std::fs::write(&p, photo(1, 2)).unwrap();
            p
        }
    };

    let browser = Browser::start(1280, 1000);
    browser.open(&server.url());

    let input = browser.send(
        "POST",
        "/element",
        Some(json!({"using": "css selector", "value": "#file"})),
    );
    let input = input[ELEMENT].as_str().unwrap().to_string();
    browser.send(
        "POST",
        &format!("/element/{input}/value"),
        Some(json!({"text": photo_path.to_string_lossy()})),
    );

    let script = r#"
        const $ = (id) => document.getElementById(id);
        const h = $("heatmap"), d = $("disclaimer");
        return {
          probability: $("probability").textContent,
          label: $("label").textContent,
          error: $("error").textContent,
          model: $("model").textContent,
          heatmap: {complete: h.complete, w: h.naturalWidth, h: h.naturalHeight,
                    src: h.getAttribute("src") || ""},
          preview: $("preview").naturalWidth,
          disclaimer: d.innerText,
          disclaimerTop: d.getBoundingClientRect().top,
          disclaimerVisible: d.offsetWidth > 0 && d.offsetHeight > 0,
        };"#;
    let deadline = Instant::now() + Duration::from_secs(90);
    let page = loop {
        let page = browser.execute(script);
        assert_eq!(page["error"], "", "the page shows an error: {page}");
        let done = page["probability"]
            .as_str()
            .is_some_and(|p| p.ends_with('%'))
            && page["heatmap"]["complete"] == true
            && page["heatmap"]["w"].as_u64().unwrap_or(0) > 0;
        if done {
            break page;
        }
        assert!(Instant::now() < deadline, "no result within 90 s: {page}");
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("page state: {page}");
    let shown = page["probability"].as_str().unwrap();
    let pct: f64 = shown
        .trim_start_matches("> ")
        .trim_start_matches("< ")
        .trim_end_matches('%')
        .parse()
        .unwrap();
    assert!((0.0..=100.0).contains(&pct), "{page}");
    let label = page["label"].as_str().unwrap();
    assert!(label == "Benign" || label == "Malignant", "{page}");
    assert!(page["heatmap"]["src"]
        .as_str()
        .unwrap()
        .starts_with("blob:"));
    assert!(page["preview"].as_u64().unwrap() > 0, "preview not shown");
    assert!(
        page["model"].as_str().unwrap().contains("threshold"),
        "{page}"
    );
    assert!(page["disclaimer"]
        .as_str()
        .unwrap()
        .contains("Research tool, not a diagnosis"));
    assert_eq!(page["disclaimerVisible"], true);
    let top = page["disclaimerTop"].as_f64().unwrap();
    assert!(
        (0.0..1000.0).contains(&top),
        "disclaimer off screen ({top})"
    );

    // The label on the page is the API's answer for the same bytes.
    let api = post(
        &format!("{}/v1/predict", server.url()),
        Some("image/jpeg"),
        &std::fs::read(&photo_path).unwrap(),
    )
    .json();
    assert_eq!(api["label"], label);
    let api_pct = api["probability"].as_f64().unwrap() * 100.0;
    match &shown[..2] {
        "> " => assert!(api_pct >= 99.95, "{shown} vs {api_pct}"),
        "< " => assert!(api_pct < 0.05, "{shown} vs {api_pct}"),
        _ => assert!((api_pct - pct).abs() < 0.051, "{shown} vs {api_pct}"),
    }

    let png = browser.screenshot();
    let img = image::load_from_memory(&png).unwrap().to_rgb8();
    let distinct: std::collections::HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    assert!(distinct.len() > 100, "the screenshot looks blank");
    std::fs::write("/tmp/lesion-serve-screenshot.png", &png).unwrap();
    println!(
        "screenshot: /tmp/lesion-serve-screenshot.png ({}x{})",
        img.width(),
        img.height()
    );
}

//! The page of lesion-serve in a real browser: headless Chromium driven through
//! chromedriver's WebDriver HTTP API uploads a photo through the file input and waits for
//! the probability, the label and the heatmap (and, for a run with three classes, the bar per
//! class). Saves /tmp/lesion-serve-screenshot.png and /tmp/lesion-serve-classes-screenshot.png.
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

#[test]
#[ignore = "needs chromium and chromium-driver (apt-get install chromium chromium-driver)"]
fn page_shows_every_class_as_bars_sorted_by_probability_with_the_decision() {
    let dir = tempfile::tempdir().unwrap();
    let names = testkit::classes::ISIC2017;
    let run = testkit::classes::untrained_class_run(
        &dir.path().join("r"),
        112,
        5,
        &names,
        &["melanoma"],
        Some(0.3),
    );
    let server = start(&options(&run));
    let photo_path = dir.path().join("lesion.jpg");
    std::fs::write(&photo_path, photo(1, 2)).unwrap();

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
    let script = r##"
        const $ = (id) => document.getElementById(id);
        const h = $("heatmap");
        const rows = [...document.querySelectorAll("#class-bars li")].map((li) => ({
          name: li.querySelector(".name").firstChild.textContent,
          value: li.querySelector(".value").textContent,
          width: li.querySelector(".fill").style.width,
          text: li.innerText,
        }));
        return {
          title: $("title").textContent,
          caption: $("verdict-caption").textContent,
          probability: $("probability").textContent,
          label: $("label").textContent,
          decision: $("decision").textContent,
          barHidden: $("bar").hidden,
          listHidden: $("class-bars").hidden,
          listName: $("class-bars").getAttribute("aria-label"),
          rows,
          error: $("error").textContent,
          heatmap: {complete: h.complete, w: h.naturalWidth},
          heatmapCaption: $("heatmap-caption").textContent,
        };"##;
    let deadline = Instant::now() + Duration::from_secs(90);
    let page = loop {
        let page = browser.execute(script);
        assert_eq!(page["error"], "", "the page shows an error: {page}");
        let done = page["rows"].as_array().is_some_and(|r| r.len() == 3)
            && page["heatmap"]["complete"] == true
            && page["heatmap"]["w"].as_u64().unwrap_or(0) > 0
            && page["heatmapCaption"]
                .as_str()
                .is_some_and(|c| c.contains("evidence for"));
        if done {
            break page;
        }
        assert!(Instant::now() < deadline, "no result within 90 s: {page}");
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("page state: {page}");
    let api = post(
        &format!("{}/v1/predict", server.url()),
        Some("image/jpeg"),
        &std::fs::read(&photo_path).unwrap(),
    )
    .json();
    assert_eq!(page["title"], "lesion — skin-lesion classifier (3 classes)");
    assert_eq!(page["listHidden"], false);
    assert_eq!(page["barHidden"], false, "a malignant group shows its bar");
    assert_eq!(page["label"], api["label"]);
    let top = api["top_class"].as_str().unwrap();
    assert_eq!(
        page["caption"].as_str().unwrap(),
        format!("Most probable class: {top}")
    );
    // Bars: most probable first, each with its value as text, as the API gives them.
    let mut expect: Vec<(&str, f64)> = names
        .iter()
        .map(|n| (*n, api["probabilities"][n].as_f64().unwrap()))
        .collect();
    expect.sort_by(|a, b| b.1.total_cmp(&a.1));
    let rows = page["rows"].as_array().unwrap();
    // The page's percentage rule (lesion::display's bounds).
    let percent = |q: f64| match q {
        q if q < 1e-4 => "< 0.01%".to_string(),
        q if q > 1.0 - 1e-4 => "> 99.99%".to_string(),
        q => format!("{:.2}%", 100.0 * q),
    };
    for (row, (name, q)) in rows.iter().zip(&expect) {
        assert_eq!(row["name"], *name, "{page}");
        assert_eq!(row["value"], percent(*q), "{page}");
        assert_eq!(row["width"], format!("{:.1}%", 100.0 * q), "{page}");
        assert!(row["text"].as_str().unwrap().contains(&percent(*q)));
    }
    assert_eq!(rows[0]["name"], top, "{page}");
    assert!(rows
        .iter()
        .any(|r| r["text"].as_str().unwrap().contains("melanoma (malignant)")));
    let decision = page["decision"].as_str().unwrap();
    let malignant = api["malignant"].as_bool().unwrap();
    assert!(decision.contains("threshold 0.3000"), "{decision}");
    assert!(
        decision.contains(if malignant {
            "→ malignant"
        } else {
            "→ benign"
        }),
        "{decision}"
    );
    assert_eq!(
        page["heatmapCaption"].as_str().unwrap(),
        format!(
            "Grad-CAM heatmap: where the evidence for {} came from (red = most)",
            api["label"].as_str().unwrap()
        )
    );
    let png = browser.screenshot();
    std::fs::write("/tmp/lesion-serve-classes-screenshot.png", &png).unwrap();
    println!("screenshot: /tmp/lesion-serve-classes-screenshot.png");
}

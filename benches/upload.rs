//! Upload → decode latency through HTTP: a real daemon on 127.0.0.1:0 over a
//! temp SQLite file, packages of about 5 MiB and 50 MiB uploaded with
//! `install/upload/package`, then read back with `decode/from_identifier`, as
//! Dify's local install does; and a bundle carrying two 5 MiB packages.
//! Every upload differs by one small file so each one is stored afresh.
//! Prints p50/p99 per step; asserts nothing about time.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{build_zip, spawn_app_with, TestApp, KEY};
use plugind::install::NoopInstallStep;

mod support;

use support::{noise, MANIFEST, MIB};

fn package(payload: &[u8], nonce: usize) -> Vec<u8> {
    build_zip(&[
        ("manifest.yaml", MANIFEST.as_bytes()),
        (
            "provider/bench.yaml",
            b"identity: {author: bench, name: bench, label: {en_US: B}, icon: icon.svg}\ntools: [tools/t.yaml]\n",
        ),
        (
            "tools/t.yaml",
            b"identity: {name: t, author: bench, label: {en_US: T}}\ndescription: {human: {en_US: T}, llm: T}\n",
        ),
        ("_assets/icon.svg", b"<svg/>"),
        ("nonce.txt", nonce.to_string().as_bytes()),
        ("data/payload.bin", payload),
    ])
}

fn bundle(packages: &[Vec<u8>]) -> Vec<u8> {
    let mut manifest = String::from(
        "name: b\nlabels: {en_US: B}\ndescription: {en_US: B}\nicon: icon.svg\nversion: 0.0.1\nauthor: bench\ntype: bundle\ndependencies:\n",
    );
    let names: Vec<String> = (0..packages.len()).map(|i| format!("p{i}")).collect();
    for n in &names {
        manifest.push_str(&format!("  - {{type: package, value: {{path: {n}}}}}\n"));
    }
    let mut files: Vec<(String, &[u8])> = vec![("manifest.yaml".into(), manifest.as_bytes())];
    for (n, p) in names.iter().zip(packages) {
        files.push((format!("_assets/{n}"), p));
    }
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (n.as_str(), *d)).collect();
    build_zip(&refs)
}

async fn post_file(app: &TestApp, route: &str, field: &str, data: Vec<u8>) -> serde_json::Value {
    let form = reqwest::multipart::Form::new()
        .part(
            field.to_owned(),
            reqwest::multipart::Part::bytes(data).file_name(field.to_owned()),
        )
        .text("verify_signature", "false");
    let r = app
        .client
        .post(app.url(route))
        .header("X-Api-Key", KEY)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], 0, "{body}");
    body
}

async fn decode(app: &TestApp, identifier: &str) {
    let r = app
        .client
        .get(app.url("decode/from_identifier"))
        .header("X-Api-Key", KEY)
        .json(&serde_json::json!({"plugin_unique_identifier": identifier}))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], 0, "{body}");
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{label:<34} n={:<3} p50 {:>8.2} ms  p99 {:>8.2} ms",
        samples.len(),
        ms(percentile(&samples, 0.50)),
        ms(percentile(&samples, 0.99)),
    );
}

async fn package_round(app: &TestApp, label: &str, size: usize, runs: usize, nonce: &mut usize) {
    let payload = noise(size, size as u64);
    let (mut up, mut dec, mut total) = (Vec::new(), Vec::new(), Vec::new());
    // One warm-up run, not counted.
    for i in 0..=runs {
        *nonce += 1;
        let pkg = package(&payload, *nonce);
        let start = Instant::now();
        let body = post_file(app, "install/upload/package", "dify_pkg", pkg).await;
        let uploaded = start.elapsed();
        let id = body["data"]["unique_identifier"]
            .as_str()
            .unwrap()
            .to_owned();
        let mid = Instant::now();
        decode(app, &id).await;
        let decoded = mid.elapsed();
        if i > 0 {
            up.push(uploaded);
            dec.push(decoded);
            total.push(uploaded + decoded);
        }
    }
    report(&format!("{label} upload"), up);
    report(&format!("{label} decode/from_identifier"), dec);
    report(&format!("{label} upload+decode"), total);
}

#[tokio::main]
async fn main() {
    let app = spawn_app_with(
        &["--max-plugin-package-size", &(64 * MIB).to_string()],
        Arc::new(NoopInstallStep),
    )
    .await;
    let mut nonce = 0;
    package_round(&app, "5 MiB", 5 * MIB, 20, &mut nonce).await;
    package_round(&app, "50 MiB", 50 * MIB, 6, &mut nonce).await;

    let payload = noise(5 * MIB, 7);
    let mut samples = Vec::new();
    for i in 0..=10 {
        let pkgs: Vec<Vec<u8>> = (0..2)
            .map(|_| {
                nonce += 1;
                package(&payload, nonce)
            })
            .collect();
        let data = bundle(&pkgs);
        let start = Instant::now();
        post_file(&app, "install/upload/bundle", "dify_bundle", data).await;
        if i > 0 {
            samples.push(start.elapsed());
        }
    }
    report("bundle of 2 × 5 MiB upload", samples);
}

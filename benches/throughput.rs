//! Criterion benchmarks, each beside its physical limit in the same run:
//!
//! - `verify/*`: verification alone vs raw HMAC-SHA256 over the same signed
//!   content (prepared key), from 256 B to 1 MiB;
//! - `parse/*`: verify + typed parse of every fixture vs raw HMAC over the
//!   same bytes, a parse into `serde_json::Value`, and a syntax-only pass;
//! - `layer/*`: one delivery through the layer and dispatch with `oneshot`
//!   vs the same request through a bare service that reads the body.
//!
//! `cargo bench --bench throughput && python3 benches/ratios.py` prints the
//! ratio tables that BENCHMARKS.md records.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use cariosan_webhooks::model::Envelope;
use cariosan_webhooks::verify::{sign, FixedClock, Secret, Verifier};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use tower::ServiceExt;

mod support;

use support::{raw_hmac, SECRET, T};

fn fixtures() -> Vec<(String, Vec<u8>)> {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../src/test_util/fixtures/events"
    );
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap() != "index.json")
        .map(|p| {
            (
                p.file_stem().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    // The compact form of the reply: what a sender emits.
    let compact = support::compact_reply();
    out.push(("message.created.reply.compact".into(), compact));
    out
}

fn verification(c: &mut Criterion) {
    let key = support::key();
    let secret = Secret::new(SECRET).unwrap();
    let verifier = Verifier::from_secret(secret.clone()).clock(FixedClock(T));
    let mut group = c.benchmark_group("verify");
    for size in [256usize, 1024, 16 * 1024, 256 * 1024, 1024 * 1024] {
        let body = vec![b'a'; size];
        let id = "evt_01JDB7Q3KX2W9V0M4T8R6N5P1A";
        let header = sign(std::slice::from_ref(&secret), id, T, &body);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("raw_hmac", size), &body, |b, body| {
            b.iter(|| {
                raw_hmac(
                    &key,
                    black_box(id.as_bytes()),
                    b"1795000000",
                    black_box(body),
                )
            })
        });
        group.bench_with_input(BenchmarkId::new("verify", size), &body, |b, body| {
            b.iter(|| {
                verifier
                    .verify(black_box(id), black_box(&header), black_box(body))
                    .unwrap()
            })
        });
    }
    group.finish();
}

fn parsing(c: &mut Criterion) {
    let key = support::key();
    let secret = Secret::new(SECRET).unwrap();
    let verifier = Verifier::from_secret(secret.clone()).clock(FixedClock(T));
    let mut group = c.benchmark_group("parse");
    for (name, body) in fixtures() {
        let envelope = Envelope::from_slice(&body).unwrap();
        let id = envelope.id.to_string();
        let header = sign(std::slice::from_ref(&secret), &id, T, &body);
        group.bench_with_input(BenchmarkId::new("raw_hmac", &name), &body, |b, body| {
            b.iter(|| {
                raw_hmac(
                    &key,
                    black_box(id.as_bytes()),
                    b"1795000000",
                    black_box(body),
                )
            })
        });
        group.bench_with_input(BenchmarkId::new("verify_parse", &name), &body, |b, body| {
            b.iter(|| {
                verifier
                    .verify(black_box(&id), black_box(&header), black_box(body))
                    .unwrap();
                Envelope::from_slice(black_box(body)).unwrap()
            })
        });
        group.bench_with_input(BenchmarkId::new("parse", &name), &body, |b, body| {
            b.iter(|| Envelope::from_slice(black_box(body)).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("value", &name), &body, |b, body| {
            b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(body)).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("syntax", &name), &body, |b, body| {
            b.iter(|| serde_json::from_slice::<serde::de::IgnoredAny>(black_box(body)).unwrap())
        });
    }
    group.finish();
}

fn layer(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let secret = Secret::new(SECRET).unwrap();
    let template = fixtures()
        .into_iter()
        .find(|(n, _)| n == "message.created.reply.compact")
        .unwrap()
        .1;
    let template = String::from_utf8(template).unwrap();
    let counter = AtomicU64::new(0);
    // Every request is a new delivery: the same id would be a duplicate.
    let request = || {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        support::signed_request(&secret, &template, &format!("evt_bench_{n:016}"))
    };
    let receiver = support::receiver();
    let bare = support::bare();
    let mut group = c.benchmark_group("layer");
    group.bench_function("bare", |b| {
        b.to_async(&runtime)
            .iter_batched(request, |r| bare.oneshot(r), BatchSize::SmallInput)
    });
    group.bench_function("receiver", |b| {
        b.to_async(&runtime).iter_batched(
            request,
            |r| async {
                let response = receiver.clone().oneshot(r).await.unwrap();
                assert_eq!(response.status(), 200);
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn config() -> Criterion {
    // Short, repeated runs beat one long one on a small noisy machine.
    Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_millis(1500))
        .sample_size(40)
}

criterion_group! {
    name = benches;
    config = config();
    targets = verification, parsing, layer
}
criterion_main!(benches);

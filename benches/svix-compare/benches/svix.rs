//! Verify + typed parse of the same compact 1 KiB-class `message.created`:
//! this crate against the svix crate's `Webhook::verify` (with the same
//! typed parse after it), and each verifier alone.

use std::hint::black_box;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cariosan_webhooks::model::Envelope;
use cariosan_webhooks::verify::{sign, Secret, Verifier};
use criterion::{criterion_group, criterion_main, Criterion};

const KEY: &[u8] = b"whsec_2CfBq8m1ZbLr0v5yHkQ7tE9uXw3aJs6N";

fn body() -> Vec<u8> {
    let reply = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/events/message.created.reply.json")).unwrap();
    serde_json::to_vec(&serde_json::from_slice::<serde_json::Value>(&reply).unwrap()).unwrap()
}

fn compare(c: &mut Criterion) {
    let body = body();
    let id = "evt_01JDB7R0AAAAAAAAAAAAAAAAAA";
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;

    let ours = Verifier::from_secret(Secret::new(KEY).unwrap());
    let header = sign(&[Secret::new(KEY).unwrap()], id, now, &body);

    let svix = svix::webhooks::Webhook::from_bytes(KEY.to_vec()).unwrap();
    let mut headers = http::HeaderMap::new();
    headers.insert("svix-id", id.parse().unwrap());
    headers.insert("svix-timestamp", now.to_string().parse().unwrap());
    headers.insert("svix-signature", svix.sign(id, now, &body).unwrap().parse().unwrap());

    let mut group = c.benchmark_group("svix");
    group.bench_function("ours_verify", |b| b.iter(|| ours.verify(black_box(id), black_box(&header), black_box(&body)).unwrap()));
    group.bench_function("svix_verify", |b| b.iter(|| svix.verify(black_box(&body), black_box(&headers)).unwrap()));
    group.bench_function("ours_verify_parse", |b| {
        b.iter(|| {
            ours.verify(black_box(id), black_box(&header), black_box(&body)).unwrap();
            Envelope::from_slice(black_box(&body)).unwrap()
        })
    });
    group.bench_function("svix_verify_parse", |b| {
        b.iter(|| {
            svix.verify(black_box(&body), black_box(&headers)).unwrap();
            Envelope::from_slice(black_box(&body)).unwrap()
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = compare
}
criterion_main!(benches);

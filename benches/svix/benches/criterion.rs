//! The svix comparison under criterion: `cargo bench --manifest-path
//! benches/svix/Cargo.toml` (add `--features ring` for the `ring` backend).
//! Each `svix/*` benchmark sits beside its `cariosan/*` counterpart in the
//! same group; `src/main.rs` prints the same pairs as interleaved ratios.

use std::hint::black_box;

use cariosan_webhooks_svix_bench::Subjects;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn svix_comparison(c: &mut Criterion) {
    let s = Subjects::new();
    let mut group = c.benchmark_group("svix");
    group.throughput(Throughput::Bytes(s.body.len() as u64));
    group.bench_function("cariosan/verify", |b| b.iter(|| s.our_verify()));
    group.bench_function("svix/verify", |b| b.iter(|| s.svix_verify()));
    group.bench_function("cariosan/verify_typed_parse", |b| {
        b.iter(|| {
            s.our_verify();
            s.typed();
        })
    });
    group.bench_function("svix/verify_typed_parse", |b| {
        b.iter(|| {
            s.svix_verify();
            s.typed();
        })
    });
    group.bench_function("svix/verify_value_parse", |b| {
        b.iter(|| {
            s.svix_verify();
            s.value();
        })
    });
    group.bench_function("cariosan/raw_hmac", |b| b.iter(|| black_box(s.raw_hmac())));
    group.bench_function("svix/raw_hmac", |b| b.iter(|| black_box(s.svix_raw_hmac())));
    group.finish();
}

criterion_group!(benches, svix_comparison);
criterion_main!(benches);

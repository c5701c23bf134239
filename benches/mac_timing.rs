//! Does verification time depend on where the first wrong MAC byte is?
//!
//! A dudect-style test: batches of verifications whose only wrong MAC byte
//! is the first (class A) or the last (class B) are timed in random
//! interleaved order, and Welch's t-test compares the two classes. |t| under
//! 4.5 is the usual "no leak detected" threshold. Run with
//! `cargo bench --bench mac_timing`; it is a benchmark, not a test, because
//! its verdict depends on a quiet machine.

use std::hint::black_box;
use std::time::Instant;

use cariosan_webhooks::verify::{sign, Secret, Verifier};

const BATCH: usize = 32;

struct Stats {
    n: f64,
    mean: f64,
    m2: f64,
    all: Vec<f64>,
}

impl Stats {
    fn new() -> Self {
        Self {
            n: 0.0,
            mean: 0.0,
            m2: 0.0,
            all: Vec::new(),
        }
    }
    fn push(&mut self, x: f64) {
        self.n += 1.0;
        let delta = x - self.mean;
        self.mean += delta / self.n;
        self.m2 += delta * (x - self.mean);
        self.all.push(x);
    }
    fn variance(&self) -> f64 {
        self.m2 / (self.n - 1.0)
    }
    fn median(&mut self) -> f64 {
        self.all.sort_by(f64::total_cmp);
        self.all[self.all.len() / 2]
    }
    /// Drops the slowest 5 %: scheduler and interrupt noise.
    fn cropped(mut self) -> Self {
        self.all.sort_by(f64::total_cmp);
        let keep = self.all.len() * 95 / 100;
        let mut out = Stats::new();
        for &x in &self.all[..keep] {
            out.push(x);
        }
        out
    }
}

fn header_with_wrong_byte(good: &str, byte: usize) -> String {
    let mac_start = good.len() - 64;
    let mut mac = hex::decode(&good[mac_start..]).unwrap();
    mac[byte] ^= 0x01;
    format!("{}{}", &good[..mac_start], hex::encode(mac))
}

fn run(body_len: usize, samples: usize) {
    let secret = Secret::new("whsec_timing").unwrap();
    let body = vec![b'x'; body_len];
    let t = 1_800_000_000;
    let good = sign(std::slice::from_ref(&secret), "evt_timing", t, &body);
    let classes = [
        header_with_wrong_byte(&good, 0),
        header_with_wrong_byte(&good, 31),
    ];
    let verifier = Verifier::from_secret(secret);
    let (mut a, mut b) = (Stats::new(), Stats::new());
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..samples {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let class = (rng & 1) as usize;
        let header = &classes[class];
        let started = Instant::now();
        for _ in 0..BATCH {
            let verdict = verifier.verify_at(
                t,
                black_box("evt_timing"),
                black_box(header),
                black_box(&body),
            );
            assert!(verdict.is_err());
        }
        let nanos = started.elapsed().as_nanos() as f64 / BATCH as f64;
        if class == 0 {
            a.push(nanos)
        } else {
            b.push(nanos)
        }
    }
    let (mut a, mut b) = (a.cropped(), b.cropped());
    let t_stat = (a.mean - b.mean) / (a.variance() / a.n + b.variance() / b.n).sqrt();
    println!(
        "body {body_len:>5} B: first byte wrong median {:>8.1} ns, last byte wrong median {:>8.1} ns, ratio {:.4}, Welch t = {:+.2} over {} + {} samples -> {}",
        a.median(),
        b.median(),
        a.median() / b.median(),
        t_stat,
        a.n,
        b.n,
        if t_stat.abs() < 4.5 { "no timing difference detected" } else { "DIFFERENCE DETECTED" }
    );
}

fn main() {
    // `cargo test --benches` runs bench targets with --test (or no args):
    // keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let samples = if quick { 2_000 } else { 100_000 };
    for body_len in [0, 1024] {
        run(body_len, samples);
    }
}

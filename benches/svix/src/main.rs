//! The svix crate's `verify` against this crate's, on the same body and the
//! same MAC, timed in alternating batches in one process (medians of
//! per-round ratios, as `benches/interleaved.rs` does).
//!
//! `cargo run --release --manifest-path benches/svix/Cargo.toml`, and with
//! `--features ring` for the crate's `ring` HMAC backend (`-- --quick` for a
//! short smoke run). `cargo bench --manifest-path benches/svix/Cargo.toml`
//! runs the same operations under criterion.

use std::hint::black_box;

use cariosan_webhooks_svix_bench::{interleave, Subjects, BACKEND};

/// Times ours against svix's and prints a row: both times and the throughput
/// ratio.
fn row(name: &str, rounds: usize, batch: usize, ours: impl FnMut(), svix: impl FnMut()) {
    let (a, b, ratio) = interleave::pair(rounds, batch, ours, svix);
    println!(
        "| {name} | {:.2} µs | {:.2} µs | {:.2}× |",
        a / 1e3,
        b / 1e3,
        1.0 / ratio
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, batch) = if quick { (3, 50) } else { (41, 2000) };
    let s = Subjects::new();

    println!(
        "## svix vs cariosan-webhooks with the {BACKEND} HMAC, {} B `message.created`\n",
        s.body.len()
    );
    println!(
        "| operation | cariosan-webhooks | svix | svix time / ours (= our throughput ÷ svix's) |"
    );
    println!("|---|---|---|---|");
    let our_verify_parse = || {
        s.our_verify();
        s.typed();
    };
    row(
        "verify",
        rounds,
        batch,
        || s.our_verify(),
        || s.svix_verify(),
    );
    row(
        "verify + typed parse",
        rounds,
        batch,
        our_verify_parse,
        || {
            s.svix_verify();
            s.typed();
        },
    );
    row(
        "ours: verify + typed parse; svix: verify + parse into `Value`",
        rounds,
        batch,
        our_verify_parse,
        || {
            s.svix_verify();
            s.value();
        },
    );
    // Why: the HMAC implementations alone, over the same content.
    row(
        "raw HMAC-SHA256 (ours: `hmac` + `sha2`, key prepared once; svix: `hmac-sha256`)",
        rounds,
        batch,
        || {
            black_box(s.raw_hmac());
        },
        || {
            black_box(s.svix_raw_hmac());
        },
    );
}

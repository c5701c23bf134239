//! The headline ratios, measured so that machine noise cancels: each pair
//! of operations is timed in alternating batches (A B, B A, ...) in one
//! process, and the median of the per-round ratios is reported with the
//! median time of each side. `cargo bench --bench interleaved`.

use std::hint::black_box;

use cariosan_webhooks::model::Envelope;
use cariosan_webhooks::verify::{sign, FixedClock, Secret, Verifier};
use tower::ServiceExt;

mod support;

use support::{compact_reply, raw_hmac, SECRET, T};
const ROUNDS: usize = 41;

/// [`support::interleave::pair`] over this bench's rounds.
fn pair(batch: usize, a: impl FnMut(), b: impl FnMut()) -> (f64, f64, f64) {
    support::interleave::pair(ROUNDS, batch, a, b)
}

fn show(ns: f64) -> String {
    if ns >= 1000.0 {
        format!("{:.2} µs", ns / 1000.0)
    } else {
        format!("{ns:.0} ns")
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("interleaved: run with `cargo bench --bench interleaved`");
        return;
    }
    #[cfg(target_arch = "x86_64")]
    let sha_extensions = std::arch::is_x86_feature_detected!("sha");
    #[cfg(not(target_arch = "x86_64"))]
    let sha_extensions = false;
    if sha_extensions {
        println!("This CPU has SHA extensions: the ratios below are the SHA-NI ones.\n");
    } else {
        println!("This CPU has no SHA extensions (or is not x86_64): SHA-256 runs in software, so the ratios below understate what the parse and the bookkeeping cost where SHA-NI is; `--bench instructions` gives CPU-independent counts.\n");
    }
    let key = support::key();
    let secret = Secret::new(SECRET).unwrap();
    let verifier = Verifier::from_secret(secret.clone()).clock(FixedClock(T));
    let id = "evt_01JDB7R0AAAAAAAAAAAAAAAAAA";

    println!("## Verification vs raw HMAC-SHA256 over the same signed content\n");
    println!("| body | raw HMAC | verify | verify / raw (time) | verify throughput / raw |");
    println!("|---|---|---|---|---|");
    for size in [256usize, 1024, 16 * 1024, 256 * 1024, 1024 * 1024] {
        let body = vec![b'a'; size];
        let header = sign(std::slice::from_ref(&secret), id, T, &body);
        let batch = (4_000_000 / size).clamp(4, 2000);
        let (v, r, ratio) = pair(
            batch,
            || {
                black_box(
                    verifier
                        .verify(black_box(id), black_box(&header), black_box(&body))
                        .unwrap(),
                );
            },
            || {
                black_box(raw_hmac(
                    &key,
                    black_box(id.as_bytes()),
                    b"1795000000",
                    black_box(&body),
                ));
            },
        );
        println!(
            "| {size} B | {} | {} | {ratio:.3} | {:.1} % |",
            show(r),
            show(v),
            100.0 / ratio
        );
    }

    let body = compact_reply();
    let header = sign(std::slice::from_ref(&secret), id, T, &body);
    println!(
        "\n## The {} B compact `message.created` reply\n",
        body.len()
    );
    println!("| operation | time | limit | time | ratio |");
    println!("|---|---|---|---|---|");
    let verify_parse = || {
        verifier
            .verify(black_box(id), black_box(&header), black_box(&body))
            .unwrap();
        black_box(Envelope::from_slice(black_box(&body)).unwrap());
    };
    let raw = || {
        black_box(raw_hmac(
            &key,
            black_box(id.as_bytes()),
            b"1795000000",
            black_box(&body),
        ));
    };
    let (a, b, ratio) = pair(2000, verify_parse, raw);
    println!(
        "| verify + typed parse | {} | raw HMAC | {} | {ratio:.2}× |",
        show(a),
        show(b)
    );
    let naive = || {
        black_box(raw_hmac(
            &key,
            black_box(id.as_bytes()),
            b"1795000000",
            black_box(&body),
        ));
        black_box(serde_json::from_slice::<serde_json::Value>(black_box(&body)).unwrap());
    };
    let (a, b, ratio) = pair(2000, naive, raw);
    println!(
        "| naive: HMAC + parse into `Value` | {} | raw HMAC | {} | {ratio:.2}× |",
        show(a),
        show(b)
    );
    let typed = || {
        black_box(Envelope::from_slice(black_box(&body)).unwrap());
    };
    let value = || {
        black_box(serde_json::from_slice::<serde_json::Value>(black_box(&body)).unwrap());
    };
    let (a, b, ratio) = pair(2000, typed, value);
    println!(
        "| typed parse | {} | parse into `Value` | {} | {ratio:.2}× |",
        show(a),
        show(b)
    );
    let syntax = || {
        black_box(serde_json::from_slice::<serde::de::IgnoredAny>(black_box(&body)).unwrap());
    };
    let (a, b, ratio) = pair(2000, typed, syntax);
    println!(
        "| typed parse | {} | syntax only | {} | {ratio:.2}× |",
        show(a),
        show(b)
    );

    // Whole deliveries through tower, each a new delivery id.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let text = String::from_utf8(body.clone()).unwrap();
    let mut n = 0u64;
    let mut request = move || {
        n += 1;
        support::signed_request(&secret, &text, &format!("evt_bench_{n:018}"))
    };
    let requests: Vec<_> = (0..(ROUNDS + 2) * 500).map(|_| request()).collect();
    let mut receiver_requests = requests.clone().into_iter();
    let mut bare_requests = requests.into_iter();
    let receiver = support::receiver();
    let bare = support::bare();
    let (a, b, _) = pair(
        500,
        || {
            let response = runtime
                .block_on(receiver.clone().oneshot(receiver_requests.next().unwrap()))
                .unwrap();
            assert_eq!(response.status(), 200);
        },
        || {
            black_box(
                runtime
                    .block_on(bare.oneshot(bare_requests.next().unwrap()))
                    .unwrap(),
            );
        },
    );
    println!("| a delivery through layer + dispatch (`oneshot`) | {} | a bare service reading the body | {} | +{} |", show(a), show(b), show(a - b));
}

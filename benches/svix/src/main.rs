//! The svix crate's `verify` against this crate's, on the same body and the
//! same MAC, timed in alternating batches in one process (medians of
//! per-round ratios, as `benches/interleaved.rs` does).
//!
//! `cargo run --release --manifest-path benches/svix/Cargo.toml`, and with
//! `--features ring` for the crate's `ring` HMAC backend (`-- --quick` for a
//! short smoke run).
//!
//! Both verifiers get the same key bytes and the same signed content
//! (`id.timestamp.body`); each reads the signature in its own header format
//! (svix: base64 in `svix-signature`; Cariosan: hex in a `t=...,v1=...`
//! header). Both parses are this crate's typed `Envelope`, so the parse
//! pair differs only in the verifier.

use std::hint::black_box;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use cariosan_webhooks::model::Envelope;
use cariosan_webhooks::verify::{sign, Secret, Verifier};
use hmac::{Hmac, Mac};
use sha2::Sha256;

const KEY: &[u8] = b"whsec_2CfBq8m1ZbLr0v5yHkQ7tE9uXw3aJs6N";
const ID: &str = "evt_01JDB7R0AAAAAAAAAAAAAAAAAA";

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Times `a` and `b` (`batch` calls each per round) in alternating order;
/// returns (median ns of a, median ns of b, median a/b).
fn pair(rounds: usize, batch: usize, mut a: impl FnMut(), mut b: impl FnMut()) -> (f64, f64, f64) {
    let time = |f: &mut dyn FnMut()| {
        let started = Instant::now();
        for _ in 0..batch {
            f();
        }
        started.elapsed().as_nanos() as f64 / batch as f64
    };
    time(&mut a);
    time(&mut b);
    let (mut ta, mut tb, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (x, y) = if round % 2 == 0 {
            let x = time(&mut a);
            (x, time(&mut b))
        } else {
            let y = time(&mut b);
            (time(&mut a), y)
        };
        ta.push(x);
        tb.push(y);
        ratios.push(x / y);
    }
    (median(ta), median(tb), median(ratios))
}

#[path = "../../support/json.rs"]
mod json;

/// The `message.created` reply fixture, compact and in its own key order,
/// as a sender emits it.
fn compact_reply() -> Vec<u8> {
    let reply = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/events/message.created.reply.json"
    ))
    .expect("run from the cariosan-webhooks repository");
    json::compact(&reply)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, batch) = if quick { (3, 50) } else { (41, 2000) };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let body = compact_reply();

    let secret = Secret::new(KEY).unwrap();
    let ours = Verifier::from_secret(secret.clone());
    let our_header = sign(std::slice::from_ref(&secret), ID, now, &body);

    let svix = svix::webhooks::Webhook::from_bytes(KEY.to_vec()).unwrap();
    let mut svix_headers = http::HeaderMap::new();
    svix_headers.insert("svix-id", ID.parse().unwrap());
    svix_headers.insert("svix-timestamp", now.to_string().parse().unwrap());
    svix_headers.insert(
        "svix-signature",
        svix.sign(ID, now, &body).unwrap().parse().unwrap(),
    );

    // The same MAC under both encodings, and both verifiers accept it.
    let mac_hex = our_header.split("v1=").nth(1).unwrap();
    let svix_signature = svix_headers["svix-signature"].to_str().unwrap();
    let raw: [u8; 32] = {
        let mut mac = Hmac::<Sha256>::new_from_slice(KEY).unwrap();
        for part in [ID.as_bytes(), b".", now.to_string().as_bytes(), b".", &body] {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    };
    assert_eq!(
        mac_hex,
        raw.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    assert!(svix_signature.starts_with("v1,"));
    ours.verify(ID, &our_header, &body).unwrap();
    svix.verify(&body, &svix_headers).unwrap();

    let backend = if cfg!(feature = "ring") {
        "`ring`"
    } else {
        "`hmac` + `sha2` (default)"
    };
    println!(
        "## svix vs cariosan-webhooks with the {backend} HMAC, {} B `message.created`\n",
        body.len()
    );
    println!(
        "| operation | cariosan-webhooks | svix | svix time / ours (= our throughput ÷ svix's) |"
    );
    println!("|---|---|---|---|");
    let (a, b, ratio) = pair(
        rounds,
        batch,
        || {
            black_box(
                ours.verify(black_box(ID), black_box(&our_header), black_box(&body))
                    .unwrap(),
            );
        },
        || {
            svix.verify(black_box(&body), black_box(&svix_headers))
                .unwrap()
        },
    );
    println!(
        "| verify | {:.2} µs | {:.2} µs | {:.2}× |",
        a / 1e3,
        b / 1e3,
        1.0 / ratio
    );
    let (a, b, ratio) = pair(
        rounds,
        batch,
        || {
            ours.verify(black_box(ID), black_box(&our_header), black_box(&body))
                .unwrap();
            black_box(Envelope::from_slice(black_box(&body)).unwrap());
        },
        || {
            svix.verify(black_box(&body), black_box(&svix_headers))
                .unwrap();
            black_box(Envelope::from_slice(black_box(&body)).unwrap());
        },
    );
    println!(
        "| verify + typed parse | {:.2} µs | {:.2} µs | {:.2}× |",
        a / 1e3,
        b / 1e3,
        1.0 / ratio
    );
    let (a, b, ratio) = pair(
        rounds,
        batch,
        || {
            ours.verify(black_box(ID), black_box(&our_header), black_box(&body))
                .unwrap();
            black_box(Envelope::from_slice(black_box(&body)).unwrap());
        },
        || {
            svix.verify(black_box(&body), black_box(&svix_headers))
                .unwrap();
            black_box(serde_json::from_slice::<serde_json::Value>(black_box(&body)).unwrap());
        },
    );
    println!("| ours: verify + typed parse; svix: verify + parse into `Value` | {:.2} µs | {:.2} µs | {:.2}× |", a / 1e3, b / 1e3, 1.0 / ratio);

    // Why: the HMAC implementations alone, over the same content.
    let content = [ID.as_bytes(), b".", now.to_string().as_bytes(), b".", &body].concat();
    let prepared = Hmac::<Sha256>::new_from_slice(KEY).unwrap();
    let (a, b, ratio) = pair(
        rounds,
        batch,
        || {
            let mut mac = prepared.clone();
            mac.update(black_box(&content));
            black_box(mac.finalize());
        },
        || {
            black_box(hmac_sha256::HMAC::mac(black_box(&content), KEY));
        },
    );
    println!("| raw HMAC-SHA256 (ours: `hmac` + `sha2`, key prepared once; svix: `hmac-sha256`) | {:.2} µs | {:.2} µs | {:.2}× |", a / 1e3, b / 1e3, 1.0 / ratio);
}

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
use std::time::{SystemTime, UNIX_EPOCH};

use cariosan_webhooks::model::Envelope;
use cariosan_webhooks::verify::{sign, Secret, Verifier};
use hmac::{Hmac, Mac};
use sha2::Sha256;

const KEY: &[u8] = b"whsec_2CfBq8m1ZbLr0v5yHkQ7tE9uXw3aJs6N";
const ID: &str = "evt_01JDB7R0AAAAAAAAAAAAAAAAAA";

#[path = "../../support/interleave.rs"]
mod interleave;

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
    let our_verify = || {
        black_box(
            ours.verify(black_box(ID), black_box(&our_header), black_box(&body))
                .unwrap(),
        );
    };
    let svix_verify = || {
        svix.verify(black_box(&body), black_box(&svix_headers))
            .unwrap()
    };
    let typed = || {
        black_box(Envelope::from_slice(black_box(&body)).unwrap());
    };
    let value = || {
        black_box(serde_json::from_slice::<serde_json::Value>(black_box(&body)).unwrap());
    };
    let our_verify_parse = || {
        our_verify();
        typed();
    };
    row("verify", rounds, batch, our_verify, svix_verify);
    row(
        "verify + typed parse",
        rounds,
        batch,
        our_verify_parse,
        || {
            svix_verify();
            typed();
        },
    );
    row(
        "ours: verify + typed parse; svix: verify + parse into `Value`",
        rounds,
        batch,
        our_verify_parse,
        || {
            svix_verify();
            value();
        },
    );

    // Why: the HMAC implementations alone, over the same content.
    let content = [ID.as_bytes(), b".", now.to_string().as_bytes(), b".", &body].concat();
    let prepared = Hmac::<Sha256>::new_from_slice(KEY).unwrap();
    row(
        "raw HMAC-SHA256 (ours: `hmac` + `sha2`, key prepared once; svix: `hmac-sha256`)",
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
}

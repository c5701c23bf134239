//! Instruction counts per delivery, which this noisy machine cannot blur
//! and which do not depend on the CPU's SHA extensions: each operation runs
//! `N` times in a process of its own under `valgrind --tool=callgrind`, and
//! so does the same process with `N = 0` (start-up and set-up); the
//! difference over `N` is the operation's count.
//!
//! - `hmac`: raw HMAC-SHA256 over the signed content (the SHA-256 share);
//! - `verify`: the crate's verification of the same bytes;
//! - `syntax`: serde_json's syntax-only pass (`IgnoredAny`) over the body;
//! - `value`: a parse into `serde_json::Value` (the naive receiver's);
//! - `parse`: the typed parse (`Envelope::from_slice`);
//! - `delivery`: a whole delivery through layer + dispatch (`oneshot`, the
//!   in-memory store, a `message.created` handler that touches the payload).
//!
//! "The rest" is `delivery − verify − parse`: the layers, the run, the
//! store, the dispatch and the handler call.
//!
//! `cargo bench -p cariosan-webhooks-benches --bench instructions` (about a
//! minute; needs `valgrind`).

use std::hint::black_box;
use std::process::Command;

use cariosan_webhooks::model::Envelope;
use cariosan_webhooks::verify::{sign, FixedClock, Secret, Verifier};
use tower::ServiceExt;

mod support;

use support::{compact_reply, raw_hmac, REPLY_ID, SECRET, T};

const N: usize = 2_000;
const OPERATIONS: [&str; 6] = ["hmac", "verify", "syntax", "value", "parse", "delivery"];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--run") {
        run(&args[at + 1], args[at + 2].parse().unwrap());
        return;
    }
    if args.iter().any(|a| a == "--test") || !args.iter().any(|a| a == "--bench") {
        println!("instructions: run with `cargo bench --bench instructions`");
        return;
    }
    let counts: Vec<(&str, f64)> = OPERATIONS
        .iter()
        .map(|operation| {
            let per = (instructions(operation, N) - instructions(operation, 0)) as f64 / N as f64;
            (*operation, per)
        })
        .collect();
    let of = |name: &str| counts.iter().find(|(n, _)| *n == name).unwrap().1;
    let body = compact_reply();
    println!(
        "Instructions per delivery of the {} B reply (callgrind, {N} iterations):\n",
        body.len()
    );
    println!("| operation | instructions | ratio |");
    println!("|---|---|---|");
    let hmac = of("hmac");
    let syntax = of("syntax");
    println!("| raw HMAC-SHA256 (the SHA-256 share) | {hmac:.0} | 1.00× HMAC |");
    println!(
        "| verify | {:.0} | {:.2}× HMAC; {:.0} over it |",
        of("verify"),
        of("verify") / hmac,
        of("verify") - hmac
    );
    println!("| syntax-only pass (`IgnoredAny`) | {syntax:.0} | 1.00× syntax |");
    println!(
        "| parse into `serde_json::Value` | {:.0} | {:.2}× syntax |",
        of("value"),
        of("value") / syntax
    );
    println!(
        "| typed parse | {:.0} | {:.2}× syntax |",
        of("parse"),
        of("parse") / syntax
    );
    println!(
        "| a delivery through layer + dispatch | {:.0} | {:.2}× HMAC |",
        of("delivery"),
        of("delivery") / hmac
    );
    println!();
    println!("| a delivery, split | instructions | share |");
    println!("|---|---|---|");
    let delivery = of("delivery");
    let rest = delivery - of("verify") - of("parse");
    for (name, value) in [
        ("SHA-256 (raw HMAC)", hmac),
        ("verification over the HMAC", of("verify") - hmac),
        ("parse", of("parse")),
        ("everything else", rest),
    ] {
        println!(
            "| {name} | {value:.0} | {:.0} % |",
            value / delivery * 100.0
        );
    }
}

/// Instructions of this binary running `operation` `n` times, counted by
/// callgrind.
fn instructions(operation: &str, n: usize) -> u64 {
    let out = std::env::temp_dir().join(format!(
        "cariosan-callgrind-{}-{operation}-{n}.out",
        std::process::id()
    ));
    let status = Command::new("valgrind")
        .args(["--tool=callgrind", "--quiet"])
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(std::env::current_exe().unwrap())
        .args(["--run", operation, &n.to_string()])
        .status()
        .expect("valgrind is needed: apt-get install valgrind");
    assert!(status.success());
    let text = std::fs::read_to_string(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    text.lines()
        .find_map(|line| line.strip_prefix("totals: "))
        .or_else(|| text.lines().find_map(|line| line.strip_prefix("summary: ")))
        .and_then(|total| total.trim().parse().ok())
        .expect("callgrind wrote a total")
}

fn run(operation: &str, n: usize) {
    let body = compact_reply();
    let secret = Secret::new(SECRET).unwrap();
    let header = sign(std::slice::from_ref(&secret), REPLY_ID, T, &body);
    let verifier = Verifier::from_secret(secret.clone()).clock(FixedClock(T));
    let key = support::key();
    let template = String::from_utf8(body.clone()).unwrap();
    match operation {
        "hmac" => {
            for _ in 0..n {
                black_box(raw_hmac(
                    &key,
                    black_box(REPLY_ID.as_bytes()),
                    b"1795000000",
                    black_box(&body),
                ));
            }
        }
        "verify" => {
            for _ in 0..n {
                black_box(
                    verifier
                        .verify(REPLY_ID, black_box(&header), black_box(&body))
                        .unwrap(),
                );
            }
        }
        "syntax" => {
            for _ in 0..n {
                black_box(
                    serde_json::from_slice::<serde::de::IgnoredAny>(black_box(&body)).unwrap(),
                );
            }
        }
        "value" => {
            for _ in 0..n {
                black_box(serde_json::from_slice::<serde_json::Value>(black_box(&body)).unwrap());
            }
        }
        "parse" => {
            for _ in 0..n {
                black_box(Envelope::from_slice(black_box(&body)).unwrap());
            }
        }
        "delivery" => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let receiver = support::receiver();
            // Signed in every process alike, so that the signing cancels
            // out: a request per delivery, each a new id.
            let requests: Vec<_> = (0..N)
                .map(|k| support::signed_request(&secret, &template, &format!("evt_instr_{k:020}")))
                .collect();
            let counted = requests.len();
            runtime.block_on(async {
                for request in requests.into_iter().take(n) {
                    let response = receiver.clone().oneshot(request).await.unwrap();
                    assert_eq!(response.status(), 200);
                }
            });
            black_box(counted);
        }
        other => panic!("no operation {other}"),
    }
}

//! End-to-end load on loopback. Servers, each a process pinned to core 0
//! (the load generator runs on core 1):
//! a bare axum handler that reads the body; a naive hand-written receiver
//! (HMAC with the key set up per request, hex compared as text, a parse
//! into `serde_json::Value`, as twenty hand-written lines do); the layer over a handler that does nothing (the crate's own
//! cost); and the `receiver` example as a user deploys it (it also writes a
//! summary line per delivery), built with default features, with feature
//! `ring`, and with feature `postgres` against a local PostgreSQL cluster
//! the bench starts (each delivery a transaction that inserts its row;
//! PostgreSQL itself is not pinned, so it shares the cores with both). Loaded in turn by this process (keep-alive HTTP/1.1
//! connections, closed loop) with signed 1 KiB-class `message.created`
//! deliveries, each a new delivery id. Reports req/s, p50/p99 latency and
//! server CPU µs per request, and the ratios to bare, as medians over
//! repeated alternating runs.
//!
//! `cargo bench --bench e2e` (about 5 minutes; `-- --only <name part>`
//! loads bare axum and the servers whose name contains it). Bounded: every run stops
//! after its duration, and only 127.0.0.1 is addressed.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cariosan_webhooks::protocol::{DELIVERY_HEADER, SIGNATURE_HEADER};

mod support;

use support::load::{free_port, load, serve, signed_pool, stop, wait_for, Result};

#[path = "../tests/common/postgres_server.rs"]
#[allow(dead_code)]
mod postgres_server;

use support::SECRET;

const RUN: Duration = Duration::from_secs(3);
const REPEATS: usize = 3;
const CONNECTIONS: [usize; 3] = [2, 16, 64];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    for (flag, app) in [
        ("--serve-bare", bare as fn() -> axum::Router),
        ("--serve-naive", naive),
        ("--serve-layer", layer),
    ] {
        if let Some(at) = args.iter().position(|a| a == flag) {
            serve(args[at + 1].parse().unwrap(), app());
            return;
        }
    }
    if args.iter().any(|a| a == "--test") || !args.iter().any(|a| a == "--bench") {
        println!("e2e: run with `cargo bench --bench e2e`");
        return;
    }
    let receiver_default = build_receiver(&[], "receiver-default");
    let receiver_ring = build_receiver(&["--features", "ring"], "receiver-ring");
    let receiver_postgres = build_receiver(&["--features", "postgres"], "receiver-postgres");
    let database: std::sync::OnceLock<postgres_server::PostgresServer> = std::sync::OnceLock::new();

    support::load::pin_to_core_1();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let all: [(&str, &dyn Fn(SocketAddr) -> Command); 6] = [
        ("bare axum", &|addr| own_server("--serve-bare", addr)),
        ("naive verify + Value parse", &|addr| {
            own_server("--serve-naive", addr)
        }),
        ("layer, no-op handler", &|addr| {
            own_server("--serve-layer", addr)
        }),
        ("receiver example", &|addr| {
            receiver(&receiver_default, addr)
        }),
        ("receiver example, `ring`", &|addr| {
            receiver(&receiver_ring, addr)
        }),
        ("receiver example, PostgreSQL", &|addr| {
            let database = database.get_or_init(postgres_server::PostgresServer::start);
            // Every run starts from empty tables, as the in-memory runs do.
            let _ = Command::new("psql")
                .arg(database.url())
                .args([
                    "-q",
                    "-c",
                    "TRUNCATE cariosan_webhooks.handled_deliveries, receiver_effects",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let mut command = receiver(&receiver_postgres, addr);
            command.env("DATABASE_URL", database.url());
            command
        }),
    ];
    let only = args
        .iter()
        .position(|a| a == "--only")
        .map(|at| args[at + 1].as_str());
    // Bare axum first: the others' ratios are to it.
    let servers: Vec<_> = all
        .into_iter()
        .enumerate()
        .filter(|(at, (name, _))| *at == 0 || only.is_none_or(|part| name.contains(part)))
        .map(|(_, server)| server)
        .collect();
    // Every server process starts empty, so every request of a run is a new
    // delivery as long as a run stays within the pool (a repeated id would
    // be a cheap duplicate).
    let pool = Arc::new(signed_pool(250_000));
    let mut ran_out = false;

    println!("| connections | server | req/s | p50 | p99 | server CPU µs/req | server core busy | req/s vs bare | p99 vs bare |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for connections in CONNECTIONS {
        let mut runs: Vec<Vec<Result>> = servers.iter().map(|_| Vec::new()).collect();
        for _ in 0..REPEATS {
            for (at, (name, command)) in servers.iter().enumerate() {
                // Its concurrency bound (30, one pool connection each) sheds
                // a 64-connection closed loop with 503 overloaded by design.
                if name.contains("PostgreSQL") && connections > 30 {
                    continue;
                }
                let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
                let mut server = command(addr).spawn().unwrap();
                wait_for(addr);
                let next = Arc::new(AtomicUsize::new(0));
                let result = runtime.block_on(load(
                    addr,
                    RUN,
                    connections,
                    pool.clone(),
                    next.clone(),
                    &server,
                ));
                ran_out |= next.load(Ordering::Relaxed) >= pool.len();
                stop(&mut server);
                runs[at].push(result);
            }
        }
        let medians: Vec<Option<Result>> = runs
            .into_iter()
            .map(|runs| (!runs.is_empty()).then(|| Result::median(runs)))
            .collect();
        let bare = medians[0].as_ref().expect("bare axum always runs");
        for ((name, _), r) in servers.iter().zip(&medians) {
            let Some(r) = r else { continue };
            println!(
                "| {connections} | {name} | {:.0} | {:.0} µs | {:.0} µs | {:.1} | {:.0} % | {:.0} % | {:.2}× |",
                r.rps,
                r.p50,
                r.p99,
                r.cpu_us,
                r.rps * r.cpu_us / 1e4,
                r.rps / bare.rps * 100.0,
                r.p99 / bare.p99
            );
        }
    }
    if ran_out {
        println!("\nnote: a run used up the pool of pre-signed deliveries; its later requests were duplicates");
    }
}

/// Builds the `receiver` example with `features` and keeps the binary as
/// `name`, so that several builds can be loaded in one run.
fn build_receiver(features: &[&str], name: &str) -> String {
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "-p",
            "cariosan-webhooks",
            "--example",
            "receiver",
        ])
        .args(features)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(status.success());
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/examples");
    let kept = format!("{dir}/{name}");
    std::fs::copy(format!("{dir}/receiver"), &kept).unwrap();
    kept
}

fn own_server(flag: &str, addr: SocketAddr) -> Command {
    let mut command = Command::new("taskset");
    command
        .args(["-c", "0"])
        .arg(std::env::current_exe().unwrap())
        .args([flag, &addr.to_string()])
        .stdout(Stdio::null());
    command
}

fn receiver(binary: &str, addr: SocketAddr) -> Command {
    let mut command = Command::new("taskset");
    command
        .args(["-c", "0", binary])
        .env("CARIOSAN_WEBHOOK_SECRET", SECRET)
        .env("CARIOSAN_WEBHOOK_ADDR", addr.to_string())
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// The baseline: an axum POST handler that reads the body and answers 200.
fn bare() -> axum::Router {
    axum::Router::new().route(
        "/webhooks/cariosan",
        axum::routing::post(|body: Bytes| async move {
            std::hint::black_box(body);
            "ok"
        }),
    )
}

/// What a hand-written receiver does: the HMAC key set up on every
/// request, the MAC hex-encoded and compared as text, the timestamp checked,
/// then a parse into `serde_json::Value`. No idempotency, no budget.
fn naive() -> axum::Router {
    use hmac::{Hmac, Mac};
    axum::Router::new().route(
        "/webhooks/cariosan",
        axum::routing::post(|headers: http::HeaderMap, body: Bytes| async move {
            let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
            let (Some(id), Some(signature)) = (header(DELIVERY_HEADER), header(SIGNATURE_HEADER))
            else {
                return http::StatusCode::BAD_REQUEST;
            };
            let mut t = None;
            let mut macs = Vec::new();
            for element in signature.split(',') {
                match element.split_once('=') {
                    Some(("t", value)) => t = value.parse::<i64>().ok(),
                    Some(("v1", value)) => macs.push(value),
                    _ => {}
                }
            }
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            let Some(t) = t.filter(|t| (now - t).abs() <= 300) else {
                return http::StatusCode::UNAUTHORIZED;
            };
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
            mac.update(format!("{id}.{t}.").as_bytes());
            mac.update(&body);
            let expected = hex::encode(mac.finalize().into_bytes());
            if !macs.contains(&expected.as_str()) {
                return http::StatusCode::UNAUTHORIZED;
            }
            match serde_json::from_slice::<serde_json::Value>(&body) {
                Ok(value) => {
                    std::hint::black_box(value);
                    http::StatusCode::OK
                }
                Err(_) => http::StatusCode::BAD_REQUEST,
            }
        }),
    )
}

/// The crate's own cost: the layer (defaults: in-memory store, budget,
/// lease) over a `message.created` handler that does nothing.
fn layer() -> axum::Router {
    let webhooks = cariosan_webhooks::Webhooks::new().on_message_created(|event| async move {
        std::hint::black_box(&event.message.mentions);
        Ok(())
    });
    axum::Router::new().route(
        "/webhooks/cariosan",
        axum::routing::post_service(webhooks)
            .layer(cariosan_webhooks::CariosanWebhookLayer::new(SECRET)),
    )
}

//! End-to-end load on loopback: the `receiver` example and a bare axum
//! handler that reads the body, each a process pinned to core 0, loaded in
//! turn by this process (keep-alive HTTP/1.1 connections, closed loop) with
//! signed 1 KiB-class `message.created` deliveries, each a new delivery id.
//! Reports req/s, p50/p99 latency and server CPU µs per request, and the
//! receiver's ratio to bare, as medians over repeated alternating runs.
//!
//! `cargo bench --bench e2e` (about 2 minutes). Bounded: every run stops
//! after its duration, and only 127.0.0.1 is addressed.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cariosan_webhooks::verify::{sign, Secret};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

const SECRET: &str = "whsec_2CfBq8m1ZbLr0v5yHkQ7tE9uXw3aJs6N";
const RUN: Duration = Duration::from_secs(3);
const REPEATS: usize = 3;
const CONNECTIONS: [usize; 3] = [2, 16, 64];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--serve-bare") {
        serve_bare(args[at + 1].parse().unwrap());
        return;
    }
    if args.iter().any(|a| a == "--test") || !args.iter().any(|a| a == "--bench") {
        println!("e2e: run with `cargo bench --bench e2e`");
        return;
    }
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--example", "receiver"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(status.success());
    let receiver_bin = format!(
        "{}/target/release/examples/receiver",
        env!("CARGO_MANIFEST_DIR")
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // Every request to the receiver is a new delivery (a repeated id would be
    // a cheap duplicate); the bare handler may reuse them.
    let pool = Arc::new(signed_pool(750_000));
    let next_for_receiver = Arc::new(AtomicUsize::new(0));

    println!("| connections | server | req/s | p50 | p99 | server CPU µs/req | req/s vs bare | p99 vs bare |");
    println!("|---|---|---|---|---|---|---|---|");
    for connections in CONNECTIONS {
        let mut bare_runs = Vec::new();
        let mut receiver_runs = Vec::new();
        for _ in 0..REPEATS {
            for kind in ["bare", "receiver"] {
                let port = free_port();
                let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
                let mut server = match kind {
                    "bare" => Command::new("taskset")
                        .args(["-c", "0"])
                        .arg(std::env::current_exe().unwrap())
                        .args(["--serve-bare", &addr.to_string()])
                        .stdout(Stdio::null())
                        .spawn()
                        .unwrap(),
                    _ => Command::new("taskset")
                        .args(["-c", "0", &receiver_bin])
                        .env("CARIOSAN_WEBHOOK_SECRET", SECRET)
                        .env("CARIOSAN_WEBHOOK_ADDR", addr.to_string())
                        .env("RUST_LOG", "error")
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .unwrap(),
                };
                wait_for(addr);
                let next = match kind {
                    "bare" => Arc::new(AtomicUsize::new(0)),
                    _ => next_for_receiver.clone(),
                };
                let result = runtime.block_on(load(addr, connections, pool.clone(), next, &server));
                stop(&mut server);
                if kind == "bare" {
                    bare_runs.push(result)
                } else {
                    receiver_runs.push(result)
                }
            }
        }
        let bare = Result::median(bare_runs);
        let receiver = Result::median(receiver_runs);
        for (name, r) in [("bare axum", &bare), ("receiver example", &receiver)] {
            println!(
                "| {connections} | {name} | {:.0} | {:.0} µs | {:.0} µs | {:.1} | {:.0} % | {:.2}× |",
                r.rps,
                r.p50,
                r.p99,
                r.cpu_us,
                r.rps / bare.rps * 100.0,
                r.p99 / bare.p99
            );
        }
    }
    if next_for_receiver.load(Ordering::Relaxed) >= pool.len() {
        println!("\nnote: the pool of pre-signed deliveries ran out; later requests to the receiver were duplicates");
    }
}

struct Result {
    rps: f64,
    p50: f64,
    p99: f64,
    cpu_us: f64,
}

impl Result {
    /// The run with the median throughput.
    fn median(mut runs: Vec<Result>) -> Result {
        runs.sort_by(|a, b| a.rps.total_cmp(&b.rps));
        runs.swap_remove(runs.len() / 2)
    }
}

/// Signed deliveries, each with its own id, signed now (valid for the
/// tolerance: far longer than the bench).
fn signed_pool(count: usize) -> Vec<(String, String, Bytes)> {
    let template = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/events/message.created.reply.json"
    ))
    .unwrap();
    let compact =
        serde_json::to_string(&serde_json::from_slice::<serde_json::Value>(&template).unwrap())
            .unwrap();
    let secret = Secret::new(SECRET).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    (0..count)
        .map(|n| {
            let id = format!("evt_e2e_{n:020}");
            let body = compact.replace("evt_01JDB7R0AAAAAAAAAAAAAAAAAA", &id);
            let signature = sign(std::slice::from_ref(&secret), &id, now, body.as_bytes());
            (id, signature, Bytes::from(body))
        })
        .collect()
}

async fn load(
    addr: SocketAddr,
    connections: usize,
    pool: Arc<Vec<(String, String, Bytes)>>,
    next: Arc<AtomicUsize>,
    server: &Child,
) -> Result {
    let cpu_before = cpu_ticks(server.id());
    let started = Instant::now();
    let deadline = started + RUN;
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (pool, next) = (pool.clone(), next.clone());
            tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                stream.set_nodelay(true).unwrap();
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .unwrap();
                tokio::spawn(connection);
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let n = next.fetch_add(1, Ordering::Relaxed) % pool.len();
                    let (id, signature, body) = &pool[n];
                    let request = http::Request::post("/webhooks/cariosan")
                        .header("host", "127.0.0.1")
                        .header("content-type", "application/json")
                        .header("x-cariosan-delivery", id.as_str())
                        .header("x-cariosan-event", "message.created")
                        .header("x-cariosan-attempt", "1")
                        .header("x-cariosan-signature", signature.as_str())
                        .body(Full::new(body.clone()))
                        .unwrap();
                    let sent = Instant::now();
                    sender.ready().await.unwrap();
                    let response = sender.send_request(request).await.unwrap();
                    assert_eq!(response.status(), 200);
                    response.into_body().collect().await.unwrap();
                    latencies.push(sent.elapsed().as_micros() as u32);
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = cpu_ticks(server.id());
    latencies.sort_unstable();
    let at =
        |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)] as f64;
    let ticks_per_second = 100.0; // USER_HZ on Linux
    Result {
        rps: latencies.len() as f64 / elapsed,
        p50: at(0.50),
        p99: at(0.99),
        cpu_us: (cpu_after - cpu_before) as f64 / ticks_per_second * 1e6 / latencies.len() as f64,
    }
}

/// User plus system CPU ticks of a process, from /proc.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for(addr: SocketAddr) {
    let started = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stop(server: &mut Child) {
    let _ = server.kill();
    let _ = server.wait();
}

/// The baseline: an axum POST handler that reads the body and answers 200.
fn serve_bare(addr: SocketAddr) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let app = axum::Router::new().route(
            "/webhooks/cariosan",
            axum::routing::post(|body: Bytes| async move {
                std::hint::black_box(body);
                "ok"
            }),
        );
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        axum::serve(listener, app).await.unwrap();
    });
}

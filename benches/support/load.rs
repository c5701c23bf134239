//! Load on loopback for the end-to-end benches: pre-signed deliveries,
//! a closed loop of keep-alive HTTP/1.1 connections, latency and the server
//! process's CPU time.

use std::net::SocketAddr;
use std::process::Child;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cariosan_webhooks::protocol::{
    ATTEMPT_HEADER, DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER,
};
use cariosan_webhooks::verify::{sign, Secret};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use super::{REPLY_ID, SECRET};

pub struct Result {
    pub rps: f64,
    pub p50: f64,
    pub p99: f64,
    pub cpu_us: f64,
}

impl Result {
    /// The run with the median throughput.
    pub fn median(mut runs: Vec<Result>) -> Result {
        runs.sort_by(|a, b| a.rps.total_cmp(&b.rps));
        runs.swap_remove(runs.len() / 2)
    }
}

/// Signed deliveries, each with its own id, signed now (valid for the
/// tolerance: far longer than the bench).
pub fn signed_pool(count: usize) -> Vec<(String, String, Bytes)> {
    let compact = String::from_utf8(super::compact_reply()).unwrap();
    let secret = Secret::new(SECRET).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    (0..count)
        .map(|n| {
            let id = format!("evt_e2e_{n:020}");
            let body = compact.replace(REPLY_ID, &id);
            let signature = sign(std::slice::from_ref(&secret), &id, now, body.as_bytes());
            (id, signature, Bytes::from(body))
        })
        .collect()
}

pub async fn load(
    addr: SocketAddr,
    run: Duration,
    connections: usize,
    pool: Arc<Vec<(String, String, Bytes)>>,
    next: Arc<AtomicUsize>,
    server: &Child,
) -> Result {
    let cpu_before = cpu_ticks(server.id());
    let started = Instant::now();
    let deadline = started + run;
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
                        .header(DELIVERY_HEADER, id.as_str())
                        .header(EVENT_HEADER, "message.created")
                        .header(ATTEMPT_HEADER, "1")
                        .header(SIGNATURE_HEADER, signature.as_str())
                        .body(Full::new(body.clone()))
                        .unwrap();
                    let sent = Instant::now();
                    sender.ready().await.unwrap();
                    let response = sender.send_request(request).await.unwrap();
                    assert!(response.status().is_success(), "{}", response.status());
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

/// Pins this process to core 1, so that a server under test has core 0 to
/// itself. Threads started from here on inherit the affinity.
pub fn pin_to_core_1() {
    let pinned = std::process::Command::new("taskset")
        .args(["-p", "-c", "1", &std::process::id().to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    assert!(pinned, "taskset could not pin the load generator to core 1");
}

/// User plus system CPU ticks of a process, from /proc.
pub fn cpu_ticks(pid: u32) -> u64 {
    stat_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap())
}

/// User plus system CPU ticks in a `/proc/<pid>/stat` line.
pub fn stat_ticks(stat: &str) -> u64 {
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_for(addr: SocketAddr) {
    let started = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn stop(server: &mut Child) {
    let _ = server.kill();
    let _ = server.wait();
}

pub fn serve(addr: SocketAddr, app: axum::Router) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        axum::serve(listener, app).await.unwrap();
    });
}

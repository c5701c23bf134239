//! Allocations per delivery, counted by a counting global allocator: for
//! verification alone, the typed parse alone, and a whole delivery through
//! the layer and dispatch. `cargo bench --bench allocations`.

use std::hint::black_box;

use cariosan_webhooks::model::Envelope;
use cariosan_webhooks::verify::{sign, FixedClock, Secret, Verifier};
use tower::ServiceExt;

// dhat's allocator counts every allocation; the crate forbids unsafe code,
// so no hand-written GlobalAlloc.
#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

mod support;

use support::{SECRET, T};
const ROUNDS: usize = 1000;

fn counted<R>(mut f: impl FnMut(usize) -> R) -> (f64, f64) {
    f(usize::MAX); // warm up: lazy statics, first-use allocations
    if std::env::var_os("CARIOSAN_PROFILE").is_some() {
        for n in 0..ROUNDS {
            black_box(f(n));
        }
        return (0.0, 0.0);
    }
    let before = dhat::HeapStats::get();
    for n in 0..ROUNDS {
        black_box(f(n));
    }
    let after = dhat::HeapStats::get();
    let per = |a: u64, b: u64| (b - a) as f64 / ROUNDS as f64;
    (
        per(before.total_blocks, after.total_blocks),
        per(before.total_bytes, after.total_bytes),
    )
}

fn main() {
    // `CARIOSAN_PROFILE=1` runs the same deliveries without counting, for
    // `valgrind --tool=callgrind` (dhat then passes allocations through).
    let profiling = std::env::var_os("CARIOSAN_PROFILE").is_some();
    let _profiler = (!profiling).then(|| dhat::Profiler::builder().testing().build());
    let body = support::compact_reply();
    let text = String::from_utf8(body.clone()).unwrap();
    let secret = Secret::new(SECRET).unwrap();
    let id = "evt_01JDB7R0AAAAAAAAAAAAAAAAAA";
    let header = sign(std::slice::from_ref(&secret), id, T, &body);
    let verifier = Verifier::from_secret(secret.clone()).clock(FixedClock(T));

    let (verify_allocs, verify_bytes) = counted(|_| verifier.verify(id, &header, &body).unwrap());
    let (parse_allocs, parse_bytes) = counted(|_| Envelope::from_slice(&body).unwrap());

    // Requests are built before counting; only the delivery is counted.
    let requests: Vec<_> = (0..=ROUNDS)
        .map(|n| support::signed_request(&secret, &text, &format!("evt_alloc_{n:018}")))
        .collect();
    let mut requests = requests.into_iter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let service = support::receiver();
    let (delivery_allocs, delivery_bytes) = counted(|_| {
        let request = requests.next().unwrap();
        let response = runtime.block_on(service.clone().oneshot(request)).unwrap();
        assert_eq!(response.status(), 200);
    });

    println!(
        "allocations per operation, mean of {ROUNDS} ({} B message.created reply):",
        body.len()
    );
    println!("  verify                         {verify_allocs:>6.1} allocations {verify_bytes:>8.0} bytes");
    println!(
        "  typed parse                    {parse_allocs:>6.1} allocations {parse_bytes:>8.0} bytes"
    );
    println!("  delivery through layer+dispatch {delivery_allocs:>5.1} allocations {delivery_bytes:>8.0} bytes");
}

//! Timing two operations so that machine noise cancels: alternating batches
//! (A B, B A, ...) in one process, medians of the per-round ratios.

use std::time::Instant;

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Times `a` and `b` (each run `batch` times per round) for `rounds` rounds
/// in alternating order; returns (median ns of a, median ns of b, median
/// a/b).
pub fn pair(
    rounds: usize,
    batch: usize,
    mut a: impl FnMut(),
    mut b: impl FnMut(),
) -> (f64, f64, f64) {
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

//! The profiler's overhead on a CPU-bound workload, as figures (not a
//! timed test). Root. `cargo bench -p plumb-profile --bench overhead
//! [-- --quick]`.
//!
//! One spinning thread per CPU counts loop iterations (10,000 multiply-adds
//! each). Each round measures the workload's throughput without the
//! profiler and with it at 49, 99 and 999 Hz, interleaved, several
//! repetitions; medians are reported: both throughputs and the slowdown.
//! Samples received (in the profile, idle, filtered, lost) are compared
//! with the expected Hz × CPUs × seconds, and the time to read and
//! symbolize the profile is reported.

use plumb_profile::{profile, ProfileOptions};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Spin `threads` threads for `d`; iterations per second, all threads.
fn workload(threads: usize, d: Duration) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (stop, total) = (stop.clone(), total.clone());
            std::thread::spawn(move || {
                let mut n: u64 = 0;
                let mut x: u64 = 1;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..10_000 {
                        x = x
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                    }
                    n += 1;
                }
                std::hint::black_box(x);
                total.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    let t = Instant::now();
    std::thread::sleep(d);
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    total.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Row {
    hz: u32,
    without: Vec<f64>,
    with: Vec<f64>,
    slowdown: Vec<f64>,
    received: Vec<f64>,
    expected: Vec<f64>,
    samples: Vec<f64>,
    lost: Vec<f64>,
    symbolize_ms: Vec<f64>,
}

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("overhead: run as root (it loads BPF programs)");
        std::process::exit(3);
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let (secs, reps) = if quick { (1, 1) } else { (5, 3) };
    let d = Duration::from_secs(secs);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut rows: Vec<Row> = [49, 99, 999]
        .into_iter()
        .map(|hz| Row {
            hz,
            without: vec![],
            with: vec![],
            slowdown: vec![],
            received: vec![],
            expected: vec![],
            samples: vec![],
            lost: vec![],
            symbolize_ms: vec![],
        })
        .collect();
    let never = AtomicBool::new(false);
    for _ in 0..reps {
        for row in rows.iter_mut() {
            let base = workload(cpus, d);
            let opts = ProfileOptions {
                frequency: row.hz,
                // A little longer than the workload, so it covers it all.
                duration: d + Duration::from_millis(300),
                ..ProfileOptions::default()
            };
            let prof = std::thread::scope(|s| {
                let h = s.spawn(|| profile(&opts, &never));
                std::thread::sleep(Duration::from_millis(150));
                let with = workload(cpus, d);
                (with, h.join())
            });
            let (with, p) = prof;
            let p = match p {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => {
                    eprintln!("overhead: {e}");
                    std::process::exit(1);
                }
                Err(_) => {
                    eprintln!("overhead: the profiler thread failed");
                    std::process::exit(1);
                }
            };
            let c = &p.completeness;
            let secs = p.duration_ns as f64 / 1e9;
            row.without.push(base);
            row.with.push(with);
            row.slowdown.push((base - with) / base * 100.0);
            row.received.push(c.taken() as f64);
            row.expected.push(row.hz as f64 * p.cpus as f64 * secs);
            row.samples.push(c.samples as f64);
            row.lost.push((c.lost + c.missed) as f64);
            row.symbolize_ms.push(p.symbolize_ns as f64 / 1e6);
        }
    }
    println!(
        "CPU profiler overhead: {cpus} CPUs busy with a spinning workload, {secs} s per run, {reps} repetition(s), medians\n"
    );
    println!("| Hz | workload without profiler | with profiler | slowdown | samples received / expected | in the profile | lost | read + symbolize |");
    let note = "One iteration is 10,000 multiply-adds; k it/s is thousands of iterations per \
                second, all CPUs together. Expected counts every CPU for the whole profile, which starts 0.15 s before the \
                workload and ends 0.15 s after it. Idle CPUs take fewer clock samples than busy \
                ones (on the 2-CPU test machine, fully idle, 297 of 594 over 3 s), so received is \
                below expected by part of the idle time; busy CPUs give the full rate.";
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &mut rows {
        let rec = median(&mut r.received);
        let exp = median(&mut r.expected);
        println!(
            "| {} | {:.1} k it/s | {:.1} k it/s | {:.2}% | {:.0} / {:.0} ({:.1}%) | {:.0} | {:.0} | {:.1} ms |",
            r.hz,
            median(&mut r.without) / 1e3,
            median(&mut r.with) / 1e3,
            median(&mut r.slowdown),
            rec,
            exp,
            rec / exp * 100.0,
            median(&mut r.samples),
            median(&mut r.lost),
            median(&mut r.symbolize_ms)
        );
    }
    println!("\n{note}");
}

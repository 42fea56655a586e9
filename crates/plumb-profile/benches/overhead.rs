//! The profiler's overhead on a CPU-bound workload, as figures (not a
//! timed test). Root. `cargo bench -p plumb-profile --bench overhead
//! [-- --quick]`.
//!
//! One spinning thread per CPU counts loop iterations (10,000 multiply-adds
//! each). Each round measures the workload's throughput without the
//! profiler and with it at 49, 99 and 999 Hz, interleaved, several
//! repetitions. Each row is the repetition with the median slowdown, so
//! its figures belong together: both throughputs, the slowdown, samples
//! received (in the profile, idle, filtered, lost) against the expected
//! Hz × CPUs × seconds, and the time to read and symbolize the profile
//! (wall and CPU).

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

/// One repetition at one frequency.
struct Run {
    without: f64,
    with: f64,
    received: u64,
    expected: u64,
    samples: u64,
    lost: u64,
    symbolize_ms: f64,
    symbolize_cpu_ms: f64,
}

impl Run {
    fn slowdown(&self) -> f64 {
        (self.without - self.with) / self.without * 100.0
    }
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
    let freqs = [49, 99, 999];
    let mut runs: Vec<Vec<Run>> = freqs.iter().map(|_| Vec::new()).collect();
    let never = AtomicBool::new(false);
    for _ in 0..reps {
        for (hz, runs) in freqs.iter().zip(runs.iter_mut()) {
            let without = workload(cpus, d);
            let opts = ProfileOptions {
                frequency: *hz,
                // A little longer than the workload, so it covers it all.
                duration: d + Duration::from_millis(300),
                // The workload is this process's own threads.
                include_self: true,
                ..ProfileOptions::default()
            };
            let (with, p) = std::thread::scope(|s| {
                let h = s.spawn(|| profile(&opts, &never));
                std::thread::sleep(Duration::from_millis(150));
                let with = workload(cpus, d);
                (with, h.join())
            });
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
            runs.push(Run {
                without,
                with,
                received: c.taken(),
                expected: p.expected_samples(),
                samples: c.samples,
                lost: c.lost + c.missed,
                symbolize_ms: p.symbolize_ns as f64 / 1e6,
                symbolize_cpu_ms: p.symbolize_cpu_ns as f64 / 1e6,
            });
        }
    }
    println!(
        "CPU profiler overhead: {cpus} CPUs busy with a spinning workload, {secs} s per run, \
         {reps} repetition(s), the median run of each\n"
    );
    println!(
        "| Hz | workload without profiler | with profiler | slowdown | samples received / expected \
         | in the profile | lost | read + symbolize (wall / CPU) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (hz, mut runs) in freqs.iter().zip(runs) {
        runs.sort_by(|a, b| a.slowdown().total_cmp(&b.slowdown()));
        let r = &runs[runs.len() / 2];
        println!(
            "| {hz} | {:.1} k it/s | {:.1} k it/s | {:.2}% | {} / {} ({:.1}%) | {} | {} | {:.0} / {:.0} ms |",
            r.without / 1e3,
            r.with / 1e3,
            r.slowdown(),
            r.received,
            r.expected,
            r.received as f64 / r.expected.max(1) as f64 * 100.0,
            r.samples,
            r.lost,
            r.symbolize_ms,
            r.symbolize_cpu_ms,
        );
    }
    println!(
        "\nOne iteration is 10,000 multiply-adds; k it/s is thousands of iterations per second, \
         all CPUs together. Expected counts every CPU for the whole profile, which starts 0.15 s \
         before the workload and ends 0.15 s after it. Idle CPUs take fewer clock samples than \
         busy ones (on the 2-CPU test machine, fully idle, 297 of 594 over 3 s), so received is \
         below expected by part of the idle time; busy CPUs give the full rate. Read + symbolize \
         is wall time and the profiler thread's CPU time: on a shared machine the first is longer."
    );
}

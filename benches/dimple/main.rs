//! `cargo bench --bench dimple [GROUP]`: dimple's figures against plain SQLite,
//! measured in the same run on this machine.
//!
//! Groups: `capture` (write-time cost of the triggers, and cr-sqlite side by side),
//! `apply` (a fresh replica pulling 1M changes, timed and memory-measured in a child
//! process), `batch` (bytes per change uploaded), `requests` (a no-op sync among 50
//! replicas), `clone` (a snapshot clone of 1M changes, plain and encrypted), `many`
//! (10,000 replicas: a fresh pull and a no-op sync), `bounded` (20 rounds of 100k
//! updates with `compact --prune`). With no argument every group runs. Set `DIMPLE_BENCH_SCALE=0.1` for a
//! quick run at a tenth of the sizes (the goals then do not apply).

mod apply;
mod bounded;
mod capture;
mod clone;
mod crsqlite;
mod many;
mod netcost;
mod report;

/// Runs this bench binary in one of its hidden child modes (`cmd` holds the mode
/// and its arguments), so that its figures, peak RSS above all, are its own; returns
/// the figure named `name` of the one `key=value` line it prints.
pub fn child(mut cmd: std::process::Command, what: &str) -> impl Fn(&str) -> f64 {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{what} child failed: {}", String::from_utf8_lossy(&out.stderr));
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    let what = what.to_owned();
    move |name: &str| -> f64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")).map(|v| v.parse().unwrap()))
            .unwrap_or_else(|| panic!("{what} child said {line:?}"))
    }
}

use report::Table;
use std::time::Instant;

const GROUPS: [&str; 7] = ["capture", "apply", "batch", "requests", "clone", "many", "bounded"];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The hidden child mode of the `apply` group (see apply.rs).
    if args.first().map(String::as_str) == Some(apply::CHILD_ARG) {
        apply::child(&args[1..]);
        return;
    }
    if args.first().map(String::as_str) == Some(capture::CAPTURE_CHILD_ARG) {
        capture::capture_child(&args[1..]);
        return;
    }
    if args.first().map(String::as_str) == Some(capture::PUSH_CHILD_ARG) {
        capture::push_child(&args[1..]);
        return;
    }
    if args.first().map(String::as_str) == Some(clone::CHILD_ARG) {
        clone::child(&args[1..]);
        return;
    }
    // cargo passes `--bench`; anything else that is not a flag picks groups.
    let wanted: Vec<&str> = args.iter().map(String::as_str).filter(|a| !a.starts_with('-')).collect();
    for w in &wanted {
        if !GROUPS.iter().any(|g| g.contains(w)) {
            eprintln!("unknown group {w:?}; groups: {}", GROUPS.join(", "));
            std::process::exit(2);
        }
    }
    let run = |g: &str| wanted.is_empty() || wanted.iter().any(|w| g.contains(w));
    let scale = scale();
    println!("dimple benchmark");
    println!("machine: {}", report::machine());
    if scale != 1.0 {
        println!("scale: {scale} (DIMPLE_BENCH_SCALE; goals are for scale 1)");
    }
    println!();
    let started = Instant::now();
    let mut table = Table::default();
    let tmp = tempfile::Builder::new().prefix("dimple-bench").tempdir().expect("temp dir");
    // DIMPLE_BENCH_KEEP=1 keeps the databases and buckets for profiling by hand.
    let tmp_path = if std::env::var_os("DIMPLE_BENCH_KEEP").is_some() {
        let kept = tmp.keep();
        eprintln!("keeping {}", kept.display());
        kept
    } else {
        tmp.path().to_owned()
    };
    if run("capture") {
        capture::run(&tmp_path, scale, &mut table);
    }
    if run("apply") {
        apply::run(&tmp_path, scale, &mut table);
    }
    if run("batch") {
        netcost::batch(&tmp_path, scale, &mut table);
    }
    if run("requests") {
        netcost::requests(&tmp_path, &mut table);
    }
    if run("clone") {
        clone::run(&tmp_path, scale, &mut table);
    }
    if run("many") {
        many::run(&tmp_path, scale, &mut table);
    }
    if run("bounded") {
        bounded::run(&tmp_path, scale, &mut table);
    }
    println!();
    table.print();
    println!("\n(total bench time {:.0} s)", started.elapsed().as_secs_f64());
}

fn scale() -> f64 {
    std::env::var("DIMPLE_BENCH_SCALE").ok().and_then(|s| s.parse().ok()).filter(|s: &f64| *s > 0.0).unwrap_or(1.0)
}

/// `n` at the bench's scale, at least 1.
pub fn scaled(n: usize, scale: f64) -> usize {
    ((n as f64 * scale).round() as usize).max(1)
}

/// Runs `f` `n` times and returns the median of what it reports.
pub fn median<T: PartialOrd + Copy>(n: usize, mut f: impl FnMut() -> T) -> T {
    let mut v: Vec<T> = (0..n).map(|_| f()).collect();
    v.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
    v[v.len() / 2]
}

/// A tokio runtime for dimple's async pull and push (the CLI uses a current-thread one).
/// Pushes `r` to `bucket`; returns how many changes went up.
pub fn push_to(r: &mut dimple::Replica, bucket: &str) -> usize {
    let rt = runtime();
    let store = rt.block_on(dimple::open_store(bucket, None)).unwrap();
    rt.block_on(dimple::push(r, &store)).unwrap().changes
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

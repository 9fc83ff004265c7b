//! The harness shared by `benches/switch.rs` and `benches/bridge.rs`: our
//! own, small (`harness = false`).
//!
//! A [`Case`] has N sides, one a column, each a [`Runner`] or `None` where a
//! side has no faithful version of the case. [`measure`] warms each side up
//! and calibrates it to its own iteration count (a sample lasts
//! [`Config::sample_time`]), then takes [`Config::samples`] rounds; each round
//! runs every side once, and the side that goes first rotates round by round,
//! so that drift on a noisy machine hits all sides alike. Nothing is pinned.
//! A [`Summary`] is the median, minimum and p25–p75 of ns per op over the
//! samples, and the median minor page faults per op.
//!
//! [`Args::from_env`] reads the command line and the environment the same way
//! for every bench: `--bench` (cargo bench) measures for real, otherwise
//! (`cargo test --benches`) a minimal smoke run writes nothing;
//! `GREENHACK_BENCH_QUICK=1` takes 5 short samples; unknown `--flags` are
//! ignored; a positional word keeps only the cases whose name contains it.
//! [`write_report`] puts the markdown table and the JSON records (the schema
//! `scripts/bench-report` reads) in `target/bench-NAME.{md,json}`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// One side of a case: runs `n` operations and returns how long they took,
/// setup and checks excluded.
pub type Runner = Box<dyn FnMut(u64) -> Duration>;

/// A case: a row of the table.
pub struct Case {
    pub name: &'static str,
    /// (side name, its runner), in column order; `None` where the side has no
    /// faithful version of this case (a "—" cell, no JSON figure).
    pub sides: Vec<(&'static str, Option<Runner>)>,
}

impl Case {
    /// Pairs `runners` with the column names `sides`, in order.
    pub fn new<const N: usize>(
        name: &'static str,
        sides: [&'static str; N],
        runners: [Option<Runner>; N],
    ) -> Case {
        Case {
            name,
            sides: sides.into_iter().zip(runners).collect(),
        }
    }
}

pub struct Config {
    pub samples: usize,
    pub sample_time: Duration,
    pub warmup: Duration,
    /// Fewest ops per sample, whatever the calibration says.
    pub min_ops: u64,
    pub label: &'static str,
}

/// What the command line and the environment asked for.
pub struct Args {
    /// Run by `cargo bench` (`--bench`): measure and write the reports.
    pub bench_mode: bool,
    /// Positional words: keep only the cases whose name contains one.
    pub filters: Vec<String>,
    pub cfg: Config,
}

impl Args {
    pub fn from_env() -> Args {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let bench_mode = args.iter().any(|a| a == "--bench");
        let filters = args.into_iter().filter(|a| !a.starts_with('-')).collect();
        let quick = std::env::var("GREENHACK_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let cfg = if !bench_mode {
            Config {
                samples: 3,
                sample_time: Duration::from_micros(200),
                warmup: Duration::from_millis(1),
                min_ops: 1,
                label: "smoke run (not `--bench`)",
            }
        } else if quick {
            Config {
                samples: 5,
                sample_time: Duration::from_micros(500),
                warmup: Duration::from_millis(10),
                min_ops: 1,
                label: "quick run (GREENHACK_BENCH_QUICK)",
            }
        } else {
            Config {
                samples: 31,
                sample_time: Duration::from_millis(3),
                warmup: Duration::from_millis(200),
                min_ops: 1,
                label: "full run",
            }
        };
        Args {
            bench_mode,
            filters,
            cfg,
        }
    }

    /// The run's label for the report, with the filter if any.
    pub fn label(&self) -> String {
        if self.filters.is_empty() {
            self.cfg.label.to_string()
        } else {
            format!("{}, filter {:?}", self.cfg.label, self.filters)
        }
    }

    /// The start of the report's explanation line, up to "Ratios are of
    /// medians" (each bench goes on with its own ratios).
    pub fn preamble(&self, unit: &str) -> String {
        format!(
            "{}, {}: {} samples of ~{:?} per side, sides interleaved; \
             ns per {unit}: **median** (min; p25–p75). Ratios are of medians",
            std::env::consts::ARCH,
            self.label(),
            self.cfg.samples,
            self.cfg.sample_time
        )
    }

    /// The cases the filters keep, plus those named in `always` (which run
    /// whatever the filter). `None`, after saying so, when the filters match
    /// none of the others.
    pub fn select(&self, cases: Vec<Case>, always: &[&str]) -> Option<Vec<Case>> {
        let names: Vec<&str> = cases.iter().map(|c| c.name).collect();
        let matches = |name: &str| {
            self.filters.is_empty() || self.filters.iter().any(|f| name.contains(f.as_str()))
        };
        if !names.iter().any(|n| !always.contains(n) && matches(n)) {
            eprintln!(
                "no case matches {:?}; cases: {}",
                self.filters,
                names.join(", ")
            );
            return None;
        }
        Some(
            cases
                .into_iter()
                .filter(|c| always.contains(&c.name) || matches(c.name))
                .collect(),
        )
    }
}

/// Distribution of ns per op over samples.
#[derive(Clone, Copy)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub p25: f64,
    pub p75: f64,
    /// Minor page faults per op, median over samples.
    #[allow(dead_code, reason = "the bridge bench does not report faults")]
    pub faults: f64,
}

fn summarize(ns: &[f64], faults: &[f64]) -> Summary {
    let sorted = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v
    };
    let (v, f) = (sorted(ns), sorted(faults));
    let at = |v: &[f64], q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Summary {
        median: at(&v, 0.5),
        min: v[0],
        p25: at(&v, 0.25),
        p75: at(&v, 0.75),
        faults: at(&f, 0.5),
    }
}

/// Minor page faults of this process so far.
fn minor_faults() -> libc::c_long {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a rusage into the pointed-to memory.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    assert_eq!(rc, 0, "getrusage failed");
    // SAFETY: zero-initialised, then filled in by getrusage.
    unsafe { ru.assume_init() }.ru_minflt
}

/// Warms `run` up for about `cfg.warmup` and returns the op count that makes
/// one sample last about `cfg.sample_time` (at least `cfg.min_ops`).
fn calibrate(run: &mut Runner, cfg: &Config) -> u64 {
    let start = Instant::now();
    let mut n = 1u64;
    let mut per_op;
    loop {
        let t = run(n);
        per_op = t.as_secs_f64() / n as f64;
        if t >= cfg.sample_time / 4 || n >= 1 << 40 {
            break;
        }
        n *= 2;
    }
    while start.elapsed() < cfg.warmup {
        per_op = run(n).as_secs_f64() / n as f64;
    }
    ((cfg.sample_time.as_secs_f64() / per_op.max(1e-12)) as u64).max(cfg.min_ops)
}

/// Takes one sample of `n` ops: (ns per op, minor faults per op).
fn sample(run: &mut Runner, n: u64) -> (f64, f64) {
    let f0 = minor_faults();
    let t = run(n);
    let f1 = minor_faults();
    (t.as_nanos() as f64 / n as f64, (f1 - f0) as f64 / n as f64)
}

/// Measures every side of `case` that has a runner; one summary per side, in
/// column order (`None` for a side without a runner).
pub fn measure(case: &mut Case, cfg: &Config) -> Vec<Option<Summary>> {
    let sides = case.sides.len();
    // (column, runner, ops per sample) of the sides that have a runner.
    let mut run: Vec<(usize, &mut Runner, u64)> = Vec::new();
    for (k, (_, r)) in case.sides.iter_mut().enumerate() {
        if let Some(r) = r {
            let n = calibrate(r, cfg);
            run.push((k, r, n));
        }
    }
    let mut ns = vec![Vec::new(); sides];
    let mut faults = vec![Vec::new(); sides];
    for s in 0..cfg.samples {
        // Every side once per round; rotate which one goes first.
        for j in 0..run.len() {
            let i = (s + j) % run.len();
            let (k, r, n) = &mut run[i];
            let (t, f) = sample(r, *n);
            ns[*k].push(t);
            faults[*k].push(f);
        }
    }
    (0..sides)
        .map(|k| (!ns[k].is_empty()).then(|| summarize(&ns[k], &faults[k])))
        .collect()
}

/// Measures each case in turn, printing its medians to stderr as it goes:
/// (case name, side names, one summary per side).
pub fn run_cases(cases: Vec<Case>, cfg: &Config) -> Vec<Measured> {
    let width = cases.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut results = Vec::new();
    for mut case in cases {
        eprint!("{:<width$} ", case.name);
        let summaries = measure(&mut case, cfg);
        let sides: Vec<&'static str> = case.sides.iter().map(|(name, _)| *name).collect();
        let line: Vec<String> = sides
            .iter()
            .zip(&summaries)
            .filter_map(|(side, s)| Some(format!("{side} {} ns", fmt_ns(s.as_ref()?.median))))
            .collect();
        eprintln!("{}", line.join(", "));
        results.push(Measured {
            name: case.name,
            sides,
            summaries,
        });
        // The case's runners (greenlets, stacks, runtimes) drop here, before
        // the next case is measured.
    }
    results
}

/// One measured case.
pub struct Measured {
    pub name: &'static str,
    /// The side names, in column order.
    #[allow(dead_code, reason = "the bridge bench names its columns itself")]
    pub sides: Vec<&'static str>,
    /// One per side: `None` for a side without a runner.
    pub summaries: Vec<Option<Summary>>,
}

pub fn fmt_ns(ns: f64) -> String {
    if ns < 10.0 {
        format!("{ns:.2}")
    } else if ns < 1000.0 {
        format!("{ns:.1}")
    } else {
        format!("{ns:.0}")
    }
}

/// A table cell: "**median** (min; p25–p75)", or "—" for a side without a
/// runner.
pub fn cell(s: Option<&Summary>) -> String {
    match s {
        Some(s) => format!(
            "**{}** (min {}; {}–{})",
            fmt_ns(s.median),
            fmt_ns(s.min),
            fmt_ns(s.p25),
            fmt_ns(s.p75)
        ),
        None => "—".to_string(),
    }
}

pub fn ratio(r: f64) -> String {
    if r < 0.1 {
        format!("{r:.3}")
    } else {
        format!("{r:.2}")
    }
}

/// The sum of 0..n, wrapping: what a runner that adds up its `n` indices
/// (or values derived from them) must get.
pub fn sum_below(n: u64) -> u64 {
    (u128::from(n) * u128::from(n.saturating_sub(1)) / 2) as u64
}

/// One JSON record in the schema every bench writes for
/// `scripts/bench-report`: ns per op, lower is better.
pub fn json_record(group: &str, case: &str, greenhack: f64, peers: &[(&str, f64)]) -> String {
    let peers: Vec<String> = peers
        .iter()
        .map(|(name, v)| format!("\"{name}\": {v:.3}"))
        .collect();
    format!(
        "  {{\"group\": \"{group}\", \"case\": \"{case}\", \"unit\": \"ns\", \
         \"lower_is_better\": true, \"greenhack\": {greenhack:.3}, \
         \"peers\": {{{}}}}}",
        peers.join(", ")
    )
}

/// Writes `md` to `target/bench-NAME.md` and `records` (from
/// [`json_record`]) to `target/bench-NAME.json`.
pub fn write_report(name: &str, md: &str, records: &[String]) {
    let path = target_dir().join(format!("bench-{name}.md"));
    match std::fs::write(&path, md) {
        Ok(()) => eprintln!("written to {}", path.display()),
        Err(e) => eprintln!("could not write {}: {e}", path.display()),
    }
    let json_path = path.with_extension("json");
    if let Err(e) = std::fs::write(&json_path, format!("[\n{}\n]\n", records.join(",\n"))) {
        eprintln!("could not write {}: {e}", json_path.display());
    }
}

/// The target directory: three levels above this binary
/// (`target/release/deps/switch-…`), wherever it was configured.
fn target_dir() -> PathBuf {
    let from_exe = std::env::current_exe().ok().and_then(|exe| {
        let deps = exe.parent()?;
        (deps.file_name()? == "deps").then(|| deps.parent()?.parent().map(|t| t.to_path_buf()))?
    });
    from_exe.unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

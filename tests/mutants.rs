//! Bad input never panics the front end.
//!
//! Every `.gantry` file under `stdlib/` and `examples/` is mutated (byte
//! deletions and insertions, token swaps, duplications, truncations) with a
//! seeded generator, at least 10,000 mutants per run, and each mutant is
//! checked with its imports resolved in memory. For every mutant: no panic,
//! every diagnostic span lies inside its file, and the rendered diagnostics
//! are identical when the same input is checked twice. Set
//! `GANTRY_MUTANT_SEED` to explore other seeds; a failure prints the seed
//! and the mutant.
//!
//! Beyond the front end (issue 11, "fuzzing in CI"): mutants that keep the
//! file valid (numbers pushed to 0, -0, negatives, 1e-308, 1e308 and 2^62,
//! ranges made huge, lines such as a node's `link` deleted) of the bundled
//! examples and everything they import go through the planner in process:
//! `plan --fix`, `plan` (a search, pinned to a small space unless the
//! plan's own is small), `study` and `run --plan-json` on the plan JSON the
//! tool wrote for that mutant. No panic, every error a documented code,
//! every figure of every result finite and not negative (time and
//! throughput above 0), and each mutant's work bounded in time. A proptest
//! throws pin strings with numeric extremes at `--fix` parsing and
//! resolution. A mutant whose planner work takes over 2 s is printed;
//! with `GANTRY_MUTANT_DUMP=DIR` its text is written to DIR.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use gantry_lang::check::{Checked, check};
use gantry_lang::source::MemLoader;

const MIN_MUTANTS: usize = 20_000;

/// xorshift64*: tiny, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Fragments worth inserting: brackets, operators, units, keywords, junk.
const SNIPPETS: &[&str] = &[
    "{",
    "}",
    "(",
    ")",
    "[",
    "]",
    ",",
    "=",
    "@",
    "..",
    "x",
    "\n",
    "\"",
    "/*",
    "*/",
    "//",
    "$",
    "-",
    "*",
    "/",
    "GB/s",
    " TFLOP/s",
    "repeat 3 {",
    "model",
    "device",
    "plan",
    "import \"stdlib/hardware/h100.gantry\"\n",
    "0",
    "1e400",
    "99999999999999999999",
    "é",
    "\u{0}",
    "\t",
    ";",
    "let",
    "input",
    "output",
    "linear(",
    "x 8",
    "in",
    "auto",
];

fn mutate(src: &str, rng: &mut Rng) -> String {
    let mut b: Vec<u8> = src.as_bytes().to_vec();
    let rounds = 1 + rng.below(3);
    for _ in 0..rounds {
        let len = b.len();
        match rng.below(7) {
            0 if len > 0 => {
                // delete a byte run
                let at = rng.below(len);
                let n = 1 + rng.below(8.min(len - at));
                b.drain(at..at + n);
            }
            1 => {
                // insert a snippet
                let at = rng.below(len + 1);
                let s = SNIPPETS[rng.below(SNIPPETS.len())].as_bytes();
                b.splice(at..at, s.iter().copied());
            }
            2 => {
                // insert a random byte (may break UTF-8; repaired below)
                let at = rng.below(len + 1);
                b.insert(at, (rng.next() & 0xff) as u8);
            }
            3 if len > 0 => {
                // truncate
                b.truncate(rng.below(len));
            }
            4 => {
                // swap two whitespace-separated tokens
                let text = String::from_utf8_lossy(&b).into_owned();
                let mut toks: Vec<&str> = text.split(' ').collect();
                if toks.len() > 2 {
                    let i = rng.below(toks.len());
                    let j = rng.below(toks.len());
                    toks.swap(i, j);
                }
                b = toks.join(" ").into_bytes();
            }
            5 if len > 0 => {
                // duplicate a slice somewhere else
                let at = rng.below(len);
                let n = 1 + rng.below(64.min(len - at));
                let piece: Vec<u8> = b[at..at + n].to_vec();
                let to = rng.below(b.len() + 1);
                b.splice(to..to, piece);
            }
            _ if len > 0 => {
                // replace one byte with a bracket or quote
                let at = rng.below(len);
                b[at] = b"{}()[]\"=,@.x0"[rng.below(13)];
            }
            _ => {}
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

fn corpus() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for dir in ["stdlib", "examples"] {
        for p in gantry::gantry_files(Path::new(dir)) {
            let name = p.to_string_lossy().replace('\\', "/");
            let text = std::fs::read_to_string(&p).expect("corpus file is UTF-8");
            out.push((name, text));
        }
    }
    out
}

/// Checks `name` with `text` in place of the original, imports in memory.
fn check_with(loader: &MemLoader, name: &str, text: &str) -> Checked {
    let mut l = loader.clone();
    l.files.insert(name.to_string(), text.to_string());
    check(&[name.to_string()], &l)
}

fn assert_invariants(c: &Checked, what: &str) {
    for d in &c.diagnostics {
        for span in std::iter::once(d.span).chain(d.labels.iter().map(|l| l.span)) {
            let file = c
                .sources
                .get(span.file)
                .unwrap_or_else(|| panic!("{what}: diagnostic {:?} points at no file", d.code));
            assert!(
                span.start <= span.end && span.end as usize <= file.text.len(),
                "{what}: span {}..{} outside {} ({} bytes) in {:?}: {}",
                span.start,
                span.end,
                file.name,
                file.text.len(),
                d.code,
                d.message
            );
        }
    }
}

#[test]
fn mutants_never_panic_and_spans_stay_in_bounds() {
    let seed: u64 = std::env::var("GANTRY_MUTANT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6a6e_7472_7931);
    let corpus = corpus();
    assert!(
        corpus.len() >= 5,
        "the corpus should hold the stdlib and examples"
    );
    let mut loader = MemLoader::default();
    for (n, t) in &corpus {
        loader.files.insert(n.clone(), t.clone());
    }
    let mut rng = Rng(seed | 1);
    let per_file = MIN_MUTANTS.div_ceil(corpus.len());
    let mut run = 0usize;
    let mut with_errors = 0usize;
    for (name, text) in &corpus {
        for i in 0..per_file {
            let m = mutate(text, &mut rng);
            let what = format!("seed {seed}, {name}, mutant {i}");
            let result = catch_unwind(AssertUnwindSafe(|| {
                let c = check_with(&loader, name, &m);
                assert_invariants(&c, &what);
                let rendered = c.render(false);
                // Determinism on every 8th mutant (the check runs twice).
                if i % 8 == 0 {
                    let again = check_with(&loader, name, &m).render(false);
                    assert_eq!(rendered, again, "{what}: output differs between two runs");
                }
                c.has_errors()
            }));
            match result {
                Ok(errs) => with_errors += usize::from(errs),
                Err(_) => panic!("{what} panicked; input:\n{m}"),
            }
            run += 1;
        }
    }
    assert!(run >= MIN_MUTANTS, "only {run} mutants");
    // Most mutants are broken; if almost none report errors the checker is
    // accepting garbage.
    assert!(
        with_errors * 2 > run,
        "only {with_errors} of {run} mutants reported an error"
    );
    println!("{run} mutants, {with_errors} with errors, seed {seed}");
}

#[test]
fn hostile_inputs_get_diagnostics() {
    let cases: Vec<(&str, String)> = vec![
        ("empty", String::new()),
        ("whitespace", " \n\t\n".into()),
        ("garbage", "\u{1}\u{2}ÿþ\u{7f}{{{)))]]]".repeat(1000)),
        (
            "deep parens",
            format!("let a = {}1{}", "(".repeat(100_000), ")".repeat(100_000)),
        ),
        (
            "deep braces",
            format!("model M() {{ {} }}", "repeat 1 {".repeat(50_000)),
        ),
        ("deep unary", format!("let a = {}1", "-".repeat(200_000))),
        ("long sum", format!("let a = 1{}", " + 1".repeat(200_000))),
        (
            "deep record",
            format!("let a = {}", "{ b = ".repeat(10_000)),
        ),
        ("unterminated string", "let a = \"abc".into()),
        ("unterminated comment", "/* never closed".into()),
    ];
    for (what, text) in &cases {
        let c = gantry_lang::check::check_source("input.gantry", text);
        assert_invariants(&c, what);
        let _ = c.render(false);
        if !matches!(*what, "empty" | "whitespace") {
            assert!(c.has_errors(), "{what}: expected a diagnostic");
        }
    }
}

#[test]
fn ten_megabyte_input_is_checked() {
    // 10 MB of declarations, valid and invalid mixed: it must finish with
    // diagnostics, not crash.
    let unit = "device D_N {\n  compute { bf16 = 989 TFLOP/s }\n  memory hbm = 80 GB @ 3.35 TB/s\n  power 700 W\n}\nlet bad_N = 80 GB + 1 GB/s\n";
    let mut text = String::with_capacity(10 * 1024 * 1024 + unit.len());
    let mut i = 0;
    while text.len() < 10 * 1024 * 1024 {
        text.push_str(&unit.replace('N', &i.to_string()));
        i += 1;
    }
    let c = gantry_lang::check::check_source("big.gantry", &text);
    assert!(c.has_errors());
    assert_invariants(&c, "10 MB input");
    assert!(c.program.devices.len() > 1000);
}

#[test]
fn non_utf8_and_missing_files_are_diagnostics() {
    let dir = std::env::temp_dir().join(format!("gantry-mutants-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let bin = dir.join("binary.gantry");
    std::fs::write(&bin, [0xffu8, 0xfe, 0x00, 0x80, 0x81]).expect("write");
    let c = gantry::check_files(&[bin.to_string_lossy().into_owned()], &[]);
    assert!(
        c.diagnostics
            .iter()
            .any(|d| d.code == gantry_lang::diagnostic::Code::L005)
    );
    let c = gantry::check_files(
        &[dir.join("nope.gantry").to_string_lossy().into_owned()],
        &[],
    );
    assert!(
        c.diagnostics
            .iter()
            .any(|d| d.code == gantry_lang::diagnostic::Code::L020)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------
// Beyond the front end: valid mutants through the planner and the runtime.
// ---------------------------------------------------------------------

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use gantry::runtime_cli::{TargetArgs, resolve_target};
use gantry_compiler::cost::Estimate;
use gantry_compiler::point::{Pin, PinError, parse_fix};
use gantry_lang::diagnostic::Code;
use gantry_lang::program::{Plan, Program};

/// Clean mutants that go through the planner per run (issue 11: >= 2,000).
const MIN_PLANNER_MUTANTS: usize = 2_000;
/// The most a single mutant's planner and runtime work may take. Generous:
/// a debug build on a loaded two-core machine; the release figure is about
/// 20 times lower. The maximum seen is printed.
const MAX_SECONDS_PER_MUTANT: f64 = 20.0;
/// Mutants whose run (JIT and reference) is executed, not only resolved:
/// one in this many, the rest stop after `resolve_target`.
const EXEC_EVERY: usize = 50;

/// [`MemLoader`]'s files, with imports resolved as on disk (relative to
/// the importer, then to each folder above it; `gantry::FsLoader`).
#[derive(Clone)]
struct TreeLoader(MemLoader);

impl gantry_lang::source::Loader for TreeLoader {
    fn resolve(&self, importer: &str, path: &str) -> Option<String> {
        let mut dir = Path::new(importer).parent();
        while let Some(d) = dir {
            let c = gantry::normalize(&d.join(path))
                .to_string_lossy()
                .into_owned();
            if self.0.files.contains_key(&c) {
                return Some(c);
            }
            dir = d.parent();
        }
        self.0.files.contains_key(path).then(|| path.to_string())
    }
    fn load(&self, name: &str) -> Result<String, gantry_lang::source::LoadError> {
        self.0.load(name)
    }
}

/// A bundled file with plans or studies, and how to keep its work small.
struct Root {
    file: &'static str,
    /// `--fix` strings (the first is small enough to run at `scale`).
    fixes: &'static [&'static str],
    /// `--pin` strings that keep a search small.
    pins: &'static [&'static str],
    /// `--scale` for the run (tiny: the run is JIT-compiled in debug).
    scale: &'static str,
}

const LLM_SCALE: &str =
    "layers=2, d_model=16, heads=2, kv_heads=2, d_ff=32, vocab=32, seq=4, batch=4";

const ROOTS: &[Root] = &[
    Root {
        file: "examples/llm_train.gantry",
        fixes: &[
            "tp=2,pp=2,dp=1,cp=1,microbatch=1,sequence_parallel=false,virtual_stages=1",
            "tp=8,pp=16,dp=128,microbatch=1,recompute=full,zero=1",
            "tp=8,cp=2,pp=4,dp=2,microbatch=2,sequence_parallel=true",
        ],
        pins: &[
            "tp=8,pp=8,cp=1,zero=1,recompute=selective,microbatch=1",
            "tp=4,pp=16,cp=2,zero=3,recompute=full,microbatch=2,sequence_parallel=true",
        ],
        scale: LLM_SCALE,
    },
    Root {
        file: "examples/llm_decode.gantry",
        fixes: &["tp=2,pp=1,dp=1,batch=4", "tp=8,pp=2,batch=64", "tp=4"],
        pins: &["tp=8,pp=1,batch=64", "tp=2,pp=2,batch=8"],
        scale: LLM_SCALE,
    },
    Root {
        file: "examples/llm_prefill.gantry",
        fixes: &["tp=2,pp=1,dp=1", "tp=8,pp=2", "tp=1,pp=8,dp=1"],
        pins: &["tp=8,pp=1", "tp=4,pp=2,batch=8"],
        scale: LLM_SCALE,
    },
    Root {
        file: "examples/moe_train.gantry",
        fixes: &[
            "ep=2,tp=1,pp=1,dp=2,microbatch=1,sequence_parallel=false",
            "ep=8,tp=8,pp=4,zero=1,microbatch=1",
        ],
        pins: &[
            "ep=4,tp=2,pp=2,zero=1,recompute=selective,microbatch=1,sequence_parallel=false",
            "ep=8,tp=8,pp=8,zero=3,recompute=full,microbatch=2",
        ],
        scale: "layers=2, d_model=16, heads=2, kv_heads=2, d_ff=16, experts=2, vocab=32, seq=4, batch=4",
    },
    Root {
        file: "examples/dlrm_train.gantry",
        fixes: &["dp=1,microbatch=1", "dp=8", "dp=2,zero=1"],
        pins: &["dp=8"],
        scale: "rows=50, batch=4",
    },
    Root {
        file: "examples/dlrm_inference.gantry",
        fixes: &["dp=1,batch=4", "dp=8,batch=1024"],
        pins: &["batch=1024", "dp=8,batch=4096"],
        scale: "rows=50, batch=4",
    },
    Root {
        file: "examples/codesign_study.gantry",
        fixes: &[],
        pins: &[],
        scale: "",
    },
    Root {
        file: "examples/reference/a01_gpt_1p7b.gantry",
        fixes: &["tp=1,pp=1,dp=1,microbatch=1", "tp=2,pp=2,dp=2"],
        pins: &["tp=1,pp=1,recompute=full,microbatch=1"],
        scale: LLM_SCALE,
    },
    Root {
        file: "examples/reference/d02_llama31_70b_tp2_128_128.gantry",
        fixes: &["tp=2,pp=1,dp=1,batch=4", "tp=2,batch=64"],
        pins: &["tp=2,batch=16"],
        scale: LLM_SCALE,
    },
];

/// Pin strings with values no plan can take, tried now and then.
const HOSTILE_FIXES: &[&str] = &[
    "tp=0",
    "pp=0,dp=1",
    "cp=0",
    "tp=16777216,pp=16777216",
    "dp=16777216,microbatch=16777216",
    "tp=4611686018427387904,pp=4",
    "ep=8",
    "batch=4096",
    "microbatch=3",
    "zero=4",
    "nodes=2",
    "tp=nan",
    "recompute=maybe",
    "tp=1,tp=2",
];

/// Replacement texts for a number literal.
const NUMBERS: &[&str] = &[
    "0",
    "-0",
    "-1",
    "1e-308",
    "1e308",
    "0.5",
    "1",
    "4611686018427387904",
    "99999999999",
    "2147483647",
];

/// Replacement texts for a range or a set of candidate values.
const RANGES: &[&str] = &[
    "1..10000000000",
    "0..0",
    "5..1",
    "1..2147483647",
    "{0}",
    "{1, 4611686018427387904}",
    "{-1, 2}",
    "{16777216}",
];

/// Lines worth deleting: what a node, device or plan may leave out.
const DELETABLE: &[&str] = &[
    "link",
    "nic",
    "host",
    "power",
    "price",
    "memory",
    "matmul",
    "scaleup",
    "scale_up",
    "step_overhead",
    "seq_overhead",
    "reserve",
    "fix",
    "search",
    "subject",
    "objective",
    "simulate",
    "fabric",
    "efficiency",
    "bandwidth",
    "latency",
    "bf16",
    "fp8",
    "fp16",
];

/// Byte ranges of the number literals of `s` (digits not glued to a name,
/// as in `h100` or `bf16`).
fn number_spans(s: &str) -> Vec<(usize, usize)> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let glued = i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        if b[i].is_ascii_digit() && !glued {
            let start = i;
            while i < b.len()
                && (b[i].is_ascii_digit()
                    || b[i] == b'_'
                    || (b[i] == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
                    || ((b[i] == b'e' || b[i] == b'E')
                        && b.get(i + 1)
                            .is_some_and(|c| c.is_ascii_digit() || *c == b'-')))
            {
                i += 1;
                if (b[i - 1] == b'e' || b[i - 1] == b'E') && b.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            out.push((start, i));
        } else {
            i += 1;
        }
    }
    out
}

/// Byte ranges of `a..b` ranges and `{...}` value sets on `search` lines
/// and in sweeps (`nodes = 256..4096`).
fn range_spans(s: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (i, _) in s.match_indices("..") {
        let b = s.as_bytes();
        let mut lo = i;
        while lo > 0 && (b[lo - 1].is_ascii_digit() || b[lo - 1] == b'_') {
            lo -= 1;
        }
        let mut hi = i + 2;
        while hi < b.len() && (b[hi].is_ascii_digit() || b[hi] == b'_') {
            hi += 1;
        }
        if lo < i && hi > i + 2 {
            out.push((lo, hi));
        }
    }
    for (i, _) in s.match_indices(" in {") {
        if let Some(end) = s[i..].find('}') {
            out.push((i + 4, i + end + 1));
        }
    }
    out
}

/// A mutant meant to stay valid: numbers pushed to extremes, ranges made
/// huge or empty, declaration lines deleted. One to three edits.
fn mutate_valid(src: &str, rng: &mut Rng) -> String {
    let mut s = src.to_string();
    for _ in 0..1 + rng.below(3) {
        match rng.below(10) {
            0..=4 => {
                let spans = number_spans(&s);
                if spans.is_empty() {
                    continue;
                }
                let (a, b) = spans[rng.below(spans.len())];
                let orig = s[a..b].to_string();
                let new = match rng.below(NUMBERS.len() + 2) {
                    n if n < NUMBERS.len() => NUMBERS[n].to_string(),
                    n if n == NUMBERS.len() => format!("-{orig}"),
                    _ => format!("{orig}000000"),
                };
                s.replace_range(a..b, &new);
            }
            5 | 6 => {
                let spans = range_spans(&s);
                if spans.is_empty() {
                    continue;
                }
                let (a, b) = spans[rng.below(spans.len())];
                s.replace_range(a..b, RANGES[rng.below(RANGES.len())]);
            }
            _ => {
                let lines: Vec<&str> = s.lines().collect();
                let wanted: Vec<usize> = (0..lines.len())
                    .filter(|&i| {
                        let t = lines[i].trim_start();
                        DELETABLE.iter().any(|k| t.starts_with(k))
                    })
                    .collect();
                let victim = if !wanted.is_empty() && rng.below(4) != 0 {
                    wanted[rng.below(wanted.len())]
                } else {
                    rng.below(lines.len())
                };
                s = lines
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != victim)
                    .map(|(_, l)| *l)
                    .collect::<Vec<_>>()
                    .join("\n");
            }
        }
    }
    s
}

/// The codes a planner error may carry: the documented table
/// (docs/PLANNER.md, "Exit codes"), `C013` being a warning only.
fn assert_documented(e: &PinError, what: &str) {
    let name = e.code.to_string();
    assert!(
        name.starts_with('C') && e.code != Code::C013,
        "{what}: error code {name} is not a planner error of the table: {}",
        e.message
    );
    assert!(!e.message.is_empty(), "{what}: {name} without a message");
}

/// Every figure of a result is finite and not negative; time and
/// throughput are above zero.
fn assert_meaningful(e: &Estimate, what: &str) {
    let t = &e.time;
    let m = &e.memory;
    let ok = |x: f64| x.is_finite() && x >= 0.0;
    let figures = [
        ("step time", t.step),
        ("compute", t.compute.total()),
        ("recompute", t.recompute),
        ("tp comm", t.tp_comm),
        ("cp comm", t.cp_comm),
        ("all-to-all", t.all_to_all),
        ("pp comm", t.pp_comm),
        ("bubble", t.bubble),
        ("dp exposed", t.dp_exposed),
        ("optimizer", t.optimizer),
        ("prefill", t.prefill),
        ("overhead", t.overhead),
        ("host per sequence", t.host_seq),
        ("host lookups", t.host_lookups),
        ("samples/s", e.samples_per_s()),
        ("tokens/s", e.tokens_per_s()),
        ("memory", m.total()),
        ("weights", m.weights),
        ("gradients", m.gradients),
        ("optimizer state", m.optimizer),
        ("activations", m.activations),
        ("kv cache", m.kv_cache),
        ("embeddings", m.embeddings),
        ("host embeddings", m.host_embeddings),
        ("mfu", e.mfu()),
        ("hfu", e.hfu()),
        ("power", e.power),
        ("energy", e.energy_per_step()),
        (
            "cost per million samples",
            e.cost_per_million_samples().unwrap_or(0.0),
        ),
        (
            "cost per million tokens",
            e.cost_per_million_tokens().unwrap_or(0.0),
        ),
        ("ttft", e.ttft.unwrap_or(0.0)),
        ("tpot", e.tpot.unwrap_or(0.0)),
    ];
    for (n, x) in figures {
        assert!(ok(x), "{what}: {n} is {x} at {}", e.point);
    }
    for c in &e.comms {
        assert!(
            ok(c.time) && ok(c.bytes),
            "{what}: {} is {} s, {} B at {}",
            c.what,
            c.time,
            c.bytes,
            e.point
        );
    }
    assert!(
        t.step > 0.0 && e.samples_per_s() > 0.0,
        "{what}: step {} s, {} samples/s at {}",
        t.step,
        e.samples_per_s(),
        e.point
    );
}

/// No number of a JSON report is negative (NaN and infinity cannot be
/// written: they would show as `null`, which the schema tests catch).
fn assert_json_figures(v: &serde_json::Value, path: &str, what: &str) {
    match v {
        serde_json::Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            assert!(x.is_finite() && x >= 0.0, "{what}: `{path}` is {x}");
        }
        serde_json::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                assert_json_figures(x, &format!("{path}[{i}]"), what);
            }
        }
        serde_json::Value::Object(o) => {
            for (k, x) in o {
                assert_json_figures(x, &format!("{path}.{k}"), what);
            }
        }
        _ => {}
    }
}

fn pins_of(s: &str, what: &str) -> Option<BTreeMap<String, Pin>> {
    match parse_fix(s) {
        Ok(p) => Some(p),
        Err(e) => {
            assert!(
                matches!(e.code, Code::C006 | Code::C012),
                "{what}: `{s}` is refused with {} (C006 or C012 expected)",
                e.code
            );
            None
        }
    }
}

/// Counts of what the planner mutants went through.
#[derive(Default, Debug)]
struct Tally {
    checked: usize,
    clean: usize,
    fix: usize,
    fix_ok: usize,
    search: usize,
    search_ok: usize,
    unpinned: usize,
    study: usize,
    study_cells_ok: usize,
    resolved: usize,
    resolved_ok: usize,
    exec: usize,
    exec_ok: usize,
    max_seconds: f64,
    max_what: String,
}

/// A temporary copy of `stdlib/` and `examples/`, so `run --plan-json`
/// reads a mutant from disk through the same `resolve_target` as the CLI.
struct Scratch {
    dir: std::path::PathBuf,
}

impl Scratch {
    fn new(corpus: &[(String, String)], seed: u64) -> Scratch {
        // One per test: the two planner tests run at the same time.
        let dir = std::env::temp_dir().join(format!(
            "gantry-planner-mutants-{}-{seed:x}",
            std::process::id()
        ));
        for (name, text) in corpus {
            let p = dir.join(name);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("scratch dir");
            std::fs::write(&p, text).expect("scratch file");
        }
        Scratch { dir }
    }
    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.dir.join(name), text).expect("scratch file");
    }
    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `plan --fix`, `plan` (search), `run --plan-json` and `study` on one
/// clean mutant of `root`.
fn plan_mutant(
    root: &Root,
    program: &Program,
    scratch: &Scratch,
    rng: &mut Rng,
    exec: bool,
    tally: &mut Tally,
    what: &str,
) {
    let plans: Vec<&Plan> = program.plans.values().collect();
    if !plans.is_empty() {
        // The default plan most of the time, else another.
        let plan = if rng.below(3) == 0 {
            plans[rng.below(plans.len())]
        } else {
            gantry::default_plan(program).expect("a plan")
        };
        // `plan --fix`.
        let fix = if exec {
            root.fixes[0]
        } else if rng.below(6) == 0 {
            HOSTILE_FIXES[rng.below(HOSTILE_FIXES.len())]
        } else if rng.below(2) == 0 {
            root.fixes[0]
        } else {
            root.fixes[rng.below(root.fixes.len())]
        };
        let mut evaluated = None;
        if let Some(pins) = pins_of(fix, what) {
            tally.fix += 1;
            match gantry_compiler::plan::evaluate(plan, &pins) {
                Ok(ev) => {
                    tally.fix_ok += 1;
                    let w = format!("{what}, plan {} --fix {fix}", plan.name);
                    assert_meaningful(&ev.estimate, &w);
                    let j = gantry_compiler::report::json(&ev);
                    assert_json_figures(&j, "", &w);
                    let _ = gantry_compiler::report::text(&ev, false);
                    evaluated = Some(j);
                }
                Err(e) => assert_documented(&e, &format!("{what}, --fix {fix}")),
            }
        }
        // `plan` (a search): the plan's own space when it is small or over
        // the limit (refused before any work), else pinned small.
        let own = gantry_compiler::ir::lower(&plan.workload)
            .ok()
            .map(|ir| gantry_compiler::search::space(plan, &ir, &BTreeMap::new()));
        let pin = match &own {
            Some(s) if s.check_size().is_err() || s.size() <= 1_000 => "",
            _ if root.pins.is_empty() => "",
            _ => root.pins[rng.below(root.pins.len())],
        };
        if pin.is_empty() {
            tally.unpinned += 1;
        }
        if let Some(pins) = pins_of(pin, what) {
            tally.search += 1;
            match gantry_compiler::plan::search(plan, &pins, 3) {
                Ok(s) => {
                    tally.search_ok += 1;
                    let w = format!("{what}, plan {} --pin {pin}", plan.name);
                    assert_meaningful(&s.best.estimate, &w);
                    for e in &s.top {
                        assert_meaningful(e, &w);
                    }
                    assert_json_figures(&gantry_compiler::report::json(&s.best), "", &w);
                }
                Err(e) => assert_documented(&e, &format!("{what}, --pin {pin}")),
            }
        }
        // `run --plan-json` on the JSON `plan --fix` wrote.
        if let Some(j) = evaluated {
            let json = scratch.dir.join("plan.json");
            std::fs::write(&json, serde_json::to_string_pretty(&j).expect("json")).expect("write");
            let a = TargetArgs {
                file: scratch.path(root.file),
                plan: Some(plan.name.clone()),
                fix: None,
                plan_json: Some(json),
                devices: None,
                scale: Some(root.scale.into()),
                lib: Vec::new(),
                whole: Vec::new(),
                column: Vec::new(),
                row: Vec::new(),
            };
            tally.resolved += 1;
            if let Ok(t) = resolve_target(&a) {
                tally.resolved_ok += 1;
                if exec {
                    tally.exec += 1;
                    let cfg = gantry_runtime::exec::RunConfig {
                        tolerance: 1e-3,
                        timeout: Duration::from_secs(10),
                        gradients: matches!(
                            t.workload.phase,
                            gantry_lang::program::Phase::Train { .. }
                        ),
                        max_bytes: 0.2e9,
                        ..Default::default()
                    };
                    // A point of the full-size plan may not split the tiny
                    // scale (R002): an error, never a panic.
                    if gantry_runtime::exec::run(&t.workload, &t.par, &cfg).is_ok() {
                        tally.exec_ok += 1;
                    }
                }
            }
        }
    }
    // `study`: one of the file's studies, on at most two of its systems.
    let studies: Vec<_> = program.studies.values().collect();
    if !studies.is_empty() {
        let mut st = studies[rng.below(studies.len())].clone();
        while st.systems.len() > 2 {
            let i = rng.below(st.systems.len());
            st.systems.remove(i);
        }
        tally.study += 1;
        let w = format!("{what}, study {}", st.name);
        for r in gantry_compiler::study::run(&st) {
            assert!(
                r.score.is_finite() && r.score >= 0.0,
                "{w}: score {} of {}",
                r.score,
                r.system
            );
            for c in &r.cells {
                assert!(
                    c.relative.is_finite() && c.relative >= 0.0,
                    "{w}: relative {}",
                    c.relative
                );
                if let Ok(e) = &c.best {
                    tally.study_cells_ok += 1;
                    assert_meaningful(e, &format!("{w}, {} on {}", c.workload, r.system));
                    let v = c.value.expect("a value with a best point");
                    assert!(v.is_finite() && v >= 0.0, "{w}: value {v}");
                }
            }
        }
    }
}

// Two halves of MIN_PLANNER_MUTANTS with different seeds, so the test
// harness runs them beside the check mutants on two cores.
#[test]
fn valid_mutants_through_the_planner_and_runtime() {
    planner_mutants(0x706c_616e_6e65, MIN_PLANNER_MUTANTS / 2);
}

#[test]
fn valid_mutants_through_the_planner_and_runtime_2() {
    planner_mutants(
        0x7275_6e74_696d,
        MIN_PLANNER_MUTANTS - MIN_PLANNER_MUTANTS / 2,
    );
}

fn planner_mutants(default_seed: u64, wanted: usize) {
    let seed: u64 = std::env::var("GANTRY_MUTANT_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(default_seed, |s| s ^ default_seed);
    let corpus = corpus();
    let mut loader = MemLoader::default();
    for (n, t) in &corpus {
        loader.files.insert(n.clone(), t.clone());
    }
    let scratch = Scratch::new(&corpus, seed);
    let loader = TreeLoader(loader);
    // Each root with the files it reads (itself and its imports).
    let targets: Vec<(&Root, Vec<String>)> = ROOTS
        .iter()
        .map(|r| {
            let c = check(&[r.file.to_string()], &loader);
            assert!(!c.has_errors(), "{}: {}", r.file, c.render(false));
            let files = c.sources.files().map(|f| f.name.clone()).collect();
            (r, files)
        })
        .collect();
    let mut rng = Rng(seed | 1);
    let mut tally = Tally::default();
    let started = Instant::now();
    let mut i = 0usize;
    while tally.clean < wanted {
        assert!(
            tally.checked < 20 * wanted,
            "too few mutants check clean: {tally:?}"
        );
        // The study file's mutants cost a few searches each: fewer of them.
        let (root, files) = &targets[rng.below(targets.len())];
        if root.file.contains("codesign") && rng.below(3) != 0 {
            continue;
        }
        let name = &files[rng.below(files.len())];
        let m = mutate_valid(&loader.0.files[name], &mut rng);
        i += 1;
        tally.checked += 1;
        let what = format!("seed {seed}, mutant {i} of {name} (for {})", root.file);
        let c = catch_unwind(AssertUnwindSafe(|| {
            let mut l = loader.clone();
            l.0.files.insert(name.clone(), m.clone());
            check(&[root.file.to_string()], &l)
        }))
        .unwrap_or_else(|_| panic!("{what}: check panicked; input:\n{m}"));
        if c.has_errors() {
            continue;
        }
        tally.clean += 1;
        scratch.write(name, &m);
        let exec = tally.clean % EXEC_EVERY == 0;
        let t0 = Instant::now();
        let r = catch_unwind(AssertUnwindSafe(|| {
            plan_mutant(
                root, &c.program, &scratch, &mut rng, exec, &mut tally, &what,
            )
        }));
        scratch.write(name, &loader.0.files[name]);
        if let Err(p) = r {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{what}: {msg}\ninput:\n{m}");
        }
        let secs = t0.elapsed().as_secs_f64();
        if secs > 2.0 {
            println!("slow: {what}: {secs:.1} s");
            if let Some(dir) = std::env::var_os("GANTRY_MUTANT_DUMP") {
                let _ = std::fs::write(Path::new(&dir).join(format!("mutant-{i}.gantry")), &m);
            }
        }
        if secs > tally.max_seconds {
            tally.max_seconds = secs;
            tally.max_what = what.clone();
        }
        assert!(
            secs < MAX_SECONDS_PER_MUTANT,
            "{what}: took {secs:.1} s; input:\n{m}"
        );
    }
    println!(
        "{} mutants checked, {} clean through the planner in {:.1} s: {tally:?}",
        tally.checked,
        tally.clean,
        started.elapsed().as_secs_f64()
    );
    assert!(tally.fix >= wanted / 2 && tally.search >= wanted / 2);
}

// ---------------------------------------------------------------------
// `--fix` / `--pin` strings with numeric extremes.
// ---------------------------------------------------------------------

use proptest::prelude::*;

/// The bundled plans the pin strings are resolved against (checked once).
fn pin_plans() -> &'static Vec<Plan> {
    static PLANS: std::sync::OnceLock<Vec<Plan>> = std::sync::OnceLock::new();
    PLANS.get_or_init(|| {
        let mut out = Vec::new();
        for f in [
            "examples/llm_train.gantry",
            "examples/llm_decode.gantry",
            "examples/moe_train.gantry",
            "examples/dlrm_train.gantry",
        ] {
            let c = gantry::check_files(&[f.to_string()], &[]);
            assert!(!c.has_errors(), "{f} does not check");
            out.extend(c.program.plans.values().cloned());
        }
        out
    })
}

fn pin_value() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "0", "1", "-1", "2", "8", "-0", "16777216", "16777217",
            "4611686018427387904", "9223372036854775807", "9223372036854775808",
            "-9223372036854775808", "NaN", "nan", "inf", "-inf", "1e308", "1e-308",
            "1.5", "0x10", "+3", " 4 ", "", "true", "false", "full", "none",
            "selective", "TRUE",
        ])
        .prop_map(str::to_string),
        1 => "\\PC{0,8}",
    ]
}

fn pin_key() -> impl Strategy<Value = String> {
    let mut names: Vec<&'static str> = gantry_lang::check::KNOBS.iter().map(|(n, _)| *n).collect();
    names.extend(["TP", "foo", "", " tp", "tp ", "experts"]);
    prop_oneof![
        4 => prop::sample::select(names).prop_map(str::to_string),
        1 => "[a-z_=,]{0,6}",
    ]
}

fn pin_string() -> impl Strategy<Value = String> {
    let part = (
        pin_key(),
        prop::sample::select(vec!["=", "=", "=", "", "=="]),
        pin_value(),
    )
        .prop_map(|(k, s, v)| format!("{k}{s}{v}"));
    (
        prop::collection::vec(part, 0..5),
        prop::sample::select(vec![",", ",", ", ", ",,"]),
    )
        .prop_map(|(parts, sep)| parts.join(sep))
}

proptest! {
    #![proptest_config(common::seeded::seeded(96, 0x3a7e_0001))]

    /// `--fix`/`--pin` parsing and resolution: no panic, every refusal a
    /// documented code with the documented exit code, every result
    /// meaningful; `run --fix` resolves or exits 1 or 2.
    #[test]
    fn pin_strings_resolve_or_are_documented_errors(s in pin_string(), run in any::<bool>()) {
        let what = format!("--fix `{s}`");
        let r = catch_unwind(AssertUnwindSafe(|| {
            if let Some(pins) = pins_of(&s, &what) {
                for plan in pin_plans() {
                    let w = format!("{what} on {}", plan.name);
                    match gantry_compiler::plan::evaluate(plan, &pins) {
                        Ok(ev) => {
                            assert_meaningful(&ev.estimate, &w);
                            assert_json_figures(&gantry_compiler::report::json(&ev), "", &w);
                        }
                        Err(e) => {
                            assert_documented(&e, &w);
                            let code = if e.code == Code::C006 { 2 } else { 1 };
                            assert_eq!(
                                gantry::pin_error_with(&e, &pins),
                                std::process::ExitCode::from(code),
                                "{w}"
                            );
                        }
                    }
                }
            }
            if run {
                let a = TargetArgs {
                    file: "examples/llm_train.gantry".into(),
                    plan: None,
                    fix: Some(s.clone()),
                    plan_json: None,
                    devices: None,
                    scale: Some(LLM_SCALE.into()),
                    lib: Vec::new(),
                    whole: Vec::new(),
                    column: Vec::new(),
                    row: Vec::new(),
                };
                if let Err(c) = resolve_target(&a) {
                    assert!(
                        c == std::process::ExitCode::from(1) || c == std::process::ExitCode::from(2),
                        "{what}: run exits {c:?}"
                    );
                }
            }
        }));
        prop_assert!(r.is_ok(), "{} panicked", what);
    }
}

#[test]
fn numeric_extremes_in_pins() {
    // The cases of issue 11, each on every bundled plan above.
    for s in [
        "tp=0",
        "pp=0",
        "cp=0",
        "tp=4611686018427387904,pp=4",
        "dp=16777216,tp=16777216,pp=16777216,cp=16777216",
        "microbatch=16777216",
        "batch=16777216",
        "tp=NaN",
        "tp=1e308",
        "tp=-1",
        "zero=-1",
        "tp=1,pp=1,dp=1,cp=1,microbatch=1",
    ] {
        if let Some(pins) = pins_of(s, s) {
            for plan in pin_plans() {
                match gantry_compiler::plan::evaluate(plan, &pins) {
                    Ok(ev) => assert_meaningful(&ev.estimate, s),
                    Err(e) => assert_documented(&e, s),
                }
            }
        }
    }
}

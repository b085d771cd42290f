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

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use gantry_lang::check::{Checked, check};
use gantry_lang::source::MemLoader;

const MIN_MUTANTS: usize = 10_000;

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

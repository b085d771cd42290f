//! `gantry fmt` is idempotent and preserves meaning.
//!
//! On every stdlib and example file, and on generated programs: formatting
//! twice changes nothing, the formatted file checks to the same program with
//! the same diagnostics, and every comment survives.

mod common;

use std::path::Path;

use gantry_lang::check::check;
use gantry_lang::fmt::format_source;
use gantry_lang::lexer::lex;
use gantry_lang::source::MemLoader;
use proptest::prelude::*;

fn corpus_loader() -> (MemLoader, Vec<String>) {
    let mut l = MemLoader::default();
    let mut names = Vec::new();
    for dir in ["stdlib", "examples"] {
        for p in gantry::gantry_files(Path::new(dir)) {
            let name = p.to_string_lossy().replace('\\', "/");
            l.files
                .insert(name.clone(), std::fs::read_to_string(&p).expect("read"));
            names.push(name);
        }
    }
    (l, names)
}

/// What a check says about a root file: the program summary and the
/// diagnostics as (code, message), which must not depend on layout.
fn meaning(loader: &MemLoader, name: &str) -> (String, Vec<(String, String)>) {
    let c = check(&[name.to_string()], loader);
    let diags = c
        .diagnostics
        .iter()
        .map(|d| (d.code.to_string(), d.message.clone()))
        .collect();
    (c.program.summary(), diags)
}

fn comments(src: &str) -> Vec<String> {
    let mut v: Vec<String> = lex(src)
        .comments
        .into_iter()
        .map(|c| c.text.trim().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn fmt_is_idempotent_and_keeps_meaning_on_the_corpus() {
    let (loader, names) = corpus_loader();
    assert!(!names.is_empty());
    for name in &names {
        let src = &loader.files[name];
        let once = format_source(src).unwrap_or_else(|e| panic!("{name} does not parse: {e:?}"));
        let twice = format_source(&once).expect("formatted output parses");
        assert_eq!(once, twice, "{name}: fmt is not idempotent");
        assert_eq!(comments(src), comments(&once), "{name}: comments changed");
        let mut formatted = loader.clone();
        formatted.files.insert(name.clone(), once.clone());
        assert_eq!(
            meaning(&loader, name),
            meaning(&formatted, name),
            "{name}: meaning changed"
        );
    }
}

// ---- generated programs ----

fn unit() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "", " GB", " GiB", " TB/s", " Gb/s", " TFLOP/s", " W", " us", " s", " B",
    ])
}

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        (1u32..5000).prop_map(|n| n.to_string()),
        (1u32..999, 1u32..99).prop_map(|(a, b)| format!("{a}.{b}"))
    ]
}

/// Expressions over plain numbers and quantities, some ill-typed on purpose.
fn expr() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        (number(), unit()).prop_map(|(n, u)| format!("{n}{u}")),
        prop::sample::select(vec!["k", "m", "n"]).prop_map(str::to_string),
    ];
    leaf.prop_recursive(4, 24, 2, |inner| {
        prop_oneof![
            (
                inner.clone(),
                prop::sample::select(vec!["+", "-", "*", "/"]),
                inner.clone()
            )
                .prop_map(|(a, op, b)| format!("{a} {op} {b}")),
            inner.clone().prop_map(|a| format!("({a})")),
            inner.clone().prop_map(|a| format!("-{a}")),
            (inner.clone(), inner).prop_map(|(a, b)| format!("max({a},\n   {b})")),
        ]
    })
}

fn layout() -> impl Strategy<Value = (&'static str, &'static str)> {
    (
        prop::sample::select(vec![" ", "  ", "\t"]),
        prop::sample::select(vec!["", " // note", "  /* c */"]),
    )
}

fn program() -> impl Strategy<Value = String> {
    (prop::collection::vec((expr(), layout()), 1..6), 1u32..64, 1u32..8, prop::bool::ANY).prop_map(|(lets, heads, layers, blank)| {
        let mut s = String::from("// generated\nlet k = 3\nlet m = 4 GB\nlet n = 2 TB/s\n");
        for (i, (e, (sp, c))) in lets.iter().enumerate() {
            s.push_str(&format!("let{sp}v{i}{sp}={sp}{e}{c}\n"));
            if blank {
                s.push('\n');
            }
        }
        let d = heads * 16;
        s.push_str(&format!(
            "device D {{ compute {{ bf16 = 100 TFLOP/s }}\n memory hbm = m @ n // mem\n power 300 W }}\n\
             model M(d = {d}, h = {heads}) {{\n  input t: i32[batch, seq]\n  x = embedding(t, 100, d)\n\
             repeat {layers} {{ a = attention(linear(x, d, d), linear(x, d, d), linear(x, d, d), heads = h)\n\
             x = x + linear(a, d, d) }}\n  output y = rmsnorm(x)\n}}\n\
             workload W {{ model M()\n train {{ seq = 16, global_batch = 4 }} }}\n"
        ));
        s
    })
}

proptest! {
    #![proptest_config(common::seeded::seeded(256, 0xf3a7_0001))]

    #[test]
    fn fmt_round_trips_generated_programs(src in program()) {
        let once = format_source(&src).expect("generated programs parse");
        let twice = format_source(&once).expect("formatted output parses");
        prop_assert_eq!(&once, &twice);
        prop_assert_eq!(comments(&src), comments(&once));
        let mut a = MemLoader::default();
        a.files.insert("p.gantry".into(), src.clone());
        let mut b = MemLoader::default();
        b.files.insert("p.gantry".into(), once.clone());
        prop_assert_eq!(meaning(&a, "p.gantry"), meaning(&b, "p.gantry"));
    }
}

//! Front-end throughput: lines per second of `check` (lex, parse, resolve,
//! units, shapes) and of `fmt` on a generated 10,000-line file.
//! Run with `cargo bench --bench check`; prints figures, asserts nothing.

use std::time::Instant;

fn generate(lines: usize) -> String {
    let mut s = String::new();
    let mut i = 0;
    while s.lines().count() < lines {
        s.push_str(&format!(
            "device D{i} {{\n  compute {{ bf16 = {} TFLOP/s, fp8 = {} TFLOP/s }}\n  memory hbm = {} GB @ 3.35 TB/s\n  power 700 W\n}}\n\
             node N{i} {{\n  device D{i} x 8\n  link nvlink = switch(450 GB/s)\n  nic 400 Gb/s x 8\n}}\n\
             let c{i} = (80 GB + 16 GiB) / (3.35 TB/s) * 2\n\
             model M{i}(layers = 4, d = 512, heads = 8) {{\n  input tokens: i32[batch, seq]\n  x = embedding(tokens, 32000, d)\n\
             repeat layers {{\n    h = rmsnorm(x)\n    a = attention(linear(h, d, d), linear(h, d, d), linear(h, d, d), heads = heads)\n\
             x = x + linear(a, d, d)\n    x = x + linear(silu(linear(rmsnorm(x), d, 4 * d)), 4 * d, d)\n  }}\n  output y = linear(x, d, 32000)\n}}\n\
             workload W{i} {{\n  model M{i}()\n  train {{ seq = 2048, global_batch = 64 }}\n}}\n",
            900 + i % 100,
            1800 + i % 100,
            80 + i % 64,
        ));
        i += 1;
    }
    s
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let src = generate(10_000);
    let lines = src.lines().count();
    let runs = 7;
    let mut check_s = Vec::new();
    let mut fmt_s = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let c = gantry_lang::check::check_source("bench.gantry", &src);
        check_s.push(t.elapsed().as_secs_f64());
        assert!(!c.has_errors(), "{}", c.render(false));
        let t = Instant::now();
        let f = gantry_lang::fmt::format_source(&src).expect("parses");
        fmt_s.push(t.elapsed().as_secs_f64());
        assert!(!f.is_empty());
    }
    let (c, f) = (median(check_s), median(fmt_s));
    println!(
        "front end on a generated {lines}-line file ({} KiB), median of {runs} runs:",
        src.len() / 1024
    );
    println!(
        "  check: {:.1} ms  = {:.0} lines/s",
        c * 1e3,
        lines as f64 / c
    );
    println!(
        "  fmt:   {:.1} ms  = {:.0} lines/s",
        f * 1e3,
        lines as f64 / f
    );
}

//! The `serve` phase of a workload: a request stream, its length
//! distributions, latency SLOs and the engine's scheduler limits.
//!
//! It is one record checked here, apart from `decls.rs`, because every
//! setting has its own range (a rate above zero, an attainment in (0, 1],
//! a hit rate below 1) and every violation is the one code `L076` with
//! the setting's span. The checked [`Serve`] travels beside a decode
//! [`Phase`] at `max_seqs` with the mean lengths, so every consumer that
//! knows only static phases (studies, `--fix`, the runtime) still works.

use std::collections::BTreeMap;

use crate::check::Checker;
use crate::check::suggest;
use crate::check::value::Value;
use crate::diagnostic::{Code, Diagnostic};
use crate::program::{
    Arrivals, Batching, Conversations, DType, Disaggregate, Kernels, Lengths, Phase, Scheduler,
    Serve, Slo,
};
use crate::span::Span;
use crate::units::Dim;

/// The settings a `serve` record takes.
pub const SERVE_SETTINGS: &[&str] = &[
    "arrivals",
    "prompt",
    "generate",
    "slo",
    "attainment",
    "token_budget",
    "max_seqs",
    "chunked_prefill",
    "async_scheduling",
    "kv_block",
    "prefix_hit",
    "memory_utilization",
    "requests",
    "seed",
    "disaggregate",
    "batching",
    "items",
    "dtype",
    "attention",
    "fusion",
    "precision",
    "engine",
    "after",
    "conversations",
    "turns",
    "documents",
    "document",
];

/// The longest `after` chain (runs simulated before the measured one).
pub const MAX_AFTER: usize = 16;
/// Arrival rates, requests per second: below a request in about 12 days
/// the arrival times (up to 10^7 requests) lose the precision latencies
/// need (a double's step at 10^13 s is 2 ms).
pub const MIN_RATE: f64 = 1e-6;
pub const MAX_RATE: f64 = 1e9;
/// SLO targets (`ttft_p99`, `tpot_p99`, `e2e_p99`, `latency_p99`), in
/// seconds: from a microsecond (below it no engine iteration finishes,
/// and a miss came out as a 300-digit percentage for `1e-300 s`) to a day.
pub const MIN_SLO: f64 = 1e-6;
pub const MAX_SLO: f64 = 86_400.0;
/// Coefficients of variation of gamma gaps: below 0.01 the gaps are
/// regular to 1% (write `poisson` or a trace), and the gamma's shape
/// (1 / cv^2) would leave the sampler's range.
pub const MIN_CV: f64 = 0.01;

/// The largest token count of a length distribution, a token budget or a
/// sequence limit (the plan knobs' bound, `MAX_KNOB_VALUE`).
const MAX_TOKENS: f64 = (1u64 << 24) as f64;
/// The most requests one simulation may draw: a few seconds of wall time.
const MAX_REQUESTS: u64 = 10_000_000;
/// The most turns a conversation of a multi-turn dataset may have.
const MAX_TURNS: u64 = 4096;

/// A declared setting: its value and span.
type Setting = (Value, Span);
type Got = BTreeMap<String, Setting>;

impl Checker {
    fn bad_serve(&mut self, span: Span, msg: String, help: &str) {
        self.diags.push(
            Diagnostic::error(Code::L076, msg, span)
                .with_label(span, "out of range")
                .with_help(help.to_string()),
        );
    }

    /// `L076` for a setting declared without the one it goes with.
    fn lone_serve(&mut self, span: Span, msg: String, label: String, help: &str) {
        self.diags.push(
            Diagnostic::error(Code::L076, msg, span)
                .with_label(span, label)
                .with_help(help.to_string()),
        );
    }

    /// Settings `a` and `b`, declared both or neither: `Ok(None)` for
    /// neither, `Err` after an `L076` at the one declared alone (`why`
    /// says why they go together).
    fn serve_pair<'g>(
        &mut self,
        got: &'g Got,
        (a, b): (&str, &str),
        why: &str,
        help: &str,
    ) -> Result<Option<(&'g Setting, &'g Setting)>, ()> {
        match (got.get(a), got.get(b)) {
            (None, None) => Ok(None),
            (Some(x), Some(y)) => Ok(Some((x, y))),
            (one, other) => {
                let ((have, s), missing) = match (one, other) {
                    (Some(x), _) => ((a, x.1), b),
                    (_, Some(y)) => ((b, y.1), a),
                    _ => unreachable!("one of the two is declared"),
                };
                self.lone_serve(
                    s,
                    format!("`{have}` needs `{missing}`: {why}"),
                    format!("`{missing}` is missing"),
                    help,
                );
                Err(())
            }
        }
    }

    /// The file name of a `trace(...)` argument.
    fn trace_path(&mut self, v: Value, span: Span) -> Option<String> {
        match v {
            Value::Str(path) if !path.is_empty() => Some(path),
            Value::Error => None,
            other => {
                self.type_error(&other, span, "a file name such as \"requests.csv\"");
                None
            }
        }
    }

    /// The rows of the `trace("path")` file named at `span` (read when the
    /// naming file was loaded, `Checker::data`), parsed by `parse`;
    /// `L096` when it cannot be read or a row is malformed.
    fn trace_file<T>(
        &mut self,
        path: &str,
        span: Span,
        what: &str,
        parse: fn(&str) -> Result<T, crate::trace::RowError>,
    ) -> Option<T> {
        // Parsed in place: the text (up to 64 MiB) is not copied.
        let parsed = match self.data.get(&(span.file, path.to_string())).or_else(|| {
            self.data
                .iter()
                .find(|((_, p), _)| p == path)
                .map(|(_, r)| r)
        }) {
            Some(Ok(text)) => parse(text).map_err(|e| e.to_string()),
            Some(Err(why)) => Err(why.clone()),
            None => Err("not found".into()),
        };
        match parsed {
            Ok(rows) => Some(rows),
            Err(why) => {
                let form = if what == "`arrivals`" {
                    "`arrival_s,prompt_tokens,generate_tokens`"
                } else {
                    "`prompt_tokens,generate_tokens`"
                };
                self.diags.push(
                    Diagnostic::error(
                        Code::L096,
                        format!("{what}: cannot read the trace `{path}`: {why}"),
                        span,
                    )
                    .with_label(span, "this file")
                    .with_help(format!(
                        "one request per line, {form} (a header line allowed), relative to this file"
                    )),
                );
                None
            }
        }
    }

    /// A plain number in `[lo, hi]` (with `open_lo` / `open_hi` bounds
    /// excluded), `L076` outside.
    #[allow(clippy::too_many_arguments)]
    fn serve_number(
        &mut self,
        v: &Value,
        span: Span,
        what: &str,
        (lo, hi): (f64, f64),
        (open_lo, open_hi): (bool, bool),
        help: &str,
    ) -> Option<f64> {
        let q = self.num(v, span)?;
        if !q.dim.is_none() {
            self.diags.push(
                Diagnostic::error(
                    Code::L041,
                    format!("{what} must be a plain number, not {}", q.dim.describe()),
                    span,
                )
                .with_label(span, "a plain number here")
                .with_help(help.to_string()),
            );
            return None;
        }
        let x = q.value;
        let below = if open_lo { x <= lo } else { x < lo };
        let above = if open_hi { x >= hi } else { x > hi };
        if !x.is_finite() || below || above {
            let (l, r) = (
                if open_lo { "(" } else { "[" },
                if open_hi { ")" } else { "]" },
            );
            self.bad_serve(
                span,
                format!(
                    "{what} must lie in {l}{}, {}{r}, got {}",
                    crate::units::format_number(lo),
                    crate::units::format_number(hi),
                    crate::units::format_number(x)
                ),
                help,
            );
            return None;
        }
        Some(x)
    }

    fn serve_count(&mut self, v: &Value, span: Span, what: &str, max: u64) -> Option<u64> {
        let n = self.count(v, span, what)?;
        if n > max {
            self.bad_serve(
                span,
                format!("{what} must be at most {max}, got {n}"),
                "a smaller value",
            );
            return None;
        }
        Some(n)
    }

    fn arrivals(&mut self, v: &Value, span: Span) -> Option<Arrivals> {
        let Value::Ctor(name, args) = v else {
            if !matches!(v, Value::Error) {
                self.type_error(
                    v,
                    span,
                    "`poisson(rate = 4)`, `gamma(rate = 4, cv = 2)`, `closed(concurrency = 32)`, `burst()` or `trace(\"file.csv\")`",
                );
            }
            return None;
        };
        let rate_of = |this: &mut Self, rv: &Value, rs: Span| {
            this.serve_number(
                rv,
                rs,
                "`rate`",
                (MIN_RATE, MAX_RATE),
                (false, false),
                "a rate in requests per second, a plain number from 0.000001 to 1e9: `rate = 4`",
            )
        };
        match name.as_str() {
            "poisson" => {
                let a = self.ctor_args(name, args, &["rate"])?;
                let (rv, rs) = self.ctor_required(name, &a, "rate", span)?;
                let rate = rate_of(self, &rv, rs)?;
                Some(Arrivals::Poisson { rate })
            }
            "gamma" => {
                let a = self.ctor_args(name, args, &["rate", "cv"])?;
                let (rv, rs) = self.ctor_required(name, &a, "rate", span)?;
                let (cv_v, cv_s) = self.ctor_required(name, &a, "cv", span)?;
                let rate = rate_of(self, &rv, rs);
                let cv = self.serve_number(
                    &cv_v,
                    cv_s,
                    "`cv`",
                    (MIN_CV, 100.0),
                    (false, false),
                    "the coefficient of variation of the gaps, from 0.01 to 100: 1 is Poisson, 2 bursty",
                );
                Some(Arrivals::Gamma {
                    rate: rate?,
                    cv: cv?,
                })
            }
            "trace" => {
                let a = self.ctor_args(name, args, &["file"])?;
                let (fv, fs) = self.ctor_required(name, &a, "file", span)?;
                let path = self.trace_path(fv, fs)?;
                let rows = self.trace_file(&path, fs, "`arrivals`", crate::trace::parse_trace)?;
                Some(Arrivals::Trace {
                    path,
                    rows: std::sync::Arc::new(rows),
                })
            }
            "closed" => {
                let a = self.ctor_args(name, args, &["concurrency"])?;
                let (cv, cs) = self.ctor_required(name, &a, "concurrency", span)?;
                let concurrency = self.serve_count(&cv, cs, "`concurrency`", 1 << 20)?;
                Some(Arrivals::Closed { concurrency })
            }
            "burst" => {
                self.ctor_args(name, args, &[])?;
                Some(Arrivals::Burst)
            }
            _ => {
                self.type_error(
                    v,
                    span,
                    "`poisson(...)`, `gamma(...)`, `closed(...)`, `burst()` or `trace(...)`",
                );
                None
            }
        }
    }

    fn ctor_required(
        &mut self,
        ctor: &str,
        args: &BTreeMap<String, (Value, Span)>,
        p: &str,
        span: Span,
    ) -> Option<(Value, Span)> {
        match args.get(p) {
            Some((v, s)) => Some((v.clone(), *s)),
            None => {
                self.diags.push(
                    Diagnostic::error(
                        Code::L034,
                        format!("`{ctor}` needs its argument `{p}`"),
                        span,
                    )
                    .with_label(span, format!("no `{p}`"))
                    .with_help(format!("add `{p} = ...`")),
                );
                None
            }
        }
    }

    fn lengths(&mut self, v: &Value, span: Span, what: &str) -> Option<Lengths> {
        let help = "a token count from 1 to 16777216";
        match v {
            Value::Num(_) => {
                let n = self.serve_count(v, span, what, MAX_TOKENS as u64)?;
                Some(Lengths::Fixed(n))
            }
            Value::Sym(s, _) if s == "trace" => Some(Lengths::Trace),
            Value::Ctor(name, args) if name == "trace" => {
                let a = self.ctor_args(name, args, &["file"])?;
                let (fv, fs) = self.ctor_required(name, &a, "file", span)?;
                let path = self.trace_path(fv, fs)?;
                let rows = self.trace_file(&path, fs, what, crate::trace::parse_lengths)?;
                // `prompt` (and `items`) read the first column, `generate`
                // the second.
                let col = rows
                    .iter()
                    .map(|&(p, g)| if what == "`generate`" { g } else { p })
                    .collect();
                Some(Lengths::Replay {
                    path,
                    rows: std::sync::Arc::new(col),
                })
            }
            Value::Ctor(name, args) if name == "fixed" => {
                let a = self.ctor_args(name, args, &["tokens"])?;
                let (tv, ts) = self.ctor_required(name, &a, "tokens", span)?;
                let n = self.serve_count(&tv, ts, what, MAX_TOKENS as u64)?;
                Some(Lengths::Fixed(n))
            }
            Value::Ctor(name, args) if name == "uniform" => {
                let a = self.ctor_args(name, args, &["lo", "hi"])?;
                let (lv, ls) = self.ctor_required(name, &a, "lo", span)?;
                let (hv, hs) = self.ctor_required(name, &a, "hi", span)?;
                let lo = self.serve_count(&lv, ls, "`lo`", MAX_TOKENS as u64);
                let hi = self.serve_count(&hv, hs, "`hi`", MAX_TOKENS as u64);
                let (lo, hi) = (lo?, hi?);
                if lo > hi {
                    self.bad_serve(
                        span,
                        format!("{what}: `uniform` needs lo <= hi, got {lo} > {hi}"),
                        "swap the bounds",
                    );
                    return None;
                }
                Some(Lengths::Uniform { lo, hi })
            }
            Value::Ctor(name, args) if name == "lognormal" => {
                let a = self.ctor_args(name, args, &["mean", "spread"])?;
                let (mv, ms) = self.ctor_required(name, &a, "mean", span)?;
                let (sv, ss) = self.ctor_required(name, &a, "spread", span)?;
                let mean =
                    self.serve_number(&mv, ms, "`mean`", (1.0, MAX_TOKENS), (false, false), help);
                let spread = self.serve_number(
                    &sv,
                    ss,
                    "`spread`",
                    (0.0, 3.0),
                    (false, false),
                    "the standard deviation of the lengths' logarithm, 0 to 3 (0.5 is typical)",
                );
                Some(Lengths::LogNormal {
                    mean: mean?,
                    spread: spread?,
                })
            }
            Value::Error => None,
            other => {
                self.type_error(
                    other,
                    span,
                    "a token count, `fixed(n)`, `uniform(lo, hi)`, `lognormal(mean, spread)`, `trace` or `trace(\"lengths.csv\")`",
                );
                None
            }
        }
    }

    fn slo(&mut self, v: &Value, span: Span, batched: bool) -> Option<Slo> {
        let Value::Record(fields) = v else {
            if !matches!(v, Value::Error) {
                self.type_error(
                    v,
                    span,
                    "a record `{ ttft_p99 = 500 ms, tpot_p99 = 50 ms }`",
                );
            }
            return None;
        };
        let mut got: BTreeMap<String, f64> = BTreeMap::new();
        let mut ok = true;
        let names = ["ttft_p99", "tpot_p99", "e2e_p99"];
        for (k, ks, fv, fs) in fields {
            let other_kind = if batched {
                names.contains(&k.as_str())
            } else {
                k == "latency_p99"
            };
            if other_kind {
                self.diags.push(
                    Diagnostic::error(
                        Code::L086,
                        if batched {
                            format!("`{k}` is a token-latency target; a workload with a batching window is served whole and its one target is `latency_p99`")
                        } else {
                            format!("`{k}` is the target of a workload with a batching window; this one streams tokens")
                        },
                        *ks,
                    )
                    .with_label(*ks, "not a target of this workload")
                    .with_help(if batched {
                        "write `slo = { latency_p99 = 10 ms }`"
                    } else {
                        "use `ttft_p99`, `tpot_p99` and `e2e_p99`, or declare `batching = batch_window(...)`"
                    }),
                );
                ok = false;
                continue;
            }
            if !names.contains(&k.as_str()) && k != "latency_p99" {
                let mut d =
                    Diagnostic::error(Code::L071, format!("`slo` has no target `{k}`"), *ks)
                        .with_label(*ks, "unknown target");
                d = match suggest(k, names.into_iter()) {
                    Some(x) => d.with_help(format!("did you mean `{x}`?")),
                    None => d.with_help("`slo` takes: ttft_p99, tpot_p99, e2e_p99"),
                };
                self.diags.push(d);
                ok = false;
                continue;
            }
            match self.quantity(fv, *fs, Dim::TIME, &format!("`{k}`"), "500 ms") {
                Some(t) if (MIN_SLO..=MAX_SLO).contains(&t) => {
                    got.insert(k.clone(), t);
                }
                Some(t) => {
                    self.bad_serve(
                        *fs,
                        format!(
                            "`{k}` must lie in [1 us, 1 day], got {}",
                            crate::units::Quantity::new(t, Dim::TIME)
                        ),
                        "a latency target from 1 us to 1 day",
                    );
                    ok = false;
                }
                None => ok = false,
            }
        }
        let needed: &[&str] = if batched {
            &["latency_p99"]
        } else {
            &["ttft_p99", "tpot_p99"]
        };
        for &need in needed {
            if ok && !got.contains_key(need) {
                self.diags.push(
                    Diagnostic::error(Code::L071, format!("`slo` needs target `{need}`"), span)
                        .with_label(span, format!("`{need}` is missing"))
                        .with_help(format!("add `{need} = ...`")),
                );
                ok = false;
            }
        }
        if !ok {
            return None;
        }
        if batched {
            // A request's first token is its last: every target is the
            // request latency (TPOT is 0 for one-item answers).
            let l = got["latency_p99"];
            return Some(Slo {
                ttft_p99: l,
                tpot_p99: l,
                e2e_p99: Some(l),
            });
        }
        Some(Slo {
            ttft_p99: got["ttft_p99"],
            tpot_p99: got["tpot_p99"],
            e2e_p99: got.get("e2e_p99").copied(),
        })
    }

    /// `conversations = N, turns = K` (both or neither): a multi-turn
    /// dataset of `N x K` entries whose prompts are drawn turn by turn
    /// (not from a trace's prompt column); `Err` after a diagnostic.
    fn conversations(
        &mut self,
        got: &Got,
        span: Span,
        input: &Option<Lengths>,
    ) -> Result<Option<Conversations>, ()> {
        if !got.contains_key("conversations") && !got.contains_key("turns") {
            if let Some((_, s)) = got.get("documents").or_else(|| got.get("document")) {
                self.lone_serve(
                    *s,
                    "shared documents open the conversations of a multi-turn dataset: declare `conversations` and `turns`".into(),
                    "no conversations".into(),
                    "e.g. `conversations = 100, turns = 5, documents = 10, document = fixed(4000)`",
                );
                return Err(());
            }
            return Ok(None);
        }
        let Some(((cv, cs), (tv, ts))) = self.serve_pair(
            got,
            ("conversations", "turns"),
            "a multi-turn dataset declares both",
            "e.g. `conversations = 100, turns = 5`: 500 entries, entry (c, k) sending conversation c's first k turns",
        )?
        else {
            return Ok(None);
        };
        let count = self.serve_count(cv, *cs, "`conversations`", MAX_REQUESTS);
        let turns = self.serve_count(tv, *ts, "`turns`", MAX_TURNS);
        let (Some(count), Some(turns)) = (count, turns) else {
            return Err(());
        };
        if count.saturating_mul(turns) > MAX_REQUESTS {
            self.bad_serve(
                *cs,
                format!(
                    "`conversations` x `turns` must be at most {MAX_REQUESTS} entries, got {count} x {turns}"
                ),
                "a dataset of fewer conversations or turns",
            );
            return Err(());
        }
        if matches!(input, Some(Lengths::Trace)) {
            let s = got.get("prompt").map_or(span, |g| g.1);
            self.bad_serve(
                s,
                "a multi-turn dataset draws each turn's message: `prompt = trace` gives whole prompts".into(),
                "give a turn's user message as a distribution, e.g. `prompt = lognormal(mean = 200, spread = 0.5)`",
            );
            return Err(());
        }
        let documents = match self.serve_pair(
            got,
            ("documents", "document"),
            "shared opening documents declare how many and how long",
            "e.g. `documents = 10, document = fixed(4000)`",
        )? {
            None => None,
            Some(((mv, ms), (lv, ls))) => {
                let m = self.serve_count(mv, *ms, "`documents`", MAX_REQUESTS);
                let l = self.lengths(lv, *ls, "`document`");
                if matches!(l, Some(Lengths::Trace)) {
                    self.bad_serve(
                        *ls,
                        "`document = trace` needs a trace of whole requests; give the documents' lengths as a distribution".into(),
                        "e.g. `document = fixed(4000)`",
                    );
                    return Err(());
                }
                Some((m.ok_or(())?, l.ok_or(())?))
            }
        };
        Ok(Some(Conversations {
            count,
            turns,
            documents,
        }))
    }

    /// `batch_window(max_batch = 512, max_wait = 2 ms)`.
    fn batching(&mut self, v: &Value, span: Span) -> Option<Batching> {
        let want = "`batch_window(max_batch = 512, max_wait = 2 ms)`";
        let Value::Ctor(name, args) = v else {
            if !matches!(v, Value::Error) {
                self.type_error(v, span, want);
            }
            return None;
        };
        if name != "batch_window" {
            self.type_error(v, span, want);
            return None;
        }
        let a = self.ctor_args(name, args, &["max_batch", "max_wait"])?;
        let (bv, bs) = self.ctor_required(name, &a, "max_batch", span)?;
        let (wv, ws) = self.ctor_required(name, &a, "max_wait", span)?;
        let max_batch = self.serve_count(&bv, bs, "`max_batch`", MAX_TOKENS as u64);
        let max_wait = match self.quantity(&wv, ws, Dim::TIME, "`max_wait`", "2 ms") {
            Some(t) if (0.0..=3600.0).contains(&t) => Some(t),
            Some(t) => {
                self.bad_serve(
                    ws,
                    format!(
                        "`max_wait` must lie in [0 s, 1 h], got {}",
                        crate::units::Quantity::new(t, Dim::TIME)
                    ),
                    "the longest a request is held for a fuller batch, e.g. `max_wait = 2 ms`",
                );
                None
            }
            None => None,
        };
        Some(Batching {
            max_batch: max_batch?,
            max_wait: max_wait?,
        })
    }

    fn scheduler(&mut self, got: &Got) -> Option<Scheduler> {
        let mut ok = true;
        let mut read = |c: &mut Checker, k: &str, default: u64, max: u64| -> u64 {
            match got.get(k) {
                Some((v, s)) => c
                    .serve_count(v, *s, &format!("`{k}`"), max)
                    .unwrap_or_else(|| {
                        ok = false;
                        default
                    }),
                None => default,
            }
        };
        let token_budget = read(self, "token_budget", 8192, MAX_TOKENS as u64);
        let max_seqs = read(self, "max_seqs", 256, MAX_TOKENS as u64);
        let kv_block = read(self, "kv_block", 16, 65536);
        let mut flag = |c: &mut Self, k: &str, default: bool| match got.get(k) {
            Some((Value::Bool(b), _)) => *b,
            Some((Value::Error, _)) => {
                ok = false;
                default
            }
            Some((other, s)) => {
                c.type_error(other, *s, "`true` or `false`");
                ok = false;
                default
            }
            None => default,
        };
        let chunked_prefill = flag(self, "chunked_prefill", true);
        let async_scheduling = flag(self, "async_scheduling", false);
        ok.then_some(Scheduler {
            token_budget,
            max_seqs,
            chunked_prefill,
            kv_block,
            async_scheduling,
        })
    }

    /// The optional settings with their defaults: attainment, prefix hit
    /// rate, memory utilization, requests, seed, disaggregation.
    fn serve_options(&mut self, got: &Got) -> Option<(f64, f64, f64, u64, u64, Disaggregate)> {
        let mut ok = true;
        let attainment = match got.get("attainment") {
            Some((v, s)) => self.serve_number(
                v,
                *s,
                "`attainment`",
                (0.0, 1.0),
                (true, false),
                "the share of requests that must meet every SLO, e.g. 0.99",
            ),
            None => Some(0.99),
        };
        let prefix_hit = match got.get("prefix_hit") {
            Some((v, s)) => self.serve_number(
                v,
                *s,
                "`prefix_hit`",
                (0.0, 1.0),
                (false, true),
                "the share of each prompt found in the prefix cache, from 0 up to (not) 1",
            ),
            None => Some(0.0),
        };
        let memory_utilization = match got.get("memory_utilization") {
            Some((v, s)) => self.serve_number(
                v,
                *s,
                "`memory_utilization`",
                (0.0, 1.0),
                (true, false),
                "the share of each device's HBM the server may use, above 0 and at most 1 (vLLM's default is 0.9)",
            ),
            None => Some(1.0),
        };
        let requests = match got.get("requests") {
            Some((v, s)) => self.serve_count(v, *s, "`requests`", MAX_REQUESTS),
            None => Some(2000),
        };
        let seed = match got.get("seed") {
            Some((v, s)) => self.int(v, *s, "`seed`").and_then(|i| {
                u64::try_from(i).ok().or_else(|| {
                    self.bad_serve(
                        *s,
                        format!("`seed` must not be negative, got {i}"),
                        "0 or more",
                    );
                    None
                })
            }),
            None => Some(1),
        };
        let disaggregate = match got.get("disaggregate") {
            Some((Value::Bool(true), _)) => Some(Disaggregate::Yes),
            Some((Value::Bool(false), _)) => Some(Disaggregate::No),
            Some((Value::Sym(n, _), _)) if n == "auto" => Some(Disaggregate::Auto),
            Some((Value::Error, _)) => None,
            Some((other, s)) => {
                self.type_error(other, *s, "`true`, `false` or `auto`");
                None
            }
            None => Some(Disaggregate::Auto),
        };
        for x in [
            attainment.is_none(),
            prefix_hit.is_none(),
            memory_utilization.is_none(),
            requests.is_none(),
        ] {
            ok &= !x;
        }
        if !ok {
            return None;
        }
        Some((
            attainment?,
            prefix_hit?,
            memory_utilization?,
            requests?,
            seed?,
            disaggregate?,
        ))
    }

    /// A `serve { ... }` record: the decode phase the static cost model
    /// reads, its element type and kernels, and the serving settings.
    pub(crate) fn serve_phase(
        &mut self,
        v: &Value,
        span: Span,
    ) -> Option<(Phase, DType, Kernels, Span, Serve)> {
        let fields = self.record(v, span, "serving settings")?;
        let mut got: Got = BTreeMap::new();
        let mut ok = true;
        for (k, ks, fv, fs) in fields {
            if !SERVE_SETTINGS.contains(&k.as_str()) {
                let mut d =
                    Diagnostic::error(Code::L071, format!("`serve` has no setting `{k}`"), ks)
                        .with_label(ks, "unknown setting");
                d = match suggest(&k, SERVE_SETTINGS.iter().copied()) {
                    Some(x) => d.with_help(format!("did you mean `{x}`?")),
                    None => d.with_help(format!("`serve` takes: {}", SERVE_SETTINGS.join(", "))),
                };
                self.diags.push(d);
                ok = false;
                continue;
            }
            got.insert(k, (fv, fs));
        }
        let need = |c: &mut Checker, k: &str| -> Option<(Value, Span)> {
            let r = got.get(k).cloned();
            if r.is_none() {
                c.diags.push(
                    Diagnostic::error(Code::L071, format!("`serve` needs setting `{k}`"), span)
                        .with_label(span, format!("`{k}` is missing"))
                        .with_help(format!("add `{k} = ...`")),
                );
            }
            r
        };
        let batching = match got.get("batching") {
            Some((v, s)) => {
                let (v, s) = (v.clone(), *s);
                match self.batching(&v, s) {
                    Some(b) => Some(b),
                    None => {
                        ok = false;
                        None
                    }
                }
            }
            None => None,
        };
        let batched = got.contains_key("batching");
        // Settings of the other kind of serving (L085).
        let foreign: &[&str] = if batched {
            &[
                "prompt",
                "generate",
                "token_budget",
                "max_seqs",
                "chunked_prefill",
                "async_scheduling",
                "kv_block",
                "prefix_hit",
                "memory_utilization",
                "disaggregate",
                "after",
                "conversations",
                "turns",
                "documents",
                "document",
            ]
        } else {
            &["items"]
        };
        for k in foreign {
            if let Some((_, ks)) = got.get(*k) {
                self.diags.push(
                    Diagnostic::error(
                        Code::L085,
                        if batched {
                            format!("`{k}` is a setting of LLM continuous batching; a workload with a batching window does not take it")
                        } else {
                            format!("`{k}` needs a batching window (`batching = batch_window(...)`)")
                        },
                        *ks,
                    )
                    .with_label(*ks, "not a setting of this workload")
                    .with_help(if batched {
                        "a batching-window workload takes arrivals, items, batching, slo, attainment, requests, seed and the kernel settings"
                    } else {
                        "declare `batching = batch_window(max_batch = ..., max_wait = ...)`, or remove `items`"
                    }),
                );
                ok = false;
            }
        }
        let arrivals = need(self, "arrivals").and_then(|(v, s)| self.arrivals(&v, s));
        let (input, output) = if batched {
            let items = match got.get("items") {
                Some((v, s)) => {
                    let (v, s) = (v.clone(), *s);
                    self.lengths(&v, s, "`items`")
                }
                None => Some(Lengths::Fixed(1)),
            };
            (items, Some(Lengths::Fixed(1)))
        } else {
            (
                need(self, "prompt").and_then(|(v, s)| self.lengths(&v, s, "`prompt`")),
                need(self, "generate").and_then(|(v, s)| self.lengths(&v, s, "`generate`")),
            )
        };
        let slo = need(self, "slo").and_then(|(v, s)| self.slo(&v, s, batched));
        let scheduler = self.scheduler(&got);
        let options = self.serve_options(&got);
        let dtype = match got.get("dtype") {
            Some((v, s)) => {
                let (v, s) = (v.clone(), *s);
                self.dtype(&v, s)
            }
            None => Some(DType::Bf16),
        };
        let kernels = self.kernels(&got);
        let engine = match got.get("engine") {
            Some((v, s)) => {
                let (v, s) = (v.clone(), *s);
                match self.serve_engine(&v, s) {
                    Some(e) => Some(e),
                    None => {
                        ok = false;
                        None
                    }
                }
            }
            None => None,
        };
        let after = match got.get("after") {
            Some((v, s)) if !batched => {
                let (v, s) = (v.clone(), *s);
                match self.serve_after(&v, s) {
                    Some(a) => a,
                    None => {
                        ok = false;
                        Vec::new()
                    }
                }
            }
            _ => Vec::new(),
        };
        let conversations = if batched {
            None
        } else {
            match self.conversations(&got, span, &input) {
                Ok(c) => c,
                Err(()) => {
                    ok = false;
                    None
                }
            }
        };
        let traced = matches!(arrivals, Some(Arrivals::Trace { .. }));
        for (l, name) in [
            (&input, if batched { "items" } else { "prompt" }),
            (&output, "generate"),
        ] {
            if matches!(l, Some(Lengths::Trace)) && arrivals.is_some() && !traced {
                let s = got.get(name).map_or(span, |g| g.1);
                self.bad_serve(
                    s,
                    format!("`{name} = trace` needs `arrivals = trace(\"file.csv\")`"),
                    "give a distribution, or read the requests from a trace",
                );
                ok = false;
            }
        }
        let (arrivals, input, output, slo, scheduler, options) =
            (arrivals?, input?, output?, slo?, scheduler?, options?);
        if !ok {
            return None;
        }
        let (attainment, prefix_hit, memory_utilization, requests, seed, mut disaggregate) =
            options;
        let (phase, scheduler) = if let Some(b) = batching {
            // The static step: one forward pass of a full batch (a model
            // without a sequence, as `prefill { batch }` declares it).
            // The scheduler runs whole requests: a budget of `max_batch`
            // items, unchunked, a block per item (no KV cache).
            disaggregate = Disaggregate::No;
            (
                Phase::Prefill {
                    batch: b.max_batch,
                    prompt: None,
                },
                Scheduler {
                    token_budget: b.max_batch,
                    max_seqs: b.max_batch,
                    chunked_prefill: false,
                    kv_block: 1,
                    async_scheduling: false,
                },
            )
        } else {
            // The static decode step: `max_seqs` sequences at the mean
            // lengths (of a multi-turn dataset, the mean entry: turn k
            // sends the document, k messages and k - 1 answers, for k =
            // 1..K equally often).
            let prompt = conversations
                .as_ref()
                .map_or(input.mean(), |c| {
                    let k = (c.turns as f64 + 1.0) / 2.0;
                    c.documents.as_ref().map_or(0.0, |d| d.1.mean())
                        + k * input.mean()
                        + (k - 1.0) * output.mean()
                })
                .round()
                .clamp(1.0, MAX_TOKENS) as u64;
            let generate = output.mean().round().max(1.0) as u64;
            (
                Phase::Decode {
                    batch: scheduler.max_seqs,
                    context: prompt + generate / 2,
                    generate: Some(generate),
                    prompt: Some(prompt),
                },
                scheduler,
            )
        };
        let serve = Serve {
            arrivals,
            input,
            output,
            slo,
            attainment,
            scheduler,
            prefix_hit,
            memory_utilization,
            requests,
            seed,
            disaggregate,
            batching,
            engine,
            after,
            conversations,
            span,
        };
        Some((phase, dtype?, kernels?, span, serve))
    }

    /// The `after = NAME` setting: NAME's chain of earlier runs, then
    /// NAME's own serving settings (with an empty `after`); `L097` when
    /// NAME is not an LLM serving workload or the chain is longer than
    /// [`MAX_AFTER`]. A cycle is the declaration cycle error of `open`.
    fn serve_after(&mut self, v: &Value, span: Span) -> Option<Vec<Serve>> {
        let bad = |this: &mut Self, msg: String, label: &str, help: String| {
            this.diags.push(
                Diagnostic::error(Code::L097, msg, span)
                    .with_label(span, label.to_string())
                    .with_help(help),
            );
            None
        };
        let inst = match v {
            Value::Decl(i) if i.kind == crate::ast::DeclKind::Workload => i.clone(),
            Value::Error => return None,
            Value::Sym(n, _) => {
                return bad(
                    self,
                    format!("`after` names `{n}`, which is not a declared workload"),
                    "no workload of this name",
                    "name the serving workload this server ran before this one".into(),
                );
            }
            other => {
                return bad(
                    self,
                    format!("`after` names a serving workload, not {}", other.describe()),
                    "expected a workload's name",
                    "name the serving workload this server ran before this one".into(),
                );
            }
        };
        let w = self.workload(&inst, span)?;
        let Some(s) = w.serve.filter(|s| s.batching.is_none()) else {
            return bad(
                self,
                format!(
                    "`after` names `{}`, which is not an LLM serving workload",
                    inst.name
                ),
                "not a `serve` workload with prompts",
                "name a `serve` workload without a batching window: its requests run first on this deployment".into(),
            );
        };
        let mut chain = s.after.clone();
        let mut me = *s;
        me.after = Vec::new();
        chain.push(me);
        if chain.len() > MAX_AFTER {
            return bad(
                self,
                format!(
                    "`after` chains {} earlier runs, more than {MAX_AFTER}",
                    chain.len()
                ),
                "too long a chain",
                format!("start the chain at most {MAX_AFTER} runs before this one"),
            );
        }
        Some(chain)
    }
}

//! The one sharded program, checked three ways on blocks that are not
//! Megatron-shaped: its layouts and collectives against expectations
//! written by hand from the op classes (not copied from the output), and,
//! by execution, that the sharded run computes the reference's outputs and
//! gradients and that the bytes each device sends for tensor parallelism
//! are exactly the cost model's.

use std::collections::BTreeMap;

use gantry::runtime_cli::{TargetArgs, resolve_target, traffic_rows};
use gantry_compiler::sharded::{self, Kind, Layout, Mesh, Pass, Program, Strategy};
use gantry_runtime::exec::{self, RunConfig};

/// A file with one model whose repeated block is `body` (reading and
/// reassigning the residual stream `x` of width `d`), a training workload
/// and a plan.
fn source(body: &str, args: &str) -> String {
    format!(
        "import \"stdlib/clusters/grand_teton_roce.gantry\"
model Blk(layers, d, f, heads, experts = 4, vocab) {{
  input tokens: i32[batch, seq]
  x = embedding(tokens, vocab, d)
  repeat layers {{
{body}
  }}
  output logits = linear(rmsnorm(x), d, vocab)
}}
workload w {{
  model Blk({args})
  train {{ seq = 8, global_batch = 4, dtype = bf16, optimizer = adamw }}
}}
plan p on GrandTetonRoCE for w {{
  search tp in {{1, 2, 4}}
  objective maximize tokens_per_s
}}
"
    )
}

/// Writes the file of `body` to a temporary folder; returns its path.
fn write(name: &str, body: &str) -> String {
    let dir = std::env::temp_dir().join(format!("gantry-sharding-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join(format!("{name}.gantry"));
    std::fs::write(&file, source(body, ARGS)).expect("write");
    file.display().to_string()
}

const ARGS: &str = "layers = 2, d = 32, f = 48, heads = 4, vocab = 64";

/// A LayerNorm between the two projections of an MLP.
const NORM_BETWEEN: &str = "    h = layernorm(x)
    x = x + linear(layernorm(gelu(linear(h, d, f))), f, d)";

/// Attention written with `matmul` (scores, softmax, weighted sum).
const MATMUL_ATTENTION: &str = "    h = rmsnorm(x)
    q = linear(h, d, d)
    k = reshape(linear(h, d, d), [batch, d, seq])
    v = linear(h, d, d)
    p = softmax(matmul(q, k))
    x = x + linear(matmul(p, v), d, d)";

/// Three linears in a row.
const THREE_LINEAR: &str = "    h = rmsnorm(x)
    x = x + linear(relu(linear(relu(linear(h, d, f)), f, f)), f, d)";

/// Mixtral's block: grouped-query attention then a mixture of experts.
const MIXTRAL: &str = "    h = rmsnorm(x)
    q = linear(h, d, d)
    k = linear(h, d, d / 2)
    v = linear(h, d, d / 2)
    a = attention(q, k, v, heads = heads, kv_heads = heads / 2, causal = true)
    x = x + linear(a, d, d)
    x = x + moe(rmsnorm(x), experts = experts, top_k = 2, d_ff = f)";

/// GPT-J / PaLM: attention and MLP in parallel from one norm.
const PARALLEL_BLOCK: &str = "    h = layernorm(x)
    q = linear(h, d, d)
    k = linear(h, d, d)
    v = linear(h, d, d)
    a = attention(q, k, v, heads = heads, causal = true)
    x = x + linear(a, d, d) + linear(gelu(linear(h, d, f)), f, d)";

/// A mixture of experts with a shared (always-on) SwiGLU expert.
const SHARED_EXPERT: &str = "    h = rmsnorm(x)
    x = x + moe(h, experts = experts, top_k = 2, d_ff = f) + linear(silu(linear(h, d, f)) * linear(h, d, f), f, d)";

/// The carried value produced by a linear: a split form would leave the
/// iteration split, so the body's linears run whole.
const LINEAR_CARRY: &str = "    x = linear(relu(x), d, d)";

/// A bottleneck adapter (down to 4 features and back up), the block where
/// the extraction runs the up-projection whole on real hardware
/// (`compiler/tests/search.rs`).
const ADAPTER: &str = "    h = rmsnorm(x)
    down = linear(h, d, 4)
    up = linear(relu(down), 4, d)
    x = x + up";

/// The sharded program of the file's workload on `tp` ranks, and the
/// names of its tensors.
fn program(body: &str, tp: usize, sp: bool) -> (Program, Vec<String>) {
    program_with(body, tp, sp, &[])
}

/// [`program`] with the contractions producing the tensors named `whole`
/// run whole (the extraction's choice).
fn program_with(body: &str, tp: usize, sp: bool, whole: &[&str]) -> (Program, Vec<String>) {
    let forms: Vec<(&str, Form)> = whole.iter().map(|n| (*n, Form::Whole)).collect();
    program_forms(body, tp, sp, &forms)
}

/// [`program`] with the contractions producing the named tensors pinned
/// to a form.
fn program_forms(
    body: &str,
    tp: usize,
    sp: bool,
    forms: &[(&str, Form)],
) -> (Program, Vec<String>) {
    let file = write(&format!("p{}", body.len()), body);
    let c = gantry::check_files(&[file], &[]);
    let w = c
        .program
        .workloads
        .values()
        .next()
        .cloned()
        .unwrap_or_else(|| panic!("no workload:\n{}", c.render(false)));
    let g = &w.model.graph;
    let mut b = w.bindings.clone();
    b.insert("batch".into(), 1);
    let numel: Vec<f64> = g
        .tensors
        .iter()
        .map(|t| t.shape.numel().eval(&b).expect("bound") as f64)
        .collect();
    let mesh = Mesh {
        forms: g
            .tensors
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                let f = forms.iter().find(|(n, _)| *n == t.name)?.1;
                Some((gantry_lang::program::TensorId(i as u32), f))
            })
            .collect(),
        ..Mesh::new(tp, sp)
    };
    let p = sharded::build(g, &numel, &mesh).expect("shardable");
    (p, g.tensors.iter().map(|t| t.name.clone()).collect())
}

/// `(op, strategy, result layout)` of every op of the program, in order.
fn shape_of(p: &Program) -> Vec<(&'static str, Strategy, Layout)> {
    p.ops.iter().map(|o| (o.op, o.strategy, o.layout)).collect()
}

/// Collectives of one pass as `kind -> elements per sample`, summed.
fn volume(p: &Program, pass: Pass) -> BTreeMap<Kind, f64> {
    let mut m = BTreeMap::new();
    for c in p.comms().filter(|c| c.pass == pass) {
        *m.entry(c.kind).or_insert(0.0) += c.elems;
    }
    m
}

use Kind::{AllGather as AG, AllReduce as AR, ReduceScatter as RS};
use Layout::{Cols, Rep, Rows};
use Strategy::{Column, ExpertWidth, Heads, Local, Replicated, Row, Vocab};
use gantry_compiler::sharded::Form;

const S: f64 = 8.0; // tokens per sample
const D: f64 = 32.0;
const F: f64 = 48.0;
const V: f64 = 64.0;

/// An up-projection the extraction runs whole reads its 4-feature input
/// gathered, computes on every rank and leaves the residual stream whole:
/// the all-reduce of d features per token that its row-parallel form
/// needs becomes an all-gather of 4.
#[test]
fn a_contraction_run_whole_gathers_its_input() {
    let c2 = Cols { groups: 2 };
    let (split, _) = program(ADAPTER, 2, false);
    let (p, _) = program_with(ADAPTER, 2, false, &["up"]);
    let block = |p: &Program| shape_of(p)[1..6].to_vec();
    assert_eq!(
        block(&split),
        vec![
            ("rmsnorm", Replicated, Rep),
            ("linear", Column, c2),
            ("relu", Local, c2),
            ("linear", Row, Rep),
            ("add", Local, Rep),
        ]
    );
    assert_eq!(
        block(&p),
        vec![
            ("rmsnorm", Replicated, Rep),
            ("linear", Column, c2),
            ("relu", Local, c2),
            ("linear", Replicated, Rep),
            ("add", Local, Rep),
        ]
    );
    // Forward: the embedding's all-reduce (d), the gather of the 4
    // features (the split form all-reduces d instead).
    let fwd: BTreeMap<Kind, f64> = [(AR, S * D), (AG, S * 4.0)].into();
    assert_eq!(volume(&p, Pass::Forward), fwd);
    assert_eq!(volume(&split, Pass::Forward), [(AR, S * D + S * D)].into());
    // Backward: the partial gradients of the down-projection's and the
    // head's inputs (d each), and the 4 features gathered again for the
    // whole up-projection's weight gradient.
    let bwd: BTreeMap<Kind, f64> = [(AR, 2.0 * S * D), (AG, S * 4.0)].into();
    assert_eq!(volume(&p, Pass::Backward), bwd);
    for tp in [2, 4] {
        for sp in [false, true] {
            let fix = format!("{POINT},tp={tp},sequence_parallel={sp}");
            let whole = run_exact_with("adapter_whole", ADAPTER, &fix, &["up"])
                .unwrap_or_else(|e| panic!("{e}"));
            let both = run_exact_with("adapter_both", ADAPTER, &fix, &["up", "down"])
                .unwrap_or_else(|e| panic!("{e}"));
            // The pin changes the program run and priced: with both
            // projections whole the block has no collective at all.
            assert!(both < whole, "{fix}: both {both} B, up {whole} B");
            run_exact("adapter", ADAPTER, &fix).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

#[test]
fn layernorm_between_projections_is_gathered() {
    let (p, _) = program(NORM_BETWEEN, 2, false);
    let c2 = Cols { groups: 2 };
    assert_eq!(
        shape_of(&p),
        vec![
            ("embedding", Vocab, Rep),
            ("layernorm", Replicated, Rep),
            ("linear", Column, c2),
            ("gelu", Local, c2),
            // The norm needs whole rows: the split features are gathered.
            ("layernorm", Replicated, Rep),
            ("linear", Column, c2),
            // The residual stream stays whole: the projection is gathered.
            ("add", Local, Rep),
            ("rmsnorm", Replicated, Rep),
            ("linear", Column, c2),
        ]
    );
    // Forward: the embedding's all-reduce; in the block (listed once) the gather of the
    // norm's input (f) and of the second projection (d).
    let expect_fwd: BTreeMap<Kind, f64> = [(AR, S * D), (AG, S * F + S * D)].into();
    assert_eq!(volume(&p, Pass::Forward), expect_fwd);
    // Backward, in the block (listed once): partial input gradients of the two
    // column-parallel projections reduced (f, d), the norm's split input
    // gathered again (f); once: the head's input (d).
    let expect_bwd: BTreeMap<Kind, f64> = [(AR, (S * F + S * D) + S * D), (AG, S * F)].into();
    assert_eq!(volume(&p, Pass::Backward), expect_bwd);
}

#[test]
fn matmul_attention_gathers_the_split_queries() {
    let (p, _) = program(MATMUL_ATTENTION, 2, false);
    let c2 = Cols { groups: 2 };
    assert_eq!(
        shape_of(&p),
        vec![
            ("embedding", Vocab, Rep),
            ("rmsnorm", Replicated, Rep),
            ("linear", Column, c2),
            ("linear", Column, c2),
            ("reshape", Replicated, Rep),
            ("linear", Column, c2),
            // q is split along the summed dimension: no split product is
            // sound, so q and k are whole.
            ("matmul", Replicated, Rep),
            ("softmax", Replicated, Rep),
            // Whole scores times values split by features: split output.
            ("matmul", Column, c2),
            ("linear", Row, Rep),
            ("add", Local, Rep),
            ("rmsnorm", Replicated, Rep),
            ("linear", Column, c2),
        ]
    );
    // Forward in the block (listed once): gather k (for the reshape) and q; the output
    // projection's all-reduce.
    let expect_fwd: BTreeMap<Kind, f64> = [(AR, S * D + S * D), (AG, 2.0 * S * D)].into();
    assert_eq!(volume(&p, Pass::Forward), expect_fwd);
}

#[test]
fn three_linears_alternate_column_and_row() {
    let (p, _) = program(THREE_LINEAR, 2, false);
    let c2 = Cols { groups: 2 };
    assert_eq!(
        shape_of(&p),
        vec![
            ("embedding", Vocab, Rep),
            ("rmsnorm", Replicated, Rep),
            ("linear", Column, c2),
            ("relu", Local, c2),
            ("linear", Row, Rep),
            ("relu", Local, Rep),
            ("linear", Column, c2),
            ("add", Local, Rep),
            ("rmsnorm", Replicated, Rep),
            ("linear", Column, c2),
        ]
    );
    // Forward in the block (listed once): the row-parallel all-reduce (f) and the gather of
    // the last projection into the residual stream (d).
    let expect_fwd: BTreeMap<Kind, f64> = [(AR, S * D + S * F), (AG, S * D)].into();
    assert_eq!(volume(&p, Pass::Forward), expect_fwd);
    // Backward in the block (listed once): the two column-parallel inputs' partial sums
    // (f and d); once: the head's input.
    let expect_bwd: BTreeMap<Kind, f64> = [(AR, (S * F + S * D) + S * D)].into();
    assert_eq!(volume(&p, Pass::Backward), expect_bwd);
}

/// Three projections named so they can be pinned.
const THREE_NAMED: &str = "    h = rmsnorm(x)
    a = linear(h, d, f)
    b = linear(relu(a), f, f)
    c = linear(relu(b), f, d)
    x = x + c";

/// The form the e-graph found for a three-linear MLP (column, gather,
/// column, row) is a program of its own: with the middle projection
/// pinned column-parallel, its split input is all-gathered (f per token)
/// and the last projection is row-parallel, its all-reduce (d) leaving the
/// residual stream whole. The rule's form instead all-reduces f after the
/// middle projection and gathers d after the last. Written out by hand at
/// tp = 2 (layouts: c2 = features in 2 blocks), then run exactly.
#[test]
fn three_linears_in_the_extractions_form() {
    let c2 = Cols { groups: 2 };
    let (p, _) = program_forms(
        THREE_NAMED,
        2,
        false,
        &[("b", Form::Column), ("c", Form::Row)],
    );
    assert_eq!(
        shape_of(&p)[1..8].to_vec(),
        vec![
            ("rmsnorm", Replicated, Rep),
            ("linear", Column, c2),
            ("relu", Local, c2),
            ("linear", Column, c2),
            ("relu", Local, c2),
            ("linear", Row, Rep),
            ("add", Local, Rep),
        ]
    );
    // Forward: the embedding's all-reduce (d), the gather of relu(a) for
    // the pinned column-parallel b (f), c's all-reduce (d).
    let fwd: BTreeMap<Kind, f64> = [(AR, S * D + S * D), (AG, S * F)].into();
    assert_eq!(volume(&p, Pass::Forward), fwd);
    // Backward: relu(a) gathered again for b's weight gradient (f); the
    // partial input gradients of b (f, into relu(a)'s split: all-reduced),
    // of a (d) and of the head (d).
    let bwd: BTreeMap<Kind, f64> = [(AR, S * F + S * D + S * D), (AG, S * F)].into();
    assert_eq!(volume(&p, Pass::Backward), bwd);
    // A row-parallel pin on a replicated input slices it locally (no
    // collective) and reduces its partial sums.
    let (r, _) = program_forms(THREE_NAMED, 2, false, &[("a", Form::Row)]);
    let a = r.ops.iter().find(|o| o.op == "linear").expect("a");
    assert_eq!((a.strategy, a.reads[0], a.layout), (Row, c2, Rep));
    assert!(
        a.comms
            .iter()
            .all(|c| c.why != gantry_compiler::sharded::Why::Gather)
    );
    for tp in [2, 4] {
        for sp in [false, true] {
            let fix = format!("{POINT},tp={tp},sequence_parallel={sp}");
            for (column, row) in [(&["b"][..], &["c"][..]), (&[][..], &["a", "c"][..])] {
                let mut a = args("three_named", THREE_NAMED, &fix);
                a.column = column.iter().map(|s| s.to_string()).collect();
                a.row = row.iter().map(|s| s.to_string()).collect();
                run_exact_args("three_named", &fix, a).unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }
}

#[test]
fn mixtral_experts_split_their_width() {
    let (p, _) = program(MIXTRAL, 2, false);
    let c2 = Cols { groups: 2 };
    let strategies: Vec<_> = shape_of(&p);
    assert_eq!(
        strategies,
        vec![
            ("embedding", Vocab, Rep),
            ("rmsnorm", Replicated, Rep),
            ("linear", Column, c2),
            ("linear", Column, c2),
            ("linear", Column, c2),
            ("attention", Heads, c2),
            ("linear", Row, Rep),
            ("add", Local, Rep),
            ("rmsnorm", Replicated, Rep),
            // Not an elementwise op: every expert's width is split and the
            // combined output all-reduced.
            ("moe", ExpertWidth, Rep),
            ("add", Local, Rep),
            ("rmsnorm", Replicated, Rep),
            ("linear", Column, c2),
        ]
    );
    let expect_fwd: BTreeMap<Kind, f64> = [(AR, S * D + 2.0 * S * D)].into();
    assert_eq!(volume(&p, Pass::Forward), expect_fwd);
    // Backward in the block (listed once): q/k/v's input (d), the experts' input (d), the
    // experts' returned outputs (top_k = 2 per token, d each); once: the head.
    let expect_bwd: BTreeMap<Kind, f64> = [(AR, (S * D + S * D + 2.0 * S * D) + S * D)].into();
    assert_eq!(volume(&p, Pass::Backward), expect_bwd);
}

#[test]
fn parallel_attention_and_mlp_reduce_their_shared_input_once() {
    let (p, _) = program(PARALLEL_BLOCK, 2, false);
    let c2 = Cols { groups: 2 };
    assert_eq!(
        shape_of(&p),
        vec![
            ("embedding", Vocab, Rep),
            ("layernorm", Replicated, Rep),
            ("linear", Column, c2),
            ("linear", Column, c2),
            ("linear", Column, c2),
            ("attention", Heads, c2),
            ("linear", Row, Rep),
            ("add", Local, Rep),
            ("linear", Column, c2),
            ("gelu", Local, c2),
            ("linear", Row, Rep),
            ("add", Local, Rep),
            ("rmsnorm", Replicated, Rep),
            ("linear", Column, c2),
        ]
    );
    // Forward: the embedding and the two row-parallel outputs. Backward:
    // the norm's output feeds four column-parallel linears, whose partial
    // gradients are added locally and all-reduced once; and the head's.
    let expect_fwd: BTreeMap<Kind, f64> = [(AR, 3.0 * S * D)].into();
    assert_eq!(volume(&p, Pass::Forward), expect_fwd);
    let expect_bwd: BTreeMap<Kind, f64> = [(AR, 2.0 * S * D)].into();
    assert_eq!(volume(&p, Pass::Backward), expect_bwd);
}

#[test]
fn a_linear_carry_runs_its_body_whole() {
    let (p, _) = program(LINEAR_CARRY, 2, false);
    let c2 = Cols { groups: 2 };
    assert_eq!(
        shape_of(&p),
        vec![
            ("embedding", Vocab, Rep),
            ("relu", Local, Rep),
            ("linear", Replicated, Rep),
            ("rmsnorm", Replicated, Rep),
            ("linear", Column, c2),
        ]
    );
    // Only the embedding's all-reduce forward; backward only the head's
    // input (the body's whole linear gives whole input gradients).
    let expect_fwd: BTreeMap<Kind, f64> = [(AR, S * D)].into();
    assert_eq!(volume(&p, Pass::Forward), expect_fwd);
    let expect_bwd: BTreeMap<Kind, f64> = [(AR, S * D)].into();
    assert_eq!(volume(&p, Pass::Backward), expect_bwd);
}

#[test]
fn sequence_parallel_keeps_row_blocks_between_projections() {
    let (p, _) = program(THREE_LINEAR, 2, true);
    let c2 = Cols { groups: 2 };
    assert_eq!(
        shape_of(&p),
        vec![
            ("embedding", Vocab, Rows),
            ("rmsnorm", Local, Rows),
            ("linear", Column, c2),
            ("relu", Local, c2),
            ("linear", Row, Rows),
            ("relu", Local, Rows),
            ("linear", Column, c2),
            ("add", Local, Rows),
            ("rmsnorm", Local, Rows),
            ("linear", Column, c2),
        ]
    );
    // Forward: reduce-scatters replace the all-reduces; the column inputs
    // are gathered from rows.
    let expect_fwd: BTreeMap<Kind, f64> =
        [(RS, S * D + S * F), (AG, S * D + S * F + S * D + S * D)].into();
    assert_eq!(volume(&p, Pass::Forward), expect_fwd);
    let _ = V;
}

/// Runs `body` at `fix` with gradients: outputs and gradients within the
/// run's tolerance of the reference, tensor-parallel bytes equal to the
/// cost model's.
fn args(name: &str, body: &str, fix: &str) -> TargetArgs {
    TargetArgs {
        file: write(name, body),
        plan: None,
        fix: Some(fix.into()),
        plan_json: None,
        devices: None,
        scale: None,
        lib: Vec::new(),
        whole: Vec::new(),
        column: Vec::new(),
        row: Vec::new(),
    }
}

fn run_exact(name: &str, body: &str, fix: &str) -> Result<(), String> {
    run_exact_with(name, body, fix, &[]).map(|_| ())
}

/// [`run_exact`] with `--whole` pins; the tensor bytes on success.
fn run_exact_with(name: &str, body: &str, fix: &str, whole: &[&str]) -> Result<f64, String> {
    let mut a = args(name, body, fix);
    a.whole = whole.iter().map(|s| s.to_string()).collect();
    run_exact_args(name, fix, a)
}

/// Resolves `a`, runs it with gradients and compares the tensor bytes.
fn run_exact_args(name: &str, fix: &str, a: TargetArgs) -> Result<f64, String> {
    let t = resolve_target(&a).unwrap_or_else(|_| panic!("{name} {fix}: does not resolve"));
    let cfg = RunConfig {
        gradients: true,
        ..RunConfig::default()
    };
    let r =
        exec::run(&t.workload, &t.par, &cfg).unwrap_or_else(|e| panic!("{name}: {}", e.render()));
    assert!(r.passed(), "{name} {fix}: {r:?}");
    let rows = traffic_rows(&t, &r);
    let tensor = rows.iter().find(|r| r.label == "tensor");
    let measured = tensor.map_or(0.0, |r| r.measured);
    let model: f64 = tensor.map_or(0.0, |r| r.model.iter().map(|(_, b)| b).sum());
    eprintln!("{name} {fix}: tensor run {measured} B, model {model} B");
    if measured == 0.0 || measured != model {
        return Err(format!(
            "{name} {fix}: tensor bytes: run {measured} B, model {model} B"
        ));
    }
    Ok(measured)
}

const POINT: &str = "dp=1,pp=1,cp=1,zero=0,microbatch=1,virtual_stages=1";

#[test]
fn named_blocks_run_exactly_as_priced() {
    let mut errors = Vec::new();
    for (name, body) in [
        ("norm_between", NORM_BETWEEN),
        ("matmul_attention", MATMUL_ATTENTION),
        ("three_linear", THREE_LINEAR),
        ("mixtral", MIXTRAL),
        ("linear_carry", LINEAR_CARRY),
        ("parallel_block", PARALLEL_BLOCK),
        ("shared_expert", SHARED_EXPERT),
    ] {
        for tp in [2, 4] {
            for sp in [false, true] {
                let fix = format!("{POINT},tp={tp},sequence_parallel={sp}");
                if name == "linear_carry" && sp {
                    // The stream enters as sequence rows and a whole linear
                    // leaves it whole: no sequence-parallel form (C002).
                    let a = args(name, body, &fix);
                    assert!(resolve_target(&a).is_err(), "{name} {fix}: resolved");
                    continue;
                }
                if let Err(e) = run_exact(name, body, &fix) {
                    errors.push(e);
                }
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// `gantry run --plan-json` runs the plan's program: the contractions the
/// JSON lists in `parallelism.whole_ops` (what `gantry plan` extracted)
/// run whole, exactly as a `--whole` pin of the same names does.
#[test]
fn plan_json_runs_the_whole_ops_it_lists() {
    let fix = format!("{POINT},tp=2,sequence_parallel=false");
    let pinned = run_exact_with("adapter_pinned", ADAPTER, &fix, &["up", "down"])
        .unwrap_or_else(|e| panic!("{e}"));
    let json_run = |whole: &str| -> f64 {
        let text = format!(
            r#"{{"schema": "gantry.plan/2", "plan": "p", "workload": "w", "devices": 2,
  "parallelism": {{"dp": 1, "tp": 2, "pp": 1, "cp": 1, "ep": 1, "zero": 0,
  "recompute": "none", "microbatch": 1, "virtual_stages": 1,
  "sequence_parallel": false, "batch": 4, "stage_layers": [2], "whole_ops": [{whole}]}}}}"#
        );
        let dir = std::env::temp_dir().join(format!("gantry-sharding-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(format!("plan{}.json", whole.len()));
        std::fs::write(&path, text).expect("write");
        let mut a = args("adapter_json", ADAPTER, "");
        a.fix = None;
        a.plan_json = Some(path);
        let t = resolve_target(&a).unwrap_or_else(|_| panic!("plan JSON does not resolve"));
        let cfg = RunConfig {
            gradients: true,
            ..RunConfig::default()
        };
        let r = exec::run(&t.workload, &t.par, &cfg).unwrap_or_else(|e| panic!("{}", e.render()));
        assert!(r.passed(), "{r:?}");
        traffic_rows(&t, &r)
            .iter()
            .find(|r| r.label == "tensor")
            .map_or(0.0, |r| r.measured)
    };
    assert_eq!(json_run(r#""up", "down""#), pinned);
    assert_ne!(json_run(""), pinned);
}

//! Exports: Megatron-LM arguments from the model graph and the design
//! point, a TorchRec plan in TorchRec's structure, and the trace's
//! invariants (ordering per stage, no overlap, total = step time), plus
//! the C021 refusals. Every case is one evaluated point: fast.

mod common;

use std::collections::BTreeMap;

use gantry_compiler::export;
use gantry_compiler::ir::lower;
use gantry_compiler::placement;
use gantry_compiler::plan::{Evaluation, evaluate};
use gantry_compiler::point::parse_fix;
use gantry_lang::diagnostic::Code;
use gantry_lang::program::Plan;
use serde_json::Value;

fn at(file: &str, plan: Option<&str>, fix: &str) -> (Plan, Evaluation) {
    let p = common::plan(file, plan);
    let pins = if fix.is_empty() {
        BTreeMap::new()
    } else {
        parse_fix(fix).expect("pins")
    };
    let ev = evaluate(&p, &pins).expect("point");
    (p, ev)
}

fn megatron(p: &Plan, ev: &Evaluation) -> String {
    export::megatron(&ev.estimate, &ev.ir, &p.workload)
        .expect("megatron")
        .to_string()
}

fn has(args: &str, flags: &[&str]) {
    for f in flags {
        assert!(args.contains(f), "{f} missing from {args}");
    }
}

/// The vocabulary goes out as declared: without
/// `--make-vocab-size-divisible-by 1` Megatron pads it to a multiple of
/// 128 x tp (51,200 would stay, 128,256 would not).
#[test]
fn the_vocabulary_is_not_padded_to_128() {
    let (p, ev) = at(
        "examples/reference/b02_175b.gantry",
        Some("b02_gpt_175b_sp_selective"),
        "",
    );
    has(
        &megatron(&p, &ev),
        &["--vocab-size 51200 --make-vocab-size-divisible-by 1"],
    );
}

#[test]
fn megatron_gpt_has_the_model_and_the_point() {
    let (p, ev) = at(
        "examples/reference/b02_175b.gantry",
        Some("b02_gpt_175b_sp_selective"),
        "",
    );
    let a = megatron(&p, &ev);
    has(
        &a,
        &[
            "export CUDA_DEVICE_MAX_CONNECTIONS=1\n",
            "--num-layers 96 ",
            "--hidden-size 12288 ",
            "--ffn-hidden-size 49152 ",
            "--num-attention-heads 96 ",
            "--seq-length 2048 ",
            "--max-position-embeddings 2048 --position-embedding-type learned_absolute",
            "--normalization LayerNorm",
            "--attention-dropout 0.1 --hidden-dropout 0.1",
            "--tokenizer-type NullTokenizer --vocab-size 51200",
            "--bf16",
            "--tensor-model-parallel-size 8",
            "--pipeline-model-parallel-size 8",
            "--sequence-parallel",
            "--recompute-granularity selective",
            "--micro-batch-size 1",
            "--global-batch-size 64",
            "--optimizer adam",
        ],
    );
    for absent in [
        "--swiglu",
        "--disable-bias-linear",
        "--group-query-attention",
    ] {
        assert!(!a.contains(absent), "{absent} in {a}");
    }
}

/// Llama 3 405B on Meta's mesh: the cost model's split leaves the first
/// and last stage one layer short, which is Megatron's split with the
/// embedding and the loss counted as layers.
#[test]
fn megatron_llama_uneven_stages_and_zero() {
    let fix = "tp=8,pp=16,cp=1,dp=128,zero=1,recompute=full,microbatch=1,virtual_stages=1";
    let (p, ev) = at("examples/llm_train.gantry", Some("llama3_405b_meta"), fix);
    assert_eq!(
        ev.estimate.stage_layers[0], 7,
        "{:?}",
        ev.estimate.stage_layers
    );
    let a = megatron(&p, &ev);
    has(
        &a,
        &[
            "--group-query-attention --num-query-groups 8",
            "--swiglu",
            "--ffn-hidden-size 53248",
            "--normalization RMSNorm",
            "--position-embedding-type rope",
            "--disable-bias-linear",
            "--untie-embeddings-and-output-weights",
            "--vocab-size 128256",
            "--account-for-embedding-in-pipeline-split --account-for-loss-in-pipeline-split",
            "--use-distributed-optimizer",
            "--recompute-granularity full --recompute-method uniform --recompute-num-layers 1",
        ],
    );
    // ZeRO-2 and -3 are Megatron-FSDP, which refuses CUDA_DEVICE_MAX_CONNECTIONS=1.
    for (z, strategy) in [(2, "optim_grads "), (3, "optim_grads_params ")] {
        let fix = format!("tp=8,pp=16,cp=1,dp=128,zero={z},recompute=full,microbatch=1");
        let (p, ev) = at("examples/llm_train.gantry", Some("llama3_405b_meta"), &fix);
        let a = megatron(&p, &ev);
        has(
            &a,
            &[
                "--use-megatron-fsdp",
                &format!("--data-parallel-sharding-strategy {strategy}"),
            ],
        );
        assert!(
            !a.contains("CUDA_DEVICE_MAX_CONNECTIONS")
                && !a.contains("--use-distributed-optimizer")
        );
    }
}

#[test]
fn megatron_mixtral_has_the_experts() {
    let fix = "tp=2,pp=4,ep=8,dp=64,zero=1,recompute=selective,microbatch=1,sequence_parallel=true";
    let (p, ev) = at(
        "examples/moe_train.gantry",
        Some("mixtral_8x7b_pretrain_512"),
        fix,
    );
    let a = megatron(&p, &ev);
    has(
        &a,
        &[
            "--num-experts 8 --moe-router-topk 2 --moe-ffn-hidden-size 14336",
            "--expert-model-parallel-size 8",
            "--swiglu",
        ],
    );
}

/// The exports a plan cannot satisfy are C021 errors, not empty artifacts.
#[test]
fn wrong_targets_are_refused_with_c019() {
    let (p, ev) = at("examples/dlrm_train.gantry", None, "");
    let e = export::megatron(&ev.estimate, &ev.ir, &p.workload).expect_err("dlrm");
    assert_eq!(e.code, Code::C021);
    assert!(e.message.contains("not a Megatron"), "{}", e.message);
    let (p, ev) = at("examples/llm_decode.gantry", None, "");
    let e = export::megatron(&ev.estimate, &ev.ir, &p.workload).expect_err("decode");
    assert!(e.message.contains("decode"), "{}", e.message);
    let (p, ev) = at(
        "examples/dlrm_train.gantry",
        Some("dlrm_large_train_adagrad_a100"),
        "",
    );
    assert!(export::megatron(&ev.estimate, &ev.ir, &p.workload).is_err());
    let (p, _) = at(
        "examples/reference/b02_175b.gantry",
        Some("b02_gpt_175b_sp_selective"),
        "",
    );
    let e = export::torchrec(&[], &p.workload, 64, 8).expect_err("no tables");
    assert_eq!(e.code, Code::C021);
}

#[test]
fn torchrec_plan_has_torchrecs_structure() {
    let d = common::plan("examples/reference/c02_dlrm_large_8gpu.gantry", None);
    let ir = lower(&d.workload).expect("ir");
    let tables = placement::tables(&ir, 8, 70e9, false);
    let j = export::torchrec(&tables, &d.workload, 8, 8).expect("plan");
    let plan = j["plan"]["sparse_arch.embedding_bag_collection"]
        .as_object()
        .expect("module");
    assert_eq!(plan.len(), 26);
    for (name, ps) in plan {
        assert!(!name.contains('#'), "{name}");
        let extra = &j["gantry"]["tables"][name];
        let rows = extra["rows"].as_u64().expect("rows");
        let spec = ps["sharding_spec"].as_array().expect("spec");
        assert_eq!(spec.len(), ps["ranks"].as_array().expect("ranks").len());
        // Row-wise shards tile the rows; column-wise ones (DLE's
        // memory-balanced placement cuts three tables in two) the columns.
        let (axis, whole) = if ps["sharding_type"] == "column_wise" {
            assert!(
                spec.iter()
                    .all(|s| s["shard_sizes"][0].as_u64() == Some(rows))
            );
            (1, extra["dim"].as_u64().expect("dim"))
        } else {
            (0, rows)
        };
        let covered: u64 = spec
            .iter()
            .map(|s| s["shard_sizes"][axis].as_u64().unwrap_or(0))
            .sum();
        assert_eq!(covered, whole, "{name}");
        assert_eq!(ps["compute_kernel"], "fused");
        assert!(ps.get("bytes").is_none());
        assert!(
            extra["parameter"]
                .as_str()
                .is_some_and(|s| s.ends_with(&format!("embedding_bags.{name}.weight")))
        );
    }
    // Too little HBM: with host memory the tables are row-wise with the UVM
    // kernel on every rank; without, an error naming the table.
    let tables = placement::tables(&ir, 8, 1e9, true);
    let j = export::torchrec(&tables, &d.workload, 8, 8).expect("plan");
    let host: Vec<&Value> = j["plan"]["sparse_arch.embedding_bag_collection"]
        .as_object()
        .expect("module")
        .values()
        .filter(|t| t["compute_kernel"] == "fused_uvm")
        .collect();
    assert!(!host.is_empty());
    assert!(
        host.iter().all(|t| t["sharding_type"] == "row_wise"
            && t["ranks"].as_array().is_some_and(|r| r.len() == 8))
    );
    let tables = placement::tables(&ir, 8, 1e9, false);
    let e = export::torchrec(&tables, &d.workload, 8, 8).expect_err("unplaced");
    assert!(e.message.contains("fits in no rank"), "{}", e.message);
}

/// Slices per track in integer nanoseconds: (start, end, name).
fn tracks(t: &Value) -> BTreeMap<u64, Vec<(i64, i64, String)>> {
    let mut out: BTreeMap<u64, Vec<(i64, i64, String)>> = BTreeMap::new();
    for e in t["traceEvents"].as_array().expect("events") {
        if e["ph"] != "X" {
            continue;
        }
        let ts = e["ts"].as_f64().expect("ts") * 1000.0;
        let dur = e["dur"].as_f64().expect("dur") * 1000.0;
        // Truncating (Perfetto's import) and rounding agree.
        assert_eq!(ts.trunc(), ts.round(), "{e}");
        assert_eq!(dur.trunc(), dur.round(), "{e}");
        let name = e["name"].as_str().expect("name").to_string();
        out.entry(e["tid"].as_u64().expect("tid"))
            .or_default()
            .push((ts as i64, (ts + dur).round() as i64, name));
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

fn check_trace(t: &Value, step: f64, stages: usize) -> BTreeMap<u64, Vec<(i64, i64, String)>> {
    let tr = tracks(t);
    for (tid, v) in &tr {
        for w in v.windows(2) {
            assert!(
                w[0].1 <= w[1].0,
                "track {tid}: {:?} overlaps {:?}",
                w[0],
                w[1]
            );
        }
    }
    let end = tr
        .values()
        .flat_map(|v| v.iter().map(|s| s.1))
        .max()
        .expect("slices");
    assert!(
        (end - (step * 1e9).round() as i64).abs() <= 1,
        "{end} vs {step}"
    );
    let names: Vec<&str> = t["traceEvents"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["ph"] == "M")
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert!(names.contains(&"process_name"));
    assert!(names.iter().filter(|n| **n == "thread_name").count() >= stages);
    tr
}

/// 1F1B on 8 stages: no overlap, the step's length, each forward after
/// the previous stage's and each backward after the next stage's; the
/// stages start their first backward at different times.
#[test]
fn trace_is_the_priced_one_f_one_b() {
    let (p, ev) = at(
        "examples/reference/b02_175b.gantry",
        Some("b02_gpt_175b_sp_selective"),
        "virtual_stages=1",
    );
    let t = export::trace(&ev.estimate, &p.workload.phase).expect("trace");
    let tr = check_trace(&t, ev.estimate.time.step, 8);
    let find = |s: u64, n: &str| {
        tr[&s]
            .iter()
            .find(|x| x.2 == n)
            .map(|x| (x.0, x.1))
            .unwrap_or_else(|| panic!("{n} on stage {s}"))
    };
    for mb in [0, 17, 63] {
        for s in 1..8 {
            assert!(find(s, &format!("F{mb}")).0 >= find(s - 1, &format!("F{mb}")).1);
            assert!(find(s - 1, &format!("B{mb}")).0 >= find(s, &format!("B{mb}")).1);
        }
    }
    let first_b: Vec<i64> = (0..8).map(|s| find(s, "B0").0).collect();
    assert!(first_b.windows(2).all(|w| w[0] > w[1]), "{first_b:?}");
    assert_eq!(tr[&0].len(), 2 * 64);
}

/// Interleaved: chunks named, stage 0 runs chunk 0 of microbatches
/// 0..pp before chunk 1; inference has no backward.
#[test]
fn trace_interleaved_and_inference() {
    let (p, ev) = at(
        "examples/reference/b02_175b.gantry",
        Some("b02_gpt_175b_sp_selective"),
        "virtual_stages=2",
    );
    let t = export::trace(&ev.estimate, &p.workload.phase).expect("trace");
    let tr = check_trace(&t, ev.estimate.time.step, 8);
    let order: Vec<&str> = tr[&0].iter().take(10).map(|x| x.2.as_str()).collect();
    assert_eq!(
        &order[..9],
        [
            "F0.0", "F1.0", "F2.0", "F3.0", "F4.0", "F5.0", "F6.0", "F7.0", "F0.1"
        ]
    );
    let (p, ev) = at("examples/llm_decode.gantry", None, "");
    let t = export::trace(&ev.estimate, &p.workload.phase).expect("trace");
    let tr = check_trace(&t, ev.estimate.time.step, ev.estimate.point.pp as usize);
    assert!(tr.values().flatten().all(|s| !s.2.starts_with('B')));
}

fn torchtitan(p: &Plan, ev: &Evaluation) -> toml::Table {
    let t = export::torchtitan(&ev.estimate, &ev.ir, &p.workload).expect("torchtitan");
    // What the CLI writes parses back to the same table.
    let text = toml::to_string(&t).expect("toml");
    assert_eq!(toml::from_str::<toml::Table>(&text).expect("reparse"), t);
    t
}

fn int(t: &toml::Table, section: &str, key: &str) -> i64 {
    t[section][key]
        .as_integer()
        .unwrap_or_else(|| panic!("{section}.{key} in {t}"))
}

/// torchtitan's llama3 flavors: the SwiGLU widths its `FeedForward`
/// computes from `dim`, `multiple_of` and `ffn_dim_multiplier` are Llama
/// 3's published ones.
#[test]
fn torchtitan_flavors_have_llama3s_widths() {
    let ffn: Vec<(&str, u64)> = export::TORCHTITAN_FLAVORS
        .iter()
        .map(|f| (f.name, f.ffn()))
        .collect();
    assert_eq!(
        ffn,
        [
            ("debugmodel", 768),
            ("8B", 14336),
            ("70B", 28672),
            ("405B", 53248)
        ]
    );
}

/// The published torchtitan run F15 (FSDP 8, TP 8 async, PP 8 1F1B,
/// Float8, compiled): its flavor, a mesh whose product is the world, the
/// pipeline split module by module as the cost model priced it.
#[test]
fn torchtitan_405b_is_the_run_it_came_from() {
    let (p, ev) = at(
        "examples/reference/f15_llama31_405b_512gpu.gantry",
        None,
        "",
    );
    let t = torchtitan(&p, &ev);
    assert_eq!(t["model"]["name"].as_str(), Some("llama3"));
    assert_eq!(t["model"]["flavor"].as_str(), Some("405B"));
    assert_eq!(t["model"]["converters"][0].as_str(), Some("float8"));
    assert_eq!(t["compile"]["enable"].as_bool(), Some(true));
    assert_eq!(
        t["parallelism"]["enable_async_tensor_parallel"].as_bool(),
        Some(true)
    );
    assert_eq!(
        t["parallelism"]["pipeline_parallel_schedule"].as_str(),
        Some("1F1B")
    );
    assert_eq!(t["activation_checkpoint"]["mode"].as_str(), Some("full"));
    assert_eq!(int(&t, "training", "seq_len"), 32768);
    assert_eq!(int(&t, "training", "global_batch_size"), 64);
    // Eight sequences per data-parallel rank, one per microbatch.
    assert_eq!(int(&t, "training", "local_batch_size"), 8);
    assert_eq!(
        int(&t, "parallelism", "pipeline_parallel_microbatch_size"),
        1
    );
    let world: i64 = [
        "data_parallel_replicate_degree",
        "data_parallel_shard_degree",
        "context_parallel_degree",
        "tensor_parallel_degree",
        "pipeline_parallel_degree",
    ]
    .iter()
    .map(|k| int(&t, "parallelism", k))
    .product();
    assert_eq!(world as u64, ev.estimate.devices);
    assert_eq!(int(&t, "parallelism", "data_parallel_shard_degree"), 8);
    check_parts(&t, 126, 8, 1, &ev.estimate.stage_layers);
}

/// Every layer once, in order, embedding first and norm and output last;
/// virtual stage `k` on rank `k % pp` holds the cost model's share.
fn check_parts(t: &toml::Table, layers: u64, pp: u64, v: u64, stages: &[u64]) {
    let parts: Vec<Vec<String>> = t["parallelism"]["module_fqns_per_model_part"]
        .as_array()
        .expect("parts")
        .iter()
        .map(|p| {
            p.as_array()
                .expect("part")
                .iter()
                .map(|s| s.as_str().expect("name").to_string())
                .collect()
        })
        .collect();
    assert_eq!(parts.len() as u64, pp * v);
    let flat: Vec<&String> = parts.iter().flatten().collect();
    let mut want = vec!["tok_embeddings".to_string()];
    want.extend((0..layers).map(|i| format!("layers.{i}")));
    want.extend(["norm".to_string(), "output".to_string()]);
    assert_eq!(flat, want.iter().collect::<Vec<_>>());
    let mut per_rank = vec![0u64; pp as usize];
    for (k, part) in parts.iter().enumerate() {
        per_rank[k % pp as usize] +=
            part.iter().filter(|s| s.starts_with("layers.")).count() as u64;
    }
    assert_eq!(per_rank, stages);
}

/// ZeRO as torchtitan runs it: 3 reshards after forward, 2 keeps the
/// gathered parameters, a smaller group is HSDP, 1 is refused; the
/// interleaved split is a looped schedule over `pp x v` parts.
#[test]
fn torchtitan_zero_stages_and_interleaving() {
    let file = "examples/llm_train.gantry";
    let plan = Some("llama3_405b_meta");
    let base = "tp=8,pp=16,cp=1,dp=128,recompute=full,microbatch=1,sequence_parallel=true";
    let (p, ev) = at(file, plan, &format!("{base},zero=3,virtual_stages=2"));
    let t = torchtitan(&p, &ev);
    assert_eq!(
        t["parallelism"]["fsdp_reshard_after_forward"].as_str(),
        Some("always")
    );
    assert_eq!(
        t["parallelism"]["pipeline_parallel_schedule"].as_str(),
        Some("Interleaved1F1B")
    );
    assert_eq!(int(&t, "training", "local_batch_size"), 16);
    check_parts(&t, 126, 16, 2, &ev.estimate.stage_layers);
    let (p, ev) = at(file, plan, &format!("{base},zero=2,virtual_stages=1"));
    let t = torchtitan(&p, &ev);
    assert_eq!(
        t["parallelism"]["fsdp_reshard_after_forward"].as_str(),
        Some("never")
    );
    let (p, ev) = at(file, plan, &format!("{base},zero=3,shard=8"));
    let t = torchtitan(&p, &ev);
    assert_eq!(int(&t, "parallelism", "data_parallel_shard_degree"), 8);
    assert_eq!(int(&t, "parallelism", "data_parallel_replicate_degree"), 16);
    let (p, ev) = at(file, plan, &format!("{base},zero=1"));
    let e = export::torchtitan(&ev.estimate, &ev.ir, &p.workload).expect_err("zero-1");
    assert_eq!(e.code, Code::C021);
    assert!(e.message.contains("ZeRO-1"), "{}", e.message);
    let (p, ev) = at(
        file,
        plan,
        "tp=8,pp=16,cp=1,dp=128,zero=3,sequence_parallel=false",
    );
    let e = export::torchtitan(&ev.estimate, &ev.ir, &p.workload).expect_err("no sp");
    assert!(e.message.contains("sequence parallel"), "{}", e.message);
}

/// Models torchtitan has no flavor for, serving plans and DLRMs are
/// C021 errors naming torchtitan and the difference.
#[test]
fn torchtitan_refuses_what_it_cannot_build() {
    let cases = [
        (
            "examples/reference/b02_175b.gantry",
            Some("b02_gpt_175b_sp_selective"),
            "not a Llama 3",
        ),
        ("examples/moe_train.gantry", None, "experts"),
        ("examples/dlrm_train.gantry", None, "recommendation model"),
        ("examples/llm_decode.gantry", None, "decode"),
    ];
    for (file, plan, why) in cases {
        let (p, ev) = at(file, plan, "");
        let e = export::torchtitan(&ev.estimate, &ev.ir, &p.workload).expect_err(file);
        assert_eq!(e.code, Code::C021);
        assert!(
            e.message.starts_with("cannot export to torchtitan") && e.message.contains(why),
            "{file}: {}",
            e.message
        );
    }
    // A Llama whose shapes are no registered flavor names the differences.
    let (p, ev) = at("examples/reference/g04_l2_13b_none.gantry", None, "");
    let e = export::torchtitan(&ev.estimate, &ev.ir, &p.workload).expect_err("llama 2");
    assert!(
        e.message.contains("matches no llama3 flavor"),
        "{}",
        e.message
    );
}

/// The training plans whose Megatron and torchtitan exports the recorded
/// clients' data is checked against: every reference file's first plan
/// at its own point, plus pinned points that reach the other flags
/// (interleaved layouts, ZeRO-1/2/3, HSDP, experts).
fn training_exports() -> Vec<(String, Plan, Evaluation)> {
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(common::root().join("examples/reference"))
        .expect("examples")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "gantry"))
        .collect();
    files.sort();
    for f in files {
        let name = format!(
            "examples/reference/{}",
            f.file_name().expect("name").to_string_lossy()
        );
        let (p, ev) = at(&name, None, "");
        out.push((name, p, ev));
    }
    let llama = "tp=8,pp=16,cp=1,dp=128,recompute=full,microbatch=1,sequence_parallel=true";
    for fix in [
        format!("{llama},zero=1,virtual_stages=2"),
        format!("{llama},zero=2,virtual_stages=1"),
        format!("{llama},zero=3,shard=8"),
    ] {
        let (p, ev) = at("examples/llm_train.gantry", Some("llama3_405b_meta"), &fix);
        out.push((fix, p, ev));
    }
    let fix = "tp=2,pp=4,ep=8,dp=64,zero=1,recompute=selective,microbatch=1,sequence_parallel=true";
    let (p, ev) = at(
        "examples/moe_train.gantry",
        Some("mixtral_8x7b_pretrain_512"),
        fix,
    );
    out.push((fix.to_string(), p, ev));
    out
}

/// Splits an argument line as a POSIX shell would for the quoting the
/// export uses (double quotes around a layout).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut any) = (false, false);
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            ' ' if !quoted => {
                if any {
                    words.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(cur);
    }
    words
}

/// Every flag of every Megatron export exists in Megatron-LM's parser as
/// `tests/clients/check_exports.py --record` recorded it, takes a value
/// exactly when the parser says so, and the value is one of its choices
/// and of its type.
#[test]
fn megatron_flags_are_megatrons() {
    let rec: Value = serde_json::from_str(include_str!("../../tests/clients/megatron_flags.json"))
        .expect("json");
    let flags = rec["flags"].as_object().expect("flags");
    assert!(flags.len() > 500, "{} flags recorded", flags.len());
    let mut checked = 0;
    for (name, p, ev) in training_exports() {
        let Ok(m) = export::megatron(&ev.estimate, &ev.ir, &p.workload) else {
            continue;
        };
        let words = shell_words(&m.line());
        let mut i = 0;
        while i < words.len() {
            let w = &words[i];
            let f = flags
                .get(w)
                .unwrap_or_else(|| panic!("{name}: `{w}` is no Megatron flag"));
            i += 1;
            if !f["takes_value"].as_bool().expect("takes_value") {
                continue;
            }
            let v = words
                .get(i)
                .unwrap_or_else(|| panic!("{name}: {w} needs a value"));
            assert!(!v.starts_with("--"), "{name}: {w} needs a value, got {v}");
            if let Some(c) = f["choices"].as_array() {
                assert!(c.iter().any(|c| c == v), "{name}: {w} {v} not in {c:?}");
            }
            match f["type"].as_str() {
                Some("int") => assert!(v.parse::<i64>().is_ok(), "{name}: {w} {v}"),
                Some("float") => assert!(v.parse::<f64>().is_ok(), "{name}: {w} {v}"),
                _ => {}
            }
            i += 1;
            checked += 1;
        }
    }
    assert!(checked > 100, "{checked} values checked");
}

/// Every key of every torchtitan export is a field of torchtitan's
/// `JobConfig` as recorded by `check_exports.py --record`, in its
/// section, with a value of the field's type.
#[test]
fn torchtitan_keys_are_torchtitans() {
    let rec: Value =
        serde_json::from_str(include_str!("../../tests/clients/torchtitan_schema.json"))
            .expect("json");
    fn walk(t: &toml::Table, schema: &Value, at: &str, n: &mut usize) {
        for (k, v) in t {
            let s = schema
                .get(k)
                .unwrap_or_else(|| panic!("`{at}{k}` is no torchtitan JobConfig field"));
            match v {
                toml::Value::Table(sub) => walk(sub, s, &format!("{at}{k}."), n),
                v => {
                    let ty = s.as_str().expect("a field's type");
                    let ok = match v {
                        toml::Value::Integer(_) => ty.contains("int"),
                        toml::Value::Boolean(_) => ty.contains("bool"),
                        toml::Value::String(x) => {
                            ty.contains("str") || ty.contains(&format!("'{x}'"))
                        }
                        toml::Value::Array(_) => ty.contains("list"),
                        _ => false,
                    };
                    assert!(ok, "`{at}{k}` = {v} is not a {ty}");
                    *n += 1;
                }
            }
        }
    }
    let mut n = 0;
    let mut exports = 0;
    for (_, p, ev) in training_exports() {
        if let Ok(t) = export::torchtitan(&ev.estimate, &ev.ir, &p.workload) {
            walk(&t, &rec["sections"], "", &mut n);
            exports += 1;
        }
    }
    assert!(exports >= 5 && n > 50, "{exports} exports, {n} keys");
}

/// A plan that declares `target` searches only the points that framework
/// runs: on Meta's 405B mesh with ZeRO 0 to 3 and sequence parallelism
/// open, the best point for torchtitan is the first point of the
/// unrestricted ranking that torchtitan runs, and points were excluded;
/// with only ZeRO 0 and 1 searched, nothing is left, which is `C024`
/// naming torchtitan's reason.
#[test]
fn a_plan_target_restricts_the_search() {
    use gantry_compiler::plan::search;
    use gantry_lang::program::Domain;
    let mut p = common::plan("examples/llm_train.gantry", Some("llama3_405b_meta"));
    p.search
        .insert("zero".into(), Domain::Ints(vec![0, 1, 2, 3]));
    p.search
        .insert("sequence_parallel".into(), Domain::Bools(vec![false, true]));
    let free = search(&p, &BTreeMap::new(), 10_000).expect("search");
    let runs = |e: &gantry_compiler::cost::Estimate| {
        export::torchtitan(e, &free.best.ir, &p.workload).is_ok()
    };
    let first_runnable = free.top.iter().find(|e| runs(e)).expect("a runnable point");
    assert!(free.top.iter().any(|e| !runs(e)), "nothing to exclude");
    p.target = Some("torchtitan".into());
    let s = search(&p, &BTreeMap::new(), 1).expect("search");
    let best = &s.best.estimate;
    assert!(runs(best), "{}", best.point);
    assert_eq!(best.point, first_runnable.point);
    assert!(s.stats.off_target > 0);

    p.search.insert("zero".into(), Domain::Ints(vec![0, 1]));
    let Err(e) = search(&p, &BTreeMap::new(), 1) else {
        panic!("a point torchtitan runs with ZeRO 0 or 1")
    };
    assert_eq!(e.code, Code::C024);
    assert!(
        e.message.contains("target \"torchtitan\"") && e.message.contains("ZeRO"),
        "{}",
        e.message
    );
    // A pinned point the target cannot run is the same error.
    let fix = parse_fix("zero=1,recompute=full,microbatch=1").expect("pins");
    let Err(e) = evaluate(&p, &fix) else {
        panic!("a pinned ZeRO-1 point torchtitan runs")
    };
    assert_eq!(e.code, Code::C024);
    // A DLRM plan for Megatron: no point at all.
    let mut d = common::plan("examples/dlrm_train.gantry", None);
    d.target = Some("megatron".into());
    let Err(e) = search(&d, &BTreeMap::new(), 1) else {
        panic!("a DLRM point Megatron runs")
    };
    assert_eq!(e.code, Code::C024);
    assert!(e.message.contains("recommendation model"), "{}", e.message);
}

/// The exported placement numbers ranks as the cost model prices them and
/// `gantry run` runs them (tp, cp, dp, pp: a stage is a block of `tp x cp
/// x dp` consecutive ranks, `runtime::exec` `rank_of`). It listed pp
/// inside dp, so a plan priced with its pipeline crossing nodes was
/// exported with stages on neighbouring GPUs.
#[test]
fn the_placement_numbers_ranks_as_the_cost_model_prices_them() {
    let (p, ev) = at(
        "examples/reference/b02_175b.gantry",
        Some("b02_gpt_175b_sp_selective"),
        "tp=2,pp=4,dp=8,virtual_stages=1",
    );
    let e = &ev.estimate;
    let (tp, cp, dp, pp) = (e.point.tp, e.point.cp, e.point.dp, e.point.pp);
    let v = placement::json(e, &p.system, &ev.hardware.topo);
    let axes = v["axes"].as_array().expect("axes");
    let stride = |axis: &str| {
        axes.iter()
            .find(|a| a["axis"] == axis)
            .and_then(|a| a["stride"].as_u64())
            .expect("axis")
    };
    assert_eq!(stride("dp"), tp * cp);
    assert_eq!(stride("pp"), tp * cp * dp);
    let ranks = v["ranks"].as_array().expect("ranks");
    assert_eq!(ranks.len() as u64, tp * cp * dp * pp);
    for r in ranks {
        let rank = r["rank"].as_u64().expect("rank");
        let coord = |k: &str| r[k].as_u64().expect("coordinate");
        assert_eq!(
            rank,
            ((coord("pp") * dp + coord("dp")) * cp + coord("cp")) * tp + coord("tp"),
            "{r}"
        );
    }
}

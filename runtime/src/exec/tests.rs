//! End-to-end tests of the executor: sharded runs (forward, gradients,
//! decode, every parallel form) against the reference. The unit tests of
//! a module (the schedules) live with it; these need the whole executor,
//! so they are kept out of every module's way.

use super::parallel::{Parallel, describe};
use super::run::{RunConfig, run};
use super::schedule::{Action, chunk_layers, even_split, schedule};
use super::simulate::simulate_devices;
use crate::error::RCode;
use crate::graph;
use crate::init::Init;
use crate::layout::Layout;
use crate::reference;
use gantry_lang::program::{OpKind, Workload};

mod run_tests {
    use super::*;

    pub(super) const SRC: &str = "model T(d = 16, heads = 4, kv = 2, layers = 2) {
  input tokens: i32[batch, seq]
  x = embedding(tokens, 50, d)
  repeat layers {
    h = rmsnorm(x)
    q = linear(h, d, d)
    k = linear(h, d, d / heads * kv)
    v = linear(h, d, d / heads * kv)
    a = attention(q, k, v, heads = heads, kv_heads = kv, causal = true)
    x = x + linear(a, d, d, bias = true)
    h = layernorm(x)
    x = x + linear(silu(linear(h, d, 2 * d)) * linear(h, d, 2 * d), 2 * d, d)
  }
  output logits = linear(rmsnorm(x), d, 50)
}
workload w {
  model T
  train { seq = 5, global_batch = 4, dtype = fp32 }
}
";

    pub(super) fn workload() -> Workload {
        let c = gantry_lang::check::check_source("t.gantry", SRC);
        assert!(!c.has_errors(), "{}", c.render(false));
        c.program.workloads["w"].clone()
    }

    #[test]
    fn sharded_runs_match_reference() {
        let w = workload();
        for (dp, tp, pp, mb) in [
            (1, 1, 1, 4),
            (2, 1, 1, 1),
            (1, 2, 1, 2),
            (1, 4, 1, 4),
            (1, 1, 2, 1),
            (2, 2, 2, 1),
        ] {
            let par = Parallel {
                dp,
                tp,
                pp,
                ep: 1,
                cp: 1,
                vp: 1,
                tables: Vec::new(),
                column_slices: Vec::new(),
                model_parallel_input: false,
                zero: 0,
                microbatch: mb,
                stage_layers: even_split(2, pp),
                sp: false,
                forms: Default::default(),
            };
            let r = run(&w, &par, &RunConfig::default()).expect("runs");
            assert!(r.passed(), "dp={dp} tp={tp} pp={pp}: {:?}", r);
        }
    }

    /// Memory does not bound the work of nested repeats: a run that
    /// would execute more than MAX_OP_INSTANCES ops is R007 before
    /// anything runs (this one ran 10^9 relus and never finished).
    #[test]
    fn nested_repeats_beyond_the_op_bound_are_refused() {
        let src = |n: u64| {
            format!(
                "model M {{
  input x: fp32[batch, 4]
  y = x
  repeat {n} {{
    repeat 1000 {{
      repeat 1000 {{
        y = relu(y)
      }}
    }}
  }}
  output o = y
}}
workload w {{
  model M
  prefill {{ batch = 4 }}
}}
"
            )
        };
        let par = |microbatch: usize| Parallel {
            microbatch,
            stage_layers: vec![1],
            ..Parallel::default()
        };
        let c = gantry_lang::check::check_source("t.gantry", &src(1000));
        assert!(!c.has_errors(), "{}", c.render(false));
        let w = &c.program.workloads["w"];
        // One relu per innermost iteration, once per microbatch.
        assert_eq!(super::super::op_instances(w, &par(4)), 1e9);
        assert_eq!(super::super::op_instances(w, &par(1)), 4e9);
        let e = run(w, &par(4), &RunConfig::default()).expect_err("refused");
        assert_eq!(e.code, RCode::R007, "{e:?}");
        assert!(e.message.contains("op instances"), "{}", e.message);
        // The SRC model: an embedding; in each of 2 layers rmsnorm, 3
        // linears, attention, linear, add, layernorm, 2 linears, silu,
        // mul, linear, add (14); then rmsnorm and a linear: 31.
        let w = workload();
        assert_eq!(super::super::op_instances(&w, &par(4)), 31.0);
        assert_eq!(super::super::op_instances(&w, &par(1)), 124.0);
    }

    #[test]
    fn sequence_parallel_runs_match_reference_op_by_op() {
        let w = workload();
        let g = &w.model.graph;
        let cfg = RunConfig {
            check_all: true,
            ..RunConfig::default()
        };
        let init = Init::new(cfg.seed);
        let gshapes = graph::shapes(g, &w.bindings).expect("shapes");
        let inputs: Vec<Vec<f32>> = g
            .inputs
            .iter()
            .map(|i| graph::input_values(g, *i, &gshapes[i.0 as usize], &init))
            .collect();
        // (dp, tp, pp, microbatch, rows split): 5 rows per sample, so a
        // microbatch of 1 cannot be cut into 2 row blocks (all-reduce).
        for (dp, tp, pp, mb, split) in [
            (1, 2, 1, 4, true),
            (1, 4, 1, 4, true),
            (1, 2, 2, 2, true),
            (2, 2, 2, 1, false),
        ] {
            let par = Parallel {
                dp,
                tp,
                pp,
                ep: 1,
                cp: 1,
                vp: 1,
                tables: Vec::new(),
                column_slices: Vec::new(),
                model_parallel_input: false,
                zero: 0,
                microbatch: mb,
                stage_layers: even_split(2, pp),
                sp: true,
                forms: Default::default(),
            };
            let r = run(&w, &par, &cfg).expect("runs");
            assert!(r.passed(), "dp={dp} tp={tp} pp={pp}: {r:?}");
            assert!(r.divergence.is_none(), "{:?}", r.divergence);
            assert!(r.outputs.iter().all(|o| o.max_rel <= 1e-4), "{r:?}");
            let (res, _) = simulate_devices(&w, &par, &cfg, &inputs, true, None).expect("runs");
            let rows = res
                .iter()
                .flat_map(|d| &d.records)
                .filter(|(_, _, l, _)| *l == Layout::Rows)
                .count();
            assert_eq!(
                rows > 0,
                split,
                "dp={dp} tp={tp} pp={pp}: {rows} row-split values"
            );
        }
    }

    #[test]
    fn divergence_names_the_first_diverging_op() {
        let w = workload();
        // The first attention op of the body.
        let att = graph::ops(&w.model.graph.body)
            .into_iter()
            .find(|o| matches!(o.kind, OpKind::Attention { .. }))
            .expect("attention")
            .output;
        let par = Parallel {
            dp: 1,
            tp: 2,
            pp: 2,
            ep: 1,
            cp: 1,
            vp: 1,
            tables: Vec::new(),
            column_slices: Vec::new(),
            model_parallel_input: false,
            zero: 0,
            microbatch: 2,
            stage_layers: vec![1, 1],
            sp: false,
            forms: Default::default(),
        };
        let cfg = RunConfig {
            fault: Some(att),
            ..RunConfig::default()
        };
        let r = run(&w, &par, &cfg).expect("runs");
        assert!(!r.passed());
        let d = r.divergence.clone().expect("located");
        assert_eq!(d.op, format!("attention %{} (iteration 0)", att.0));
        assert_eq!(d.device, 0);
        let e = r.error().expect("an error");
        assert_eq!(e.code, RCode::R001);
        assert!(
            e.message.contains("first diverging op: attention"),
            "{}",
            e.message
        );
    }
}

mod grad_tests {
    use super::run_tests::workload;
    use super::*;

    fn par(dp: usize, tp: usize, pp: usize, mb: usize, sp: bool) -> Parallel {
        Parallel {
            dp,
            tp,
            pp,
            ep: 1,
            cp: 1,
            vp: 1,
            tables: Vec::new(),
            column_slices: Vec::new(),
            model_parallel_input: false,
            zero: 0,
            microbatch: mb,
            stage_layers: even_split(2, pp),
            sp,
            forms: Default::default(),
        }
    }

    #[test]
    fn sharded_gradients_match_reference() {
        let w = workload();
        let cfg = RunConfig {
            gradients: true,
            ..RunConfig::default()
        };
        for p in [
            par(1, 1, 1, 4, false),
            par(2, 1, 1, 1, false),
            par(1, 2, 1, 2, false),
            par(1, 4, 1, 4, false),
            par(1, 2, 1, 4, true),
            par(1, 1, 2, 1, false),
            par(2, 2, 2, 1, false),
            par(1, 2, 2, 2, true),
        ] {
            let r = run(&w, &p, &cfg).expect("runs");
            let g = r.gradients.as_ref().expect("gradients");
            eprintln!("{}: {:?}", describe(&p), g);
            assert!(r.passed(), "{}: {:?}", describe(&p), r);
            assert!(g.params > 0 && g.blocks >= g.params);
        }
    }

    /// Context parallelism and interleaved pipelines, forward and backward:
    /// 4 layers, sequences of 6.
    #[test]
    fn context_parallel_and_interleaved_runs_match_reference() {
        let src = super::run_tests::SRC
            .replace("layers = 2", "layers = 4")
            .replace("seq = 5", "seq = 6");
        let c = gantry_lang::check::check_source("t.gantry", &src);
        assert!(!c.has_errors(), "{}", c.render(false));
        let w = c.program.workloads["w"].clone();
        let cfg = RunConfig {
            gradients: true,
            ..RunConfig::default()
        };
        // (dp, tp, pp, cp, vp, microbatch, sp)
        for (dp, tp, pp, cp, vp, mb, sp) in [
            (1, 1, 1, 2, 1, 4, false),
            (1, 1, 1, 3, 1, 2, false),
            (1, 2, 1, 2, 1, 4, false),
            (1, 2, 1, 2, 1, 4, true),
            (2, 2, 2, 2, 1, 1, false),
            (1, 1, 2, 1, 2, 1, false),
            (1, 2, 2, 1, 2, 2, true),
            (1, 1, 4, 1, 1, 1, false),
            (2, 1, 2, 2, 2, 1, false),
        ] {
            let p = Parallel {
                dp,
                tp,
                pp,
                cp,
                vp,
                microbatch: mb,
                stage_layers: even_split(4, pp),
                sp,
                ..Parallel::default()
            };
            let r =
                run(&w, &p, &cfg).unwrap_or_else(|e| panic!("{}: {}", describe(&p), e.render()));
            let g = r.gradients.as_ref().expect("gradients");
            eprintln!("{}: outputs {:?}, {:?}", describe(&p), r.outputs, g);
            assert!(r.passed(), "{}: {:?}", describe(&p), r);
            assert_eq!(g.zero_params, 0, "{}", describe(&p));
        }
    }

    #[test]
    fn interleaved_schedule_is_megatrons() {
        use Action::*;
        // pp = 2, two chunks, 2 microbatches: stage 1 warms up with
        // (2 - 1 - 1) * 2 + (2 - 1) * 2 = 2 forwards.
        assert_eq!(
            schedule(2, 2, 1, 2),
            vec![
                (Forward(0), 0),
                (Forward(1), 0),
                (Forward(0), 1),
                (Backward(0), 1),
                (Forward(1), 1),
                (Backward(1), 1),
                (Backward(0), 0),
                (Backward(1), 0),
            ]
        );
        // Every stage runs every (microbatch, chunk) once each way.
        for stage in 0..4 {
            let s = schedule(4, 3, stage, 8);
            assert_eq!(s.len(), 2 * 8 * 3);
            for mb in 0..8 {
                for c in 0..3 {
                    assert_eq!(s.iter().filter(|x| **x == (Forward(mb), c)).count(), 1);
                    assert_eq!(s.iter().filter(|x| **x == (Backward(mb), c)).count(), 1);
                }
            }
        }
        assert_eq!(chunk_layers(&[3, 4], 2), vec![0..1, 1..3, 3..5, 5..7]);
    }

    /// A decode step reads the prompt's keys and values from its cache:
    /// its outputs match the last position of the whole sequence, which
    /// differ from the step run alone.
    #[test]
    fn decode_steps_read_the_kv_cache() {
        let src = super::run_tests::SRC.replace(
            "train { seq = 5, global_batch = 4, dtype = fp32 }",
            "decode { batch = 4, context = 5, dtype = fp32 }",
        );
        let c = gantry_lang::check::check_source("t.gantry", &src);
        assert!(!c.has_errors(), "{}", c.render(false));
        let w = c.program.workloads["w"].clone();
        assert_eq!(w.bindings.get("seq"), Some(&1));
        for (dp, tp, pp, mb) in [(1, 1, 1, 4), (2, 2, 1, 2), (1, 4, 2, 1), (1, 2, 2, 2)] {
            let p = Parallel {
                microbatch: mb,
                stage_layers: even_split(2, pp),
                ..par(dp, tp, pp, mb, tp > 1)
            };
            let r = run(&w, &p, &RunConfig::default()).expect("runs");
            assert!(r.passed(), "{}: {r:?}", describe(&p));
            assert_eq!(r.outputs[0].shape, vec![4, 1, 50]);
        }
        // Without the cache the step's logits are another function.
        let g = &w.model.graph;
        let init = Init::new(0);
        let alone = reference::run(g, &w.bindings, &init, None, false).expect("runs");
        let mut whole_b = w.bindings.clone();
        whole_b.insert("seq".into(), 6);
        let shapes = graph::shapes(g, &whole_b).expect("shapes");
        let inputs: Vec<Vec<f32>> = g
            .inputs
            .iter()
            .map(|i| graph::input_values(g, *i, &shapes[i.0 as usize], &init))
            .collect();
        // The step alone, fed the same last token.
        let last: Vec<Vec<f32>> = inputs
            .iter()
            .map(|x| x.chunks(6).map(|s| s[5]).collect())
            .collect();
        let alone_last = reference::run(g, &w.bindings, &init, Some(last), false).expect("runs");
        let whole = reference::run(g, &whole_b, &init, Some(inputs), false).expect("runs");
        let want: Vec<f32> = whole.outputs[0]
            .2
            .chunks(6 * 50)
            .flat_map(|s| s[5 * 50..].to_vec())
            .collect();
        let (_, rel) = graph::compare(&alone_last.outputs[0].2, &want);
        assert!(
            rel > 1e-2,
            "the prompt changes the step's logits ({rel:.2e})"
        );
        assert_eq!(alone.outputs[0].1, vec![4, 1, 50]);
    }

    /// ZeRO's sharded optimizer step equals the replicated one bit for
    /// bit and holds a 1/dp share of the state; a device that updates the
    /// wrong part is caught.
    #[test]
    fn zero_steps_equal_the_replicated_step() {
        let w = workload();
        for zero in 0..=3u8 {
            let p = Parallel {
                zero,
                ..par(4, 1, 1, 1, false)
            };
            let cfg = RunConfig {
                gradients: true,
                ..RunConfig::default()
            };
            let r = run(&w, &p, &cfg).expect("runs");
            let s = r.step.as_ref().expect("a step");
            assert!(r.passed(), "zero={zero}: {s:?}");
            assert_eq!(s.optimizer, "adam");
            if zero == 0 {
                assert_eq!(s.state, s.state_unsharded);
            } else {
                // Every block is shared by the 4 replicas.
                assert!(4 * s.state <= s.state_unsharded + 4 * 25, "{s:?}");
            }
            let bad = run(
                &w,
                &p,
                &RunConfig {
                    step_fault: true,
                    ..cfg
                },
            )
            .expect("runs");
            if zero > 0 {
                assert!(!bad.passed());
                let e = bad.error().expect("an error");
                assert!(e.message.contains("step of"), "{}", e.message);
            }
        }
    }

    /// A model with two top-level `repeat`s: the larger is pipelined, the
    /// other runs on the first virtual stage (as the cost model splits it).
    #[test]
    fn models_with_several_repeats_pipeline_the_largest() {
        let src = "model Two(d = 16, layers = 2) {
  input tokens: i32[batch, seq]
  x = embedding(tokens, 40, d)
  repeat layers {
    x = x + linear(relu(linear(rmsnorm(x), d, 2 * d)), 2 * d, d)
  }
  x = linear(x, d, d)
  repeat 2 * layers {
    x = x + linear(silu(linear(rmsnorm(x), d, 2 * d)), 2 * d, d)
  }
  output logits = linear(rmsnorm(x), d, 40)
}
workload w {
  model Two
  train { seq = 4, global_batch = 4, dtype = fp32 }
}
";
        let c = gantry_lang::check::check_source("t.gantry", src);
        assert!(!c.has_errors(), "{}", c.render(false));
        let w = c.program.workloads["w"].clone();
        let cfg = RunConfig {
            gradients: true,
            ..RunConfig::default()
        };
        for (pp, vp, tp) in [(2, 1, 1), (2, 2, 2), (4, 1, 1)] {
            let p = Parallel {
                vp,
                stage_layers: even_split(4, pp),
                ..par(1, tp, pp, 1, false)
            };
            let r = run(&w, &p, &cfg).unwrap_or_else(|e| panic!("{}", e.render()));
            assert!(r.passed(), "{}: {r:?}", describe(&p));
            assert_eq!(r.gradients.as_ref().map(|g| g.zero_params), Some(0));
        }
    }

    /// Values made before the pipelined `repeat` reach the last stage when
    /// an output or a later elementwise op reads them (and are not fused
    /// into a consumer on another stage).
    #[test]
    fn values_before_the_pipeline_cross_it() {
        for (read, out) in [("x + e", "\n  output emb = e"), ("x + e", "")] {
            let src = format!(
                "model T(d = 16, layers = 2) {{
  input tokens: i32[batch, seq]
  x = embedding(tokens, 50, d)
  e = silu(x)
  repeat layers {{
    x = x + linear(relu(linear(rmsnorm(x), d, 2 * d)), 2 * d, d)
  }}
  output logits = linear(rmsnorm({read}), d, 50){out}
}}
workload w {{
  model T
  train {{ seq = 4, global_batch = 4, dtype = fp32 }}
}}
"
            );
            let c = gantry_lang::check::check_source("t.gantry", &src);
            assert!(!c.has_errors(), "{}", c.render(false));
            let w = c.program.workloads["w"].clone();
            for gradients in [false, true] {
                let cfg = RunConfig {
                    gradients,
                    ..RunConfig::default()
                };
                let p = par(1, 1, 2, 1, false);
                let r = run(&w, &p, &cfg).unwrap_or_else(|e| panic!("{src}: {}", e.render()));
                assert!(r.passed(), "{src}: {r:?}");
            }
        }
    }

    #[test]
    fn a_wrong_gradient_is_named() {
        let w = workload();
        let g = &w.model.graph;
        // The first column-parallel linear of the layers.
        let target = graph::ops(&g.body)
            .iter()
            .find(|o| matches!(o.kind, OpKind::Linear { .. }))
            .map(|o| o.output)
            .expect("a linear");
        let cfg = RunConfig {
            gradients: true,
            grad_fault: Some(target),
            ..RunConfig::default()
        };
        let r = run(&w, &par(2, 2, 1, 1, false), &cfg).expect("runs");
        assert!(!r.passed());
        assert!(
            r.outputs.iter().all(|o| o.max_rel <= 1e-4),
            "outputs are fine"
        );
        let e = r.error().expect("an error");
        assert_eq!(e.code, RCode::R001);
        assert!(
            e.message.contains(&format!("linear %{}", target.0)),
            "{}",
            e.message
        );
    }
}

mod column_tests {
    use super::super::parallel::{TableShard, column_slices};
    use super::*;

    const DLRM: &str = "table T(rows, dim = 5, pooling = 2) {
  dtype = fp32
}
model D(tables = [T(rows = 9), T(rows = 4)]) {
  input dense: fp32[batch, 2]
  input sparse: i32[batch, len(tables)]
  b = mlp(dense, [3, 5], activation = gelu)
  e = embedding_bag(sparse, tables)
  z = interact(b, e)
  output ctr = sigmoid(mlp(z, [3, 1], activation = silu))
}
workload w {
  model D
  train { global_batch = 4, dtype = fp32, optimizer = sgd }
}
";

    type Slices = Vec<(usize, std::ops::Range<usize>)>;

    fn par(dp: usize, slices: Vec<Slices>) -> Parallel {
        Parallel {
            dp,
            tables: vec![TableShard::Column; slices.len()],
            column_slices: slices,
            ..Parallel::default()
        }
    }

    /// Slices map to devices `rank mod size`, adjacent ones on a device
    /// merge, and they must tile the columns (R003 otherwise).
    #[test]
    fn column_slices_map_merge_and_must_tile() {
        let p = par(2, vec![vec![(0, 0..1), (2, 1..3), (1, 3..4), (3, 4..5)]]);
        let at = |size| column_slices(&p, 0, size, 5, "t").expect("tiles");
        assert_eq!(at(2), [(0, 0..3), (1, 3..5)]);
        assert_eq!(at(4), [(0, 0..1), (2, 1..3), (1, 3..4), (3, 4..5)]);
        assert_eq!(at(1), [(0, 0..5)]);
        for bad in [
            vec![(0, 0..2), (1, 3..5)],
            vec![(0, 0..3), (1, 2..5)],
            vec![(0, 0..6)],
            vec![(0, 0..4)],
            Vec::new(),
        ] {
            let e = column_slices(&par(2, vec![bad.clone()]), 0, 2, 5, "t").expect_err("R003");
            assert_eq!(e.code, RCode::R003, "{bad:?}");
        }
    }

    /// Column-wise tables, forward and one training step, against the
    /// reference: a device holding two slices of a table that are not
    /// adjacent, a table whole in one slice, slices merged on a smaller
    /// stage, and a device holding no slice.
    #[test]
    fn column_wise_runs_match_reference() {
        let c = gantry_lang::check::check_source("d.gantry", DLRM);
        assert!(!c.has_errors(), "{}", c.render(false));
        let w = c.program.workloads["w"].clone();
        for (dp, slices) in [
            (
                4,
                vec![vec![(0, 0..2), (1, 2..3), (0, 3..5)], vec![(2, 0..5)]],
            ),
            (
                4,
                vec![vec![(3, 0..1), (1, 1..5)], vec![(1, 0..2), (2, 2..5)]],
            ),
            (
                2,
                vec![vec![(0, 0..2), (2, 2..3), (1, 3..5)], vec![(3, 0..5)]],
            ),
        ] {
            let p = par(dp, slices);
            let cfg = RunConfig {
                gradients: true,
                check_all: true,
                ..RunConfig::default()
            };
            let r = run(&w, &p, &cfg).unwrap_or_else(|e| panic!("{p:?}: {}", e.render()));
            assert!(r.passed(), "{p:?}: {r:?}");
            let g = r.gradients.as_ref().expect("gradients");
            assert!(g.uncovered.is_none() && g.zero_params == 0, "{g:?}");
            assert!(r.step.as_ref().is_some_and(|s| s.mismatched.is_empty()));
        }
    }
}

//! Reading a design point from `gantry.plan/2` (or `/1`) JSON (`gantry plan --format
//! json`, compiler/src/report.rs).
//!
//! The file is untrusted input: every field is type-checked, degrees must
//! be positive and multiply to the device count, stage layers must match
//! the pipeline, and the plan must be for the workload being run. Any
//! mismatch is an R002 error; nothing is unwrapped.

use gantry_compiler::point::{DesignPoint, Recompute};
use serde_json::Value;

use crate::error::{RuntimeError, mismatch};

/// A design point read from JSON, with the plan's stage split.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanPoint {
    pub plan: String,
    pub workload: String,
    pub point: DesignPoint,
    pub stage_layers: Vec<u64>,
    /// Contractions the plan's extraction runs whole (tensor names);
    /// empty in `gantry.plan/1`, which did not carry them.
    pub whole: Vec<String>,
    /// Linears it pins column-parallel (`column_ops`) and row-parallel
    /// (`row_ops`); empty where the file does not carry them.
    pub column: Vec<String>,
    pub row: Vec<String>,
}

fn field<'a>(v: &'a Value, path: &str) -> Result<&'a Value, RuntimeError> {
    let mut cur = v;
    for k in path.split('.') {
        cur = cur
            .get(k)
            .ok_or_else(|| mismatch(format!("plan JSON has no `{path}`")))?;
    }
    Ok(cur)
}

fn uint(v: &Value, path: &str) -> Result<u64, RuntimeError> {
    field(v, path)?
        .as_u64()
        .filter(|x| *x >= 1 || path.ends_with("zero"))
        .ok_or_else(|| {
            mismatch(format!(
                "plan JSON `{path}` must be a positive whole number"
            ))
        })
}

fn string(v: &Value, path: &str) -> Result<String, RuntimeError> {
    field(v, path)?
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| mismatch(format!("plan JSON `{path}` must be a string")))
}

/// Parses and validates `text` for a run of `workload` with `layers`
/// pipelined layers (after scaling).
pub fn parse(text: &str, workload: &str) -> Result<PlanPoint, RuntimeError> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| mismatch(format!("plan JSON does not parse: {e}")))?;
    let schema = string(&v, "schema")?;
    // Version 2 renamed metrics only; the fields read here are the same in
    // version 1, which is still accepted.
    if schema != gantry_compiler::report::SCHEMA && schema != "gantry.plan/1" {
        return Err(mismatch(format!(
            "plan JSON has schema `{schema}`, expected `{}`",
            gantry_compiler::report::SCHEMA
        )));
    }
    let plan = string(&v, "plan")?;
    let wl = string(&v, "workload")?;
    if wl != workload {
        return Err(mismatch(format!(
            "plan `{plan}` is for workload `{wl}`, not `{workload}`"
        ))
        .with_help("pass the plan of this file's workload, or --plan NAME"));
    }
    let devices = uint(&v, "devices")?;
    let p = |k: &str| uint(&v, &format!("parallelism.{k}"));
    let (dp, tp, pp, cp, ep) = (p("dp")?, p("tp")?, p("pp")?, p("cp")?, p("ep")?);
    let zero = p("zero")?;
    if zero > 3 {
        return Err(mismatch(format!(
            "plan JSON `parallelism.zero` is {zero}, not a ZeRO stage 0-3"
        )));
    }
    let product = dp
        .checked_mul(tp)
        .and_then(|x| x.checked_mul(pp))
        .and_then(|x| x.checked_mul(cp));
    if product != Some(devices) {
        return Err(mismatch(format!(
            "dp x tp x pp x cp = {dp} x {tp} x {pp} x {cp} does not make the plan's {devices} devices"
        )));
    }
    let recompute = string(&v, "parallelism.recompute")?;
    let recompute = Recompute::parse(&recompute).ok_or_else(|| {
        mismatch(format!(
            "plan JSON `parallelism.recompute` is `{recompute}`, not none, selective or full"
        ))
    })?;
    let sp = field(&v, "parallelism.sequence_parallel")?
        .as_bool()
        .ok_or_else(|| {
            mismatch("plan JSON `parallelism.sequence_parallel` must be true or false")
        })?;
    let layers = field(&v, "parallelism.stage_layers")?
        .as_array()
        .ok_or_else(|| mismatch("plan JSON `parallelism.stage_layers` must be a list"))?
        .iter()
        .map(|x| {
            x.as_u64().ok_or_else(|| {
                mismatch("plan JSON `parallelism.stage_layers` must hold whole numbers")
            })
        })
        .collect::<Result<Vec<u64>, _>>()?;
    let names = |key: &str| -> Result<Vec<String>, RuntimeError> {
        match v.pointer(&format!("/parallelism/{key}")) {
            None => Ok(Vec::new()),
            Some(w) => w
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .map(|x| x.as_str().map(str::to_string))
                        .collect::<Option<Vec<String>>>()
                })
                .ok_or_else(|| {
                    mismatch(format!(
                        "plan JSON `parallelism.{key}` must be a list of names"
                    ))
                }),
        }
    };
    let (whole, column, row) = (names("whole_ops")?, names("column_ops")?, names("row_ops")?);
    // Optional (plans written before HSDP): every dp x cp rank. It must
    // divide them, as `--fix shard=` must (C012): a larger one made
    // `replicas()` round to 1 and the run went ahead as if it were absent.
    let ranks = dp * cp;
    let shard = match v.pointer("/parallelism/shard") {
        None => ranks,
        Some(x) => x.as_u64().filter(|s| *s >= 1).ok_or_else(|| {
            mismatch("plan JSON `parallelism.shard` must be a positive whole number")
        })?,
    };
    if ranks % shard != 0 {
        return Err(mismatch(format!(
            "plan JSON `parallelism.shard` = {shard} does not divide the dp x cp = {dp} x {cp} = {ranks} ranks holding the same parameters"
        ))
        .with_help(format!("shard is one of the divisors of {ranks}")));
    }
    if layers.len() as u64 != pp {
        return Err(mismatch(format!(
            "plan JSON lists {} stage layer counts for pp = {pp}",
            layers.len()
        )));
    }
    Ok(PlanPoint {
        plan,
        workload: wl,
        point: DesignPoint {
            dp,
            tp,
            pp,
            cp,
            ep,
            zero: zero as u8,
            recompute,
            microbatch: p("microbatch")?,
            virtual_stages: p("virtual_stages")?,
            sequence_parallel: sp,
            batch: p("batch")?,
            shard,
        },
        stage_layers: layers,
        whole,
        column,
        row,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::RCode;

    const GOOD: &str = r#"{"schema": "gantry.plan/2", "plan": "p", "workload": "w", "devices": 8,
      "parallelism": {"dp": 2, "tp": 2, "pp": 2, "cp": 1, "ep": 1, "zero": 0, "recompute": "none",
      "microbatch": 1, "virtual_stages": 1, "sequence_parallel": false, "batch": 8, "stage_layers": [1, 1]}}"#;

    #[test]
    fn valid_plan_parses_and_bad_ones_are_r002() {
        let p = parse(GOOD, "w").expect("parses");
        assert_eq!((p.point.dp, p.point.tp, p.point.pp), (2, 2, 2));
        let v1 = GOOD.replace("gantry.plan/2", "gantry.plan/1");
        assert_eq!(parse(&v1, "w").expect("version 1 parses"), p);
        for (from, to) in [
            ("\"devices\": 8", "\"devices\": 9"),
            ("\"workload\": \"w\"", "\"workload\": \"x\""),
            ("[1, 1]", "[2]"),
            ("\"tp\": 2", "\"tp\": -2"),
            ("\"tp\": 2", "\"tp\": \"two\""),
            ("gantry.plan/2", "gantry.plan/9"),
            ("\"recompute\": \"none\"", "\"recompute\": \"most\""),
            ("{\"schema\"", "[{\"schema\""),
            // shard must divide dp x cp = 2 (it was accepted and ignored).
            ("\"batch\": 8,", "\"batch\": 8, \"shard\": 1099511627776,"),
            ("\"batch\": 8,", "\"batch\": 8, \"shard\": 3,"),
            ("\"batch\": 8,", "\"batch\": 8, \"shard\": 0,"),
        ] {
            let bad = GOOD.replace(from, to);
            let e = parse(&bad, "w").unwrap_err();
            assert_eq!(e.code, RCode::R002, "{to}: {e:?}");
        }
    }
}

//! Reading shards back: every malformed, mismatched, missing or
//! duplicated shard is a [`Bad`], and a result that would not read back
//! the same is refused before it is written.

use super::*;
use crate::sensitivity::Resource;

fn run_id(fingerprint: &str) -> RunId {
    RunId {
        source: "s.gantry".into(),
        lib: vec![],
        study: None,
        sensitivity: true,
        fingerprint: fingerprint.into(),
    }
}

fn sens(base: f64) -> Done {
    Done {
        cell: None,
        sensitivity: Some(Ok(Sensitivity {
            base,
            perturbed: vec![
                (Resource::Compute, Some(Ok(base * 0.9375))),
                (Resource::HostMemory, None),
                (Resource::ScaleUp, Some(Err("no plan".into()))),
            ],
        })),
    }
}

/// Shard `i` of `n` over `jobs` jobs, each result's base its job index.
fn shard(i: usize, n: usize, jobs: usize) -> (String, Partial) {
    let results = (i..jobs)
        .step_by(n)
        .map(|k| (k, sens(k as f64 + 0.1)))
        .collect();
    let text = Partial::of(&run_id("ab"), i, n, jobs, results).expect("writes");
    let name = format!("shard-{i}.json");
    let p = parse(&name, &text).expect("reads back");
    (name, p)
}

#[test]
fn shards_read_back_and_collect_in_job_order() {
    let parts: Vec<_> = (0..3).map(|i| shard(i, 3, 7)).collect();
    check_set(&parts).expect("a complete set");
    let done = collect(parts).expect("collects");
    assert_eq!(done.len(), 7);
    for (k, d) in done.iter().enumerate() {
        assert_eq!(d, &sens(k as f64 + 0.1));
    }
}

#[test]
fn missing_duplicate_and_foreign_shards_are_refused() {
    let set = |v: Vec<(String, Partial)>| check_set(&v).expect_err("refused").message;
    let m = set(vec![shard(0, 3, 7), shard(2, 3, 7)]);
    assert!(m.contains("shard 1 of 3 missing"), "{m}");
    let m = set(vec![shard(0, 2, 7), shard(1, 2, 7), shard(1, 2, 7)]);
    assert!(m.contains("shard 1/2 is given twice"), "{m}");
    let mut other = shard(1, 2, 7);
    other.1.fingerprint = "cd".into();
    let m = set(vec![shard(0, 2, 7), other]);
    assert!(m.contains("fingerprint"), "{m}");
    let m = set(vec![shard(0, 2, 7), shard(1, 3, 7)]);
    assert!(m.contains("shard count"), "{m}");
    assert!(set(vec![]).contains("no shard files"));
}

#[test]
fn a_shard_holding_another_shards_job_or_missing_one_is_refused() {
    let mut a = shard(0, 2, 6);
    let b = shard(1, 2, 6);
    a.1.results[1].job = 3;
    let e = collect(vec![a, b.clone()]).expect_err("refused");
    assert!(
        e.message.contains("job 3 is not the next job of shard 0/2"),
        "{}",
        e.message
    );
    let mut a = shard(0, 2, 6);
    a.1.results.pop();
    let e = collect(vec![a, b]).expect_err("refused");
    assert!(
        e.message.contains("lacks the result of job 4"),
        "{}",
        e.message
    );
}

#[test]
fn malformed_documents_are_refused_with_a_position() {
    let e = parse("x.json", "{\"schema\": \"gantry.shard/1\",\n \"shard\": ").expect_err("refused");
    assert!(e.file.starts_with("x.json:2:"), "{}", e.file);
    let e = parse("x.json", r#"{"schema":"gantry.study/1","studies":[]}"#).expect_err("refused");
    assert!(
        e.message.contains("`gantry.study/1`, not `gantry.shard/1`"),
        "{}",
        e.message
    );
    let (_, p) = shard(0, 1, 2);
    let mut v = serde_json::to_value(&p).expect("value");
    v["results"][0]["done"]["sensitivity"]["Ok"]["base"] = "fast".into();
    let e = parse("x.json", &v.to_string()).expect_err("refused");
    assert!(e.message.contains("malformed"), "{}", e.message);
    v = serde_json::to_value(&p).expect("value");
    v["shard"] = 4.into();
    let e = parse("x.json", &v.to_string()).expect_err("refused");
    assert!(
        e.message.contains("shard 4 of 1 is not a shard"),
        "{}",
        e.message
    );
}

#[test]
fn a_figure_that_would_not_read_back_is_not_written() {
    let e =
        Partial::of(&run_id("ab"), 0, 1, 1, vec![(0, sens(f64::INFINITY))]).expect_err("refused");
    assert!(e.contains("not finite"), "{e}");
    // Awkward but finite figures read back to the same bits.
    for x in [
        0.1 + 0.2,
        1.0 / 3.0,
        5e-324,
        1.7976931348623157e308,
        1.234_567_891_234_568e-292,
        2.0_f64.powi(-1070) * 3.0,
    ] {
        let t = Partial::of(&run_id("ab"), 0, 1, 1, vec![(0, sens(x))]).expect("writes");
        let p = parse("x", &t).expect("reads");
        let Some(Ok(s)) = &p.results[0].done.sensitivity else {
            panic!("no sensitivity")
        };
        assert_eq!(s.base.to_bits(), x.to_bits());
    }
}

#[test]
fn a_huge_shard_count_is_refused_not_allocated() {
    // The count is untrusted: above MAX_SHARDS it is refused on reading.
    let (_, p) = shard(0, 1, 2);
    let mut v = serde_json::to_value(&p).expect("value");
    v["shards"] = serde_json::Value::from(u64::MAX);
    let e = parse("x.json", &v.to_string()).expect_err("refused");
    assert!(e.message.contains("at most"), "{}", e.message);
    v["shards"] = serde_json::Value::from(MAX_SHARDS as u64 + 1);
    assert!(parse("x.json", &v.to_string()).is_err());
    // check_set sizes nothing by the count, and names only a few of the
    // missing shards.
    let mut one = shard(0, 2, 2);
    one.1.shards = usize::MAX;
    let m = check_set(&[one]).expect_err("refused").message;
    assert!(m.contains("1, 2, 3"), "{m}");
    assert!(
        m.contains(&format!("and {} more", usize::MAX - 1 - MISSING_NAMED)),
        "{m}"
    );
    assert!(m.len() < 300, "{m}");
    // At the bound, one file of many shards is reported the same way.
    let (_, p) = shard(0, 1, 2);
    let mut v = serde_json::to_value(&p).expect("value");
    v["shards"] = serde_json::Value::from(MAX_SHARDS as u64);
    let p = parse("x.json", &v.to_string()).expect("at the bound");
    let m = check_set(&[("x.json".into(), p)])
        .expect_err("refused")
        .message;
    assert!(m.contains(&format!("of {MAX_SHARDS} missing")), "{m}");
}

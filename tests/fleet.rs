//! Fleet studies end to end: the example's answer is consistent (pooled
//! never dearer than homogeneous, every pool meets its demand), a power cap
//! no fleet fits is `C025` naming the cap and the shortfall, and bad
//! `site`/`demand`/ownership input is a diagnostic.

mod common;
use common::gantry;

/// `$X/h` after `key` on a line.
fn dollars_per_hour(line: &str, key: &str) -> f64 {
    let rest = &line[line.find(key).expect(key) + key.len()..];
    let num: String = rest
        .trim_start_matches(['$', ' '])
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    num.parse().expect("a number")
}

#[test]
fn example_fleet_pooled_vs_homogeneous() {
    let (code, out, err) = gantry(&["study", "examples/fleet_study.gantry"]);
    assert_eq!(code, 0, "{err}");
    let pooled = out
        .lines()
        .find(|l| l.starts_with("pooled fleet"))
        .expect(&out);
    let homog = out
        .lines()
        .find(|l| l.starts_with("homogeneous fleet"))
        .expect(&out);
    let (p, h) = (
        dollars_per_hour(pooled, "TCO"),
        dollars_per_hour(homog, "TCO"),
    );
    assert!(p > 0.0 && p <= h, "pooled {p} vs homogeneous {h}\n{out}");
    assert!(out.contains("cost of homogeneity"), "{out}");
    // Training pools report goodput after failures next to raw throughput.
    assert!(out.contains("goodput") && out.contains("(Young)"), "{out}");
    // Every pool delivers at least its demand.
    for l in out
        .lines()
        .filter(|l| l.trim_start().starts_with("demand "))
    {
        let nums: Vec<f64> = l
            .split(|c: char| !(c.is_ascii_digit() || c == '.' || c == 'e' || c == '-'))
            .filter_map(|t| t.parse().ok())
            .collect();
        assert!(nums.len() >= 3, "{l}");
        assert!(nums[2] >= nums[0], "delivered below demand: {l}");
    }
}

fn study_with(site: &str, demand: &str) -> String {
    let base = std::fs::read_to_string("examples/fleet_study.gantry").expect("example");
    let start = base.find("study fleet").expect("study");
    format!(
        "{}study small on RoCERail(server = {{GrandTeton, HGX_B200}}, nodes = 16) {{\n  demand {{ {demand} }}\n  site {{ {site} }}\n  subject to memory <= 0.9 * hbm\n}}\n",
        &base[..start]
    )
}

fn run_text(text: &str, name: &str) -> (i32, String, String) {
    let dir = std::env::temp_dir().join(format!("gantry-fleet-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("f.gantry");
    std::fs::write(&path, text).expect("write");
    let root = std::env::current_dir().expect("cwd");
    let p = path.to_string_lossy().into_owned();
    let lib = root.to_string_lossy().into_owned();
    gantry(&["study", &p, "--lib", &lib])
}

/// A fleet study of the example's workloads on `servers` (`nodes` each).
fn study_on(servers: &str, nodes: u64, demand: &str) -> String {
    let base = std::fs::read_to_string("examples/fleet_study.gantry").expect("example");
    let start = base.find("study fleet").expect("study");
    format!(
        "{}study small on RoCERail(server = {{{servers}}}, nodes = {nodes}) {{\n  demand {{ {demand} }}\n  site {{ pue = 1.1, energy = $0.08/kWh }}\n}}\n",
        &base[..start]
    )
}

fn run_json(text: &str, name: &str) -> serde_json::Value {
    let dir = std::env::temp_dir().join(format!("gantry-fleet-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("f.gantry");
    std::fs::write(&path, text).expect("write");
    let lib = std::env::current_dir()
        .expect("cwd")
        .to_string_lossy()
        .into_owned();
    let (code, out, err) = gantry(&[
        "study",
        &path.to_string_lossy(),
        "--lib",
        &lib,
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "{name}: {err}");
    serde_json::from_str(&out).expect("JSON")
}

/// A serve demand one node cannot serve is split over copies of it, each
/// simulated at its share; sweeping a second server never makes the
/// pooled fleet dearer; a serve pool is a pool like the others in the
/// pooled-versus-homogeneous choice.
#[test]
fn serve_pools_split_and_never_worsen_with_more_systems() {
    let demand = "fleet_llama3_70b_chat = { requests_per_s = 80 }, fleet_llama3_70b_decode = { tokens_per_s = 20_000 }";
    let one = run_json(&study_on("GrandTeton", 1, demand), "serve-one");
    let two = run_json(&study_on("GrandTeton, HGX_B200", 1, demand), "serve-two");
    let num = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    let f1 = &one["studies"][0]["fleet"];
    let chat = &f1["pooled"]["pools"][0];
    assert_eq!(chat["unit"], "requests");
    check_serve_pool(chat);
    // 80 req/s of a 70B model do not fit 8 GPUs: split over copies.
    assert!(num(&chat["replicas"]) >= 2.0, "{chat}");
    let f2 = &two["studies"][0]["fleet"];
    assert!(num(&f2["pooled"]["cost_usd_per_s"]) <= num(&f1["pooled"]["cost_usd_per_s"]));
    assert!(num(&f2["pooled"]["cost_usd_per_s"]) <= num(&f2["homogeneous"]["cost_usd_per_s"]));
    for p in f2["pooled"]["pools"].as_array().expect("pools") {
        if p["unit"] == "requests" {
            check_serve_pool(p);
        }
    }
}

/// A serve workload whose arrivals are a closed loop or a trace has no
/// rate to size at: L082 at the demand, before any planning.
#[test]
fn serve_pool_needs_open_arrivals() {
    for (name, arrivals) in [
        ("closed", "arrivals = closed(concurrency = 8)"),
        ("trace", "arrivals = trace(\"t.csv\")"),
    ] {
        let text = study_on(
            "GrandTeton",
            1,
            "fleet_llama3_70b_chat = { requests_per_s = 4 }",
        )
        .replace("arrivals = poisson(rate = 8)", arrivals);
        // The checker reads the trace beside the study (`run_text`'s
        // folder): a readable one, so that the demand is what fails.
        let dir = std::env::temp_dir().join(format!("gantry-fleet-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("t.csv"), "0,100,10\n0.5,200,20\n").expect("trace");
        let (code, out, err) = run_text(&text, name);
        assert_eq!(code, 1, "{out}{err}");
        assert!(
            err.contains("[L082]") && err.contains("requests_per_s"),
            "{name}: {err}"
        );
    }
}

#[test]
fn power_cap_no_fleet_fits_is_c025_with_shortfall() {
    let text = study_with(
        "pue = 1.1, energy = $0.08/kWh, power_cap = 50 kW",
        "fleet_llama3_70b_decode = { tokens_per_s = 100_000 }",
    );
    let (code, out, err) = run_text(&text, "cap");
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("error[C025]"), "{err}");
    assert!(
        err.contains("power cap of 0.050 MW") && err.contains("short by"),
        "{err}"
    );
}

#[test]
fn bad_site_and_demand_are_diagnostics() {
    let text = study_with(
        "pue = 0.9, energy = 8 W, powercap = 1 MW",
        "fleet_llama3_70b_decode = { tokens = 1e9 }, fleet_dlrm_train = { requests_per_s = 4 }",
    );
    let (code, _, err) = run_text(&text, "bad");
    assert_eq!(code, 1, "{err}");
    for want in [
        "site `pue` must be at least 1",
        "site `energy` must be an energy price",
        "did you mean `power_cap`?",
        "needs `within`",
        "is not a `serve` workload",
    ] {
        assert!(err.contains(want), "missing `{want}` in\n{err}");
    }
}

/// A demand states exactly one amount or rate: two (tokens and a rate)
/// or none is L043, not a silent choice of one.
#[test]
fn demand_states_exactly_one_amount_or_rate() {
    for (name, demand) in [
        (
            "two",
            "fleet_llama3_70b_decode = { tokens_per_s = 100_000, samples_per_s = 5 }",
        ),
        ("none", "fleet_llama3_70b_decode = { within = 30 day }"),
    ] {
        let text = study_with("pue = 1.1, energy = $0.08/kWh", demand);
        let (code, _, err) = run_text(&text, name);
        assert_eq!(code, 1, "{name}: {err}");
        assert!(
            err.contains("must state exactly one amount or rate"),
            "{name}: {err}"
        );
    }
}

#[test]
fn ownership_figures_are_checked() {
    let text = "device D {\n  compute { bf16 = 100 TFLOP/s }\n  memory 80 GB @ 2 TB/s\n  power 700 W\n  idle_power 900 W\n  purchase $0\n  mtbf 10 GB\n}\nnode N {\n  device D x 8\n  amortization 4 yr\n}\n";
    let dir = std::env::temp_dir().join(format!("gantry-fleet-own-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("own.gantry");
    std::fs::write(&path, text).expect("write");
    let (code, _, err) = gantry(&["check", &path.to_string_lossy()]);
    assert_eq!(code, 1, "{err}");
    for want in [
        "`idle_power` 900 W is above the full-load `power` 700 W",
        "`purchase` must be above zero",
        "`mtbf` must be a time",
        "`amortization` needs `purchase`",
    ] {
        assert!(err.contains(want), "missing `{want}` in\n{err}");
    }
}

/// Is `a` no worse than `b` on every figure and better on one
/// (`signs`: +1 minimised, -1 maximised)? Written here, not shared with
/// the compiler's `pareto` module, so the fronts are checked independently.
fn beats(a: &[f64], b: &[f64], signs: &[f64]) -> bool {
    let k: Vec<(f64, f64)> = a
        .iter()
        .zip(b)
        .zip(signs)
        .map(|((x, y), s)| (x * s, y * s))
        .collect();
    k.iter().all(|(x, y)| x <= y) && k.iter().any(|(x, y)| x < y)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-30)
}

/// The example's `gantry.study/1` document: every pool's economics and
/// reliability terms recompute from the inputs written next to them, the
/// pooled fleet is the cheapest member of the fleet front, and each
/// workload's front is exactly the non-dominated candidate pools.
#[test]
fn example_fleet_json_terms_and_fronts() {
    let (code, out, err) = gantry(&["study", "examples/fleet_study.gantry", "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(doc["schema"], "gantry.study/1");
    let f = &doc["studies"][0]["fleet"];
    let num = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    let (mut goodputs, mut serves) = (0, 0);
    for kind in ["pooled", "homogeneous"] {
        let fleet = &f[kind];
        let pools = fleet["pools"].as_array().expect("pools");
        assert_eq!(pools.len(), 6);
        let sum: f64 = pools
            .iter()
            .map(|p| num(&p["economics"]["total_usd_per_s"]))
            .sum();
        assert!(close(sum, num(&fleet["cost_usd_per_s"])), "{kind}");
        for p in pools {
            let e = &p["economics"];
            assert!(num(&p["delivered_per_s"]) >= num(&p["demand_per_s"]));
            assert!(close(
                num(&e["facility_power_w"]),
                num(&e["it_power_w"]) * num(&e["pue"])
            ));
            assert!(close(
                num(&e["energy_usd_per_s"]),
                num(&e["facility_power_w"]) * num(&e["energy_price_usd_per_j"])
            ));
            assert!(close(
                num(&e["capital_usd_per_s"]),
                num(&p["nodes"]) * num(&e["capital_per_node_usd_per_s"])
            ));
            assert!(close(
                num(&e["total_usd_per_s"]),
                num(&e["capital_usd_per_s"]) + num(&e["energy_usd_per_s"])
            ));
            if p["unit"] == "requests" {
                serves += 1;
                check_serve_pool(p);
            }
            let r = &p["reliability"];
            if r.is_object() {
                goodputs += 1;
                let (d, m) = (num(&r["checkpoint_s"]), num(&r["pool_mtbf_s"]));
                assert!(close(num(&r["interval_s"]), (2.0 * d * m).sqrt()), "{r}");
                assert!(close(
                    num(&r["checkpoint_s"]),
                    num(&r["checkpoint_state_bytes"]) / num(&f["site"]["storage_bytes_per_s"])
                ));
                assert!(close(
                    num(&p["delivered_per_s"]),
                    num(&p["raw_per_s"]) * num(&r["goodput_fraction"])
                ));
            }
        }
    }
    assert!(goodputs >= 2, "training pools carry their goodput terms");
    assert_eq!(serves, 2, "the chat service's pool in each fleet");
    assert!(num(&f["pooled"]["cost_usd_per_s"]) <= num(&f["homogeneous"]["cost_usd_per_s"]));
    // Fleet front: cheapest member is the pooled fleet (it is within the
    // cap), members are cheapest first and none beats another.
    let members = f["pareto"]["fleets"]["members"]
        .as_array()
        .expect("members");
    assert!(!members.is_empty());
    assert_eq!(members[0]["systems"], f["pooled"]["systems"]);
    let pts: Vec<Vec<f64>> = members
        .iter()
        .map(|m| vec![num(&m["cost_usd_per_s"]), num(&m["power_w"])])
        .collect();
    for (i, a) in pts.iter().enumerate() {
        assert!(i == 0 || pts[i - 1][0] <= a[0]);
        assert!(!pts.iter().any(|b| beats(b, a, &[1.0, 1.0])));
    }
    // Per workload: the front is exactly the candidates no other beats.
    for (d, row) in f["candidates"].as_array().expect("rows").iter().enumerate() {
        let pools: Vec<(u64, Vec<f64>)> = row["pools"]
            .as_array()
            .expect("pools")
            .iter()
            .filter(|c| c["pool"].is_object())
            .map(|c| {
                let p = &c["pool"];
                (
                    c["system_index"].as_u64().expect("index"),
                    vec![
                        num(&p["economics"]["total_usd_per_s"]),
                        num(&p["delivered_per_s"]),
                        num(&p["economics"]["facility_power_w"]),
                    ],
                )
            })
            .collect();
        let want: Vec<u64> = pools
            .iter()
            .filter(|(_, a)| !pools.iter().any(|(_, b)| beats(b, a, &[1.0, -1.0, 1.0])))
            .map(|(i, _)| *i)
            .collect();
        let got: Vec<u64> = f["pareto"]["pools"][d]["systems"]
            .as_array()
            .expect("front")
            .iter()
            .filter_map(serde_json::Value::as_u64)
            .collect();
        assert_eq!(got, want, "front of demand {d}");
    }
}

/// A serve pool of a study's JSON: its plan is the serving planner's
/// `gantry.serve/1` document at the demanded rate per copy, whose best
/// deployment met the SLOs; the pool holds that deployment's devices on
/// whole nodes, busy at the simulated compute-busy share of the devices.
fn check_serve_pool(p: &serde_json::Value) {
    let num = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    let (plan, serve) = (&p["plan"], &p["serve"]);
    assert_eq!(plan["schema"], "gantry.serve/1", "{p}");
    let best = &plan["best"];
    assert_eq!(best["meets_slos"], true, "{best}");
    assert!(num(&best["attainment"]) >= num(&best["target_attainment"]));
    assert!(
        best["slos"]
            .as_array()
            .expect("slos")
            .iter()
            .all(|c| c["met"] == true)
    );
    assert_eq!(best["deployment"], serve["deployment"]);
    assert_eq!(best["devices"], serve["devices"]);
    assert_eq!(p["unit_devices"], serve["devices"]);
    // The demand split over the copies is what each simulated: the
    // drawn arrivals' rate over their span, exactly.
    let copies = num(&p["replicas"]);
    let share = num(&p["demand_per_s"]) / copies;
    assert!(
        (num(&best["rate_per_s"]) - share).abs() <= 1e-9 * share,
        "simulated {} req/s for a share of {share}",
        best["rate_per_s"]
    );
    assert!(close(num(&serve["rate_per_s"]), share));
    let per = num(&p["devices"]) / num(&p["nodes"]);
    let need = num(&serve["devices"]) * copies;
    assert!(close(num(&p["nodes"]), (need / per).ceil()), "{p}");
    assert!(close(
        num(&p["economics"]["busy"]),
        num(&serve["compute_busy"]) * need / num(&p["devices"])
    ));
    assert!(num(&serve["compute_busy"]) > 0.0 && num(&serve["compute_busy"]) <= 1.0);
}

/// Splits one CSV line, honouring quoted fields.
fn csv_fields(line: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// CSV: a header and one row per (fleet kind, pool) with as many fields;
/// Markdown: both fleet tables and the fronts; text: the fronts.
#[test]
fn example_fleet_csv_markdown_text() {
    let (code, out, err) = gantry(&["study", "examples/fleet_study.gantry", "--format", "csv"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Vec<String>> = out.lines().map(csv_fields).collect();
    assert_eq!(lines.len(), 1 + 2 * 6, "{out}");
    let header = &lines[0];
    assert_eq!(header[1], "fleet");
    for l in &lines[1..] {
        assert_eq!(l.len(), header.len(), "{l:?}");
        assert!(
            l[3].starts_with("RoCERail("),
            "system with its comma quoted: {l:?}"
        );
    }
    let kinds: Vec<&str> = lines[1..].iter().map(|l| l[1].as_str()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "pooled").count(), 6);
    assert_eq!(kinds.iter().filter(|k| **k == "homogeneous").count(), 6);
    // A serve pool names its deployment in the last cell, and has no
    // phase plan's parallelism.
    let chat = lines
        .iter()
        .find(|l| l[2] == "fleet_llama3_70b_chat")
        .expect("the serve pool's row");
    let last = header.len() - 1;
    assert_eq!(header[last], "deployment");
    assert!(
        chat[last].starts_with("colocated ") || chat[last].starts_with("disaggregated "),
        "{chat:?}"
    );
    assert_eq!(chat[8], "", "{chat:?}");
    let (code, md, err) = gantry(&[
        "study",
        "examples/fleet_study.gantry",
        "--format",
        "markdown",
    ]);
    assert_eq!(code, 0, "{err}");
    for want in [
        "### Pooled fleet",
        "### Homogeneous fleet",
        "| workload |",
        "### Pareto front of fleets",
        "Cost of homogeneity",
    ] {
        assert!(md.contains(want), "missing `{want}`:\n{md}");
    }
    let (code, text, err) = gantry(&["study", "examples/fleet_study.gantry"]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("Pareto front per workload") && text.contains("Pareto front of fleets"));
}

/// A weighted study in every format: one CSV row per (system, workload),
/// and each workload's front is the systems no other beats on (price,
/// throughput, power), recomputed here from the JSON cells.
#[test]
fn weighted_study_formats_and_fronts() {
    let file = "examples/codesign_study.gantry";
    let (code, out, err) = gantry(&["study", file, "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let st = &doc["studies"][0];
    assert_eq!(st["kind"], "weighted");
    let rows = st["weighted"]["rows"].as_array().expect("rows");
    let workloads = rows[0]["cells"].as_array().expect("cells").len();
    for (j, front) in st["weighted"]["pareto"]
        .as_array()
        .expect("fronts")
        .iter()
        .enumerate()
    {
        assert_eq!(
            front["objectives"][0], "price_usd_per_s",
            "the example's systems have prices"
        );
        let pts: Vec<Option<Vec<f64>>> = rows
            .iter()
            .map(|r| {
                let c = &r["cells"][j];
                Some(vec![
                    c["price_usd_per_s"].as_f64()?,
                    c["throughput_per_s"].as_f64()?,
                    c["power_w"].as_f64()?,
                ])
            })
            .collect();
        let want: Vec<u64> = (0..pts.len())
            .filter(|&i| {
                pts[i]
                    .as_ref()
                    .is_some_and(|a| !pts.iter().flatten().any(|b| beats(b, a, &[1.0, -1.0, 1.0])))
            })
            .map(|i| i as u64)
            .collect();
        let got: Vec<u64> = front["systems"]
            .as_array()
            .expect("systems")
            .iter()
            .filter_map(serde_json::Value::as_u64)
            .collect();
        assert_eq!(got, want, "front of workload {j}");
    }
    let (code, csv, err) = gantry(&["study", file, "--format", "csv"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Vec<String>> = csv.lines().map(csv_fields).collect();
    // One row per (system, workload) of every study in the file.
    let cells: usize = doc["studies"]
        .as_array()
        .expect("studies")
        .iter()
        .flat_map(|s| s["weighted"]["rows"].as_array().into_iter().flatten())
        .map(|r| r["cells"].as_array().map_or(0, Vec::len))
        .sum();
    assert!(cells >= rows.len() * workloads);
    assert_eq!(lines.len(), 1 + cells, "{csv}");
    assert!(lines.iter().all(|l| l.len() == lines[0].len()));
    let (code, md, err) = gantry(&["study", file, "--format", "markdown"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        md.contains("| system | devices | score |") && md.contains("### Pareto front per workload"),
        "{md}"
    );
}

/// A linear sweep (`lo..hi step s`) over device, node and fabric figures:
/// the points are the steps plus `hi`, and every point is planned on its
/// own hardware (throughput grows with the NVLink bandwidth at a fixed
/// HBM capacity and NIC rate).
#[test]
fn linear_sweep_points_are_planned_each() {
    let file = "tests/inputs/valid/sweep_linear.gantry";
    let (code, out, err) = gantry(&["study", file, "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let st = &doc["studies"][0];
    let names: Vec<&str> = st["systems"]
        .as_array()
        .expect("systems")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names.len(), 4 * 3 * 2, "{names:?}");
    for hbm in ["hbm=40 GB", "hbm=60 GB", "hbm=80 GB", "hbm=100 GB"] {
        assert_eq!(names.iter().filter(|n| n.contains(hbm)).count(), 6, "{hbm}");
    }
    for nv in ["nvlink=100 GB/s", "nvlink=250 GB/s", "nvlink=350 GB/s"] {
        assert_eq!(names.iter().filter(|n| n.contains(nv)).count(), 8, "{nv}");
    }
    let rows = st["weighted"]["rows"].as_array().expect("rows");
    let thr = |name: &str| {
        rows.iter()
            .find(|r| r["system"] == name)
            .and_then(|r| r["cells"][0]["throughput_per_s"].as_f64())
            .unwrap_or_else(|| panic!("{name}"))
    };
    for hbm in ["40 GB", "100 GB"] {
        let at = |nv: &str| thr(&format!("Fleet(hbm={hbm}, nvlink={nv}, nic=50 GB/s)"));
        assert!(at("100 GB/s") < at("250 GB/s") && at("250 GB/s") < at("350 GB/s"));
    }
}

/// `--plot DIR` writes the fleet study's Pareto scatter: valid XML (parsed
/// with roxmltree), one circle per candidate fleet, the front's in red,
/// and along the front cost rises as power falls (x grows, and so does y,
/// which points down in SVG).
#[test]
fn pareto_plot_is_svg_with_one_point_per_candidate() {
    let dir = std::env::temp_dir().join(format!("gantry-plot-{}", std::process::id()));
    let d = dir.to_string_lossy().into_owned();
    let (code, out, err) = gantry(&[
        "study",
        "examples/fleet_study.gantry",
        "--format",
        "json",
        "--plot",
        &d,
    ]);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let front = &doc["studies"][0]["fleet"]["pareto"]["fleets"];
    let members = front["members"].as_array().expect("members").len();
    let candidates = front["candidates"].as_u64().expect("candidates") as usize;
    let text = std::fs::read_to_string(dir.join("fleet-pareto.svg")).expect("plot written");
    let svg = roxmltree::Document::parse(&text).expect("valid XML");
    assert_eq!(svg.root_element().tag_name().name(), "svg");
    let circles: Vec<(f64, f64, String)> = svg
        .descendants()
        .filter(|n| n.has_tag_name("circle"))
        .map(|n| {
            let at = |k: &str| n.attribute(k).and_then(|v| v.parse().ok()).expect(k);
            (
                at("cx"),
                at("cy"),
                n.attribute("fill").unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(circles.len(), candidates, "{text}");
    let red: Vec<&(f64, f64, String)> = circles.iter().filter(|c| c.2 == "#D62728").collect();
    assert_eq!(red.len(), members);
    for w in red.windows(2) {
        assert!(w[0].0 <= w[1].0 && w[0].1 <= w[1].1, "{red:?}");
    }
    assert!(text.contains("TCO ($/h)"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--sensitivity`: every elasticity is `(T'/T - 1) / step` of the
/// figures the document holds, the binding resource is the largest one
/// at or above the floor, a system without host memory has no figure for
/// it, and the physics shows: doubling the NIC rate lowers the
/// elasticity to scale-out bandwidth, and a faster NVLink lowers the
/// elasticity to scale-up bandwidth.
#[test]
fn sensitivity_elasticities_follow_the_perturbed_plans() {
    let file = "tests/inputs/valid/sweep_linear.gantry";
    let (code, out, err) = gantry(&["study", file, "--sensitivity", "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let s = &doc["studies"][0]["sensitivity"];
    let step = s["step"].as_f64().expect("step");
    let floor = s["binding_floor"].as_f64().expect("floor");
    assert!((step - 0.1).abs() < 1e-12);
    let cells = s["cells"].as_array().expect("cells");
    assert_eq!(cells.len(), 24);
    let mut by_system = std::collections::BTreeMap::new();
    for c in cells {
        let base = c["base_throughput_per_s"].as_f64().expect("base");
        let mut best: Option<(&str, f64)> = None;
        let mut el = std::collections::BTreeMap::new();
        for r in c["resources"].as_array().expect("resources") {
            let name = r["resource"].as_str().expect("name");
            match (r["throughput_per_s"].as_f64(), r["elasticity"].as_f64()) {
                (Some(t), Some(e)) => {
                    assert!(close(e, (t / base - 1.0) / step), "{r}");
                    if e >= floor && best.is_none_or(|b| e > b.1) {
                        best = Some((name, e));
                    }
                    el.insert(name.to_string(), e);
                }
                (None, None) => assert!(r["reason"].is_string(), "{r}"),
                _ => panic!("half a figure: {r}"),
            }
        }
        assert!(!el.contains_key("host_memory"), "no host memory declared");
        assert_eq!(c["binding"].as_str(), best.map(|b| b.0), "{c}");
        by_system.insert(c["system"].as_str().expect("system").to_string(), el);
    }
    let e = |sys: &str, r: &str| by_system[sys][r];
    for hbm in ["40 GB", "100 GB"] {
        for nv in ["100 GB/s", "250 GB/s", "350 GB/s"] {
            let at = |nic: &str| format!("Fleet(hbm={hbm}, nvlink={nv}, nic={nic})");
            assert!(
                e(&at("50 GB/s"), "scale_out_bandwidth") < e(&at("25 GB/s"), "scale_out_bandwidth"),
                "{hbm} {nv}"
            );
        }
        let at = |nv: &str| format!("Fleet(hbm={hbm}, nvlink={nv}, nic=50 GB/s)");
        assert!(
            e(&at("350 GB/s"), "scale_up_bandwidth") < e(&at("100 GB/s"), "scale_up_bandwidth")
        );
    }
}

/// The cells run on rayon's pool: one thread and two give the same bytes
/// in every output form (with sensitivity, the most cells).
#[test]
fn parallel_study_output_is_byte_identical_to_serial() {
    for format in ["json", "csv"] {
        let run = |jobs: &str| {
            let (code, out, err) = gantry(&[
                "study",
                "examples/fleet_study.gantry",
                "--sensitivity",
                "--format",
                format,
                "--jobs",
                jobs,
            ]);
            assert_eq!(code, 0, "{err}");
            out
        };
        let serial = run("1");
        assert!(serial.contains("hbm_bandwidth"), "{format}: {serial}");
        assert_eq!(serial, run("2"), "{format}");
    }
}

/// The sensitivity bars and the radar are SVG: one bar per elasticity of
/// each workload's pooled cell (plus six legend swatches), one closed
/// polygon per workload (plus the legend's lines).
#[test]
fn sensitivity_plots_are_svg_bars_and_radar() {
    let dir = std::env::temp_dir().join(format!("gantry-sens-{}", std::process::id()));
    let d = dir.to_string_lossy().into_owned();
    let (code, out, err) = gantry(&[
        "study",
        "examples/fleet_study.gantry",
        "--sensitivity",
        "--format",
        "json",
        "--plot",
        &d,
    ]);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let st = &doc["studies"][0];
    // The pooled fleet's (workload, system) cells and their elasticities.
    let pools = st["fleet"]["pooled"]["pools"].as_array().expect("pools");
    let cells = st["sensitivity"]["cells"].as_array().expect("cells");
    let mut figures = 0;
    for p in pools {
        let c = cells
            .iter()
            .find(|c| c["workload"] == p["workload"] && c["system"] == p["system"])
            .expect("a cell per pool");
        figures += c["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .filter(|r| r["elasticity"].is_number())
            .count();
    }
    let colors = [
        "#1F77B4", "#FF7F0E", "#2CA02C", "#D62728", "#9467BD", "#8C564B",
    ];
    let text = std::fs::read_to_string(dir.join("fleet-sensitivity.svg")).expect("bars");
    let svg = roxmltree::Document::parse(&text).expect("valid XML");
    let bars = svg
        .descendants()
        .filter(|n| n.has_tag_name("rect") && colors.contains(&n.attribute("fill").unwrap_or("")))
        .count();
    assert_eq!(bars, figures + colors.len(), "{text}");
    let text = std::fs::read_to_string(dir.join("fleet-profile.svg")).expect("radar");
    let svg = roxmltree::Document::parse(&text).expect("valid XML");
    let closed = svg
        .descendants()
        .filter(|n| n.has_tag_name("polyline"))
        .filter_map(|n| n.attribute("points"))
        .filter(|p| {
            let pts: Vec<&str> = p.split_whitespace().collect();
            pts.len() == 7 && pts.first() == pts.last()
        })
        .count();
    // Four grey rings are closed hexagons too.
    assert_eq!(closed, pools.len() + 4, "{text}");
    for p in pools {
        assert!(text.contains(p["workload"].as_str().expect("name")));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--report DIR`: one self-contained page. It parses (it is well-formed
/// XML as well as HTML5), fetches nothing (no `src`/`href` outside the
/// page, no script, no stylesheet link), inlines every plot `--plot`
/// writes as an `<svg>`, and its tables hold every pool of both fleets and
/// a sensitivity row per (system, workload).
#[test]
fn html_report_is_one_self_contained_page() {
    let dir = std::env::temp_dir().join(format!("gantry-report-{}", std::process::id()));
    let d = dir.to_string_lossy().into_owned();
    let plots = dir.join("plots");
    let p = plots.to_string_lossy().into_owned();
    let (code, _, err) = gantry(&[
        "study",
        "examples/fleet_study.gantry",
        "--sensitivity",
        "--report",
        &d,
        "--plot",
        &p,
        "--jobs",
        "2",
    ]);
    assert_eq!(code, 0, "{err}");
    let files: Vec<_> = std::fs::read_dir(&dir).expect("dir").flatten().collect();
    assert_eq!(files.len(), 2, "report.html and plots/ only");
    let page = std::fs::read_to_string(dir.join("report.html")).expect("report");
    let doc = roxmltree::Document::parse_with_options(
        &page,
        roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        },
    )
    .expect("well-formed");
    assert_eq!(doc.root_element().tag_name().name(), "html");
    for n in doc.descendants().filter(|n| n.is_element()) {
        let tag = n.tag_name().name();
        assert!(
            !["script", "link", "img", "iframe", "object"].contains(&tag),
            "{tag}"
        );
        for a in ["src", "href"] {
            assert!(
                n.attribute(a).is_none_or(|v| v.starts_with('#')),
                "{tag} {a}"
            );
        }
    }
    let svgs = doc.descendants().filter(|n| n.has_tag_name("svg")).count();
    let written = std::fs::read_dir(&plots).expect("plots").count();
    assert_eq!(svgs, written, "one inline svg per plot");
    assert_eq!(written, 3);
    // Table cells' text, to find pools and sensitivity rows in.
    let rows: Vec<Vec<String>> = doc
        .descendants()
        .filter(|n| n.has_tag_name("tr"))
        .map(|r| {
            r.children()
                .filter(|c| c.has_tag_name("td"))
                .map(|c| {
                    c.descendants()
                        .filter(|t| t.is_text())
                        .filter_map(|t| t.text())
                        .collect::<String>()
                })
                .collect()
        })
        .collect();
    let (_, out, _) = gantry(&["study", "examples/fleet_study.gantry", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let st = &v["studies"][0];
    for kind in ["pooled", "homogeneous"] {
        for pool in st["fleet"][kind]["pools"].as_array().expect("pools") {
            let w = pool["workload"].as_str().expect("workload");
            assert!(rows.iter().any(|r| r.iter().any(|c| c == w)), "{w}");
        }
    }
    let systems = st["systems"].as_array().expect("systems").len();
    let workloads = 6;
    let sens = rows.iter().filter(|r| r.len() == 9).count();
    assert_eq!(sens, systems * workloads, "sensitivity rows");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--plot DIR` on a weighted study writes its per-system breakdown: valid
/// XML, one bar per system (top to bottom in rank order) made of one
/// segment per workload, each bar as long as the system's weighted score
/// in the JSON (the best system's bar is the reference).
#[test]
fn per_system_breakdown_bars_are_the_weighted_scores() {
    let dir = std::env::temp_dir().join(format!("gantry-bars-{}", std::process::id()));
    let d = dir.to_string_lossy().into_owned();
    let (code, out, err) = gantry(&[
        "study",
        "examples/codesign_study.gantry",
        "--study",
        "fleet_size",
        "--format",
        "json",
        "--plot",
        &d,
    ]);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let rows = doc["studies"][0]["weighted"]["rows"]
        .as_array()
        .expect("rows");
    let scores: Vec<f64> = rows
        .iter()
        .map(|r| r["score"].as_f64().expect("score"))
        .collect();
    let workloads = rows[0]["cells"].as_array().expect("cells").len();
    let text = std::fs::read_to_string(dir.join("fleet_size-systems.svg")).expect("plot written");
    let svg = roxmltree::Document::parse(&text).expect("valid XML");
    // Bars: the filled rectangles below the caption, grouped by their top.
    let mut bars: std::collections::BTreeMap<i64, (f64, usize)> = Default::default();
    for n in svg.descendants().filter(|n| n.has_tag_name("rect")) {
        let at = |k: &str| {
            n.attribute(k)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // The workloads' colours (src/plot.rs), not the background, the
        // legend's box or its swatches (under 20 px high).
        let fill = n.attribute("fill").unwrap_or("");
        let workload_colour = [
            "#1F77B4", "#FF7F0E", "#2CA02C", "#9467BD", "#8C564B", "#E377C2",
        ]
        .contains(&fill);
        if !workload_colour || at("height") < 20.0 {
            continue;
        }
        let e = bars.entry(at("y") as i64).or_default();
        e.0 += at("width");
        e.1 += 1;
    }
    assert_eq!(bars.len(), scores.len(), "{text}");
    let lengths: Vec<f64> = bars.values().map(|b| b.0).collect();
    for (b, _) in bars.values().map(|b| (b.1, ())) {
        assert!(b <= workloads, "a bar has more segments than workloads");
    }
    for (k, (len, score)) in lengths.iter().zip(&scores).enumerate() {
        let want = lengths[0] * score / scores[0];
        // Segment ends are rounded to pixels: one per segment.
        assert!(
            (len - want).abs() <= workloads as f64 + 0.5,
            "bar {k}: {len} px against {want} px for score {score}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

//! Fleet studies end to end: the example's answer is consistent (pooled
//! never dearer than homogeneous, every pool meets its demand), a power cap
//! no fleet fits is `C025` naming the cap and the shortfall, and bad
//! `site`/`demand`/ownership input is a diagnostic.

use std::process::Command;

fn gantry(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(args)
        .output()
        .expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

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

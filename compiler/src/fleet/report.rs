//! The fleet answer as text: the pooled fleet next to the homogeneous one,
//! each pool with the terms its cost and goodput come from.
//!
//! Text only here; every figure printed is a field of [`Pool`] or
//! [`Fleet`], so the report adds no arithmetic beyond unit conversion.

use std::fmt::Write as _;

use super::front::Fronts;
use super::{Answer, Fleet, Pool, Sizing};
use gantry_lang::units::format_number as num;

const HOUR: f64 = 3600.0;
const YEAR: f64 = 365.25 * 86_400.0;

/// How a pool is made: its plan's parallelism, or its serving deployment.
fn made_of(p: &Pool) -> String {
    match &p.plan {
        Sizing::Phase(e) => {
            let pt = &e.point;
            format!(
                "plan on {} devices: tp {} pp {} dp {}",
                e.devices, pt.tp, pt.pp, pt.dp
            )
        }
        Sizing::Serve(v) => format!("deployment: {}", v.deployment),
    }
}

fn pool_lines(s: &mut String, p: &Pool) {
    let _ = writeln!(
        s,
        "  {} on {}: {} nodes, {} devices; {} x {} devices ({})",
        p.workload,
        p.system,
        p.tco.nodes,
        p.tco.devices,
        p.replicas,
        p.unit_devices,
        made_of(p)
    );
    let _ = writeln!(
        s,
        "    demand {} {u}/s; raw {} {u}/s; delivered {} {u}/s",
        num(p.demand),
        num(p.raw),
        num(p.delivered),
        u = p.unit
    );
    if let Sizing::Serve(v) = &p.plan {
        let slos: Vec<String> = v
            .slos
            .iter()
            .map(|(name, target, got)| {
                format!(
                    "{name} {} of {}",
                    crate::serve::report::ms(*got),
                    crate::serve::report::ms(*target)
                )
            })
            .collect();
        let _ = writeln!(
            s,
            "    SLOs met at {} req/s per deployment (simulated): {:.2}% of requests meet every SLO (target {:.2}%); {}",
            num(v.rate),
            v.attainment * 100.0,
            v.target_attainment * 100.0,
            slos.join(", ")
        );
    }
    if let Some(g) = &p.goodput {
        let _ = writeln!(
            s,
            "    goodput {:.2}% of raw: pool MTBF {} h, checkpoint {} GB in {} s every {} min (Young), restart {} min",
            g.fraction * 100.0,
            num(g.mtbf / HOUR),
            num(g.state / 1e9),
            num(g.checkpoint),
            num(g.interval / 60.0),
            num(g.restart / 60.0)
        );
    }
    let t = &p.tco;
    let _ = writeln!(
        s,
        "    compute-busy {:.1}%; power {} kW at that load ({} kW provisioned){}",
        t.busy * 100.0,
        num(t.facility_power / 1e3),
        num(t.provisioned_power / 1e3),
        t.racks.map_or(String::new(), |r| format!("; {r} racks"))
    );
    let _ = writeln!(
        s,
        "    TCO ${}/h = capital ${}/h + energy ${}/h; ${} per million {}",
        num(t.total * HOUR),
        num(t.capital * HOUR),
        num(t.energy * HOUR),
        num(p.cost_per_unit * 1e6),
        p.unit
    );
}

fn fleet_lines(s: &mut String, title: &str, f: &Fleet) {
    let _ = writeln!(
        s,
        "{title}: TCO ${}/h (${}M/yr), power {} MW at load, {} MW provisioned",
        num(f.cost * HOUR),
        num(f.cost * YEAR / 1e6),
        num(f.power / 1e6),
        num(f.provisioned / 1e6)
    );
    for p in &f.pools {
        pool_lines(s, p);
    }
}

/// The fleet answer of a study.
pub fn text(a: &Answer) -> String {
    let mut s = String::new();
    fleet_lines(&mut s, "pooled fleet", &a.pooled);
    match &a.homogeneous {
        Some(h) => {
            fleet_lines(&mut s, "homogeneous fleet", h);
            let extra = h.cost - a.pooled.cost;
            let _ = writeln!(
                s,
                "cost of homogeneity: ${}/h (${}M/yr, {:.1}% over the pooled fleet)",
                num(extra * HOUR),
                num(extra * YEAR / 1e6),
                over_pooled(a, extra)
            );
        }
        None => {
            let _ = writeln!(
                s,
                "homogeneous fleet: none (no single system meets every demand within the site)"
            );
        }
    }
    s
}

/// The system name of pool (`demand`, `system`) in the table.
fn system_name(a: &Answer, d: usize, s: usize) -> &str {
    a.table
        .get(d)
        .and_then(|r| r.get(s))
        .and_then(|p| p.as_ref().ok())
        .map_or("?", |p| p.system.as_str())
}

/// The Pareto fronts ([`super::front`]): per workload the pools on the
/// (TCO, delivered, power) front, and the fleets on the (TCO, power)
/// front. Markdown as a bulleted list and a table, text as indented lines.
pub fn fronts_text(a: &Answer, f: &Fronts, markdown: bool) -> String {
    let mut s = String::new();
    let (h, bullet) = if markdown {
        ("\n### ", "- ")
    } else {
        ("", "  ")
    };
    let _ = writeln!(
        s,
        "{h}Pareto front per workload (TCO, delivered throughput, power at load){}",
        if markdown { "\n" } else { "" }
    );
    for (d, members) in f.pools.iter().enumerate() {
        let name = a.table[d]
            .iter()
            .find_map(|p| p.as_ref().ok())
            .map_or("?", |p| p.workload.as_str());
        let systems: Vec<String> = members
            .iter()
            .filter_map(|&i| a.table[d][i].as_ref().ok())
            .map(|p| {
                format!(
                    "{} (${}/h, {} {}/s, {} kW)",
                    p.system,
                    num(p.tco.total * HOUR),
                    num(p.delivered),
                    p.unit,
                    num(p.tco.facility_power / 1e3)
                )
            })
            .collect();
        let _ = writeln!(s, "{bullet}{name}: {}", systems.join("; "));
    }
    let _ = writeln!(
        s,
        "{h}Pareto front of fleets (TCO, power at load): {} of {} candidates{}",
        f.fleets.len(),
        f.candidates,
        if f.truncated { " (truncated)" } else { "" }
    );
    if markdown {
        s.push_str("\n| TCO $/h | power MW | provisioned MW | within cap | systems |\n|---:|---:|---:|---|---|\n");
    }
    for m in &f.fleets {
        let systems: Vec<&str> = m
            .choice
            .iter()
            .enumerate()
            .map(|(d, &i)| system_name(a, d, i))
            .collect();
        let cells = [
            num(m.cost * HOUR),
            num(m.power / 1e6),
            num(m.provisioned / 1e6),
            if m.within_cap { "yes" } else { "no" }.to_string(),
            systems.join(", "),
        ];
        if markdown {
            let _ = writeln!(s, "| {} |", cells.join(" | "));
        } else {
            let _ = writeln!(
                s,
                "  ${}/h, {} MW at load, {} MW provisioned, within cap: {}; {}",
                cells[0], cells[1], cells[2], cells[3], cells[4]
            );
        }
    }
    s
}

fn fleet_table(s: &mut String, title: &str, f: &Fleet) {
    let _ = writeln!(
        s,
        "\n### {title}: TCO ${}/h (${}M/yr), {} MW at load, {} MW provisioned\n",
        num(f.cost * HOUR),
        num(f.cost * YEAR / 1e6),
        num(f.power / 1e6),
        num(f.provisioned / 1e6)
    );
    s.push_str("| workload | system | nodes | devices | replicas | plan or deployment | demand /s | delivered /s | goodput | busy | power kW | TCO $/h | capital $/h | energy $/h |\n");
    s.push_str("|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for p in &f.pools {
        let t = &p.tco;
        let made = match &p.plan {
            Sizing::Phase(e) => format!("tp {}, pp {}, dp {}", e.point.tp, e.point.pp, e.point.dp),
            Sizing::Serve(v) => v.deployment.clone(),
        };
        let goodput = match (&p.plan, &p.goodput) {
            (_, Some(g)) => format!("{:.2}%", g.fraction * 100.0),
            (Sizing::Serve(v), None) => format!("{:.2}% meet SLOs", v.attainment * 100.0),
            _ => "-".to_string(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} x {} | {} | {} {u} | {} {u} | {} | {:.1}% | {} | {} | {} | {} |",
            p.workload,
            p.system,
            t.nodes,
            t.devices,
            p.replicas,
            p.unit_devices,
            made,
            num(p.demand),
            num(p.delivered),
            goodput,
            t.busy * 100.0,
            num(t.facility_power / 1e3),
            num(t.total * HOUR),
            num(t.capital * HOUR),
            num(t.energy * HOUR),
            u = p.unit
        );
    }
}

/// The fleet answer as Markdown: one table per fleet, the cost of
/// homogeneity and the fronts.
pub fn markdown(study: &str, a: &Answer, f: &Fronts) -> String {
    let mut s = format!("## Study `{study}`: the cheapest fleet meeting the demand\n");
    fleet_table(&mut s, "Pooled fleet", &a.pooled);
    match &a.homogeneous {
        Some(h) => {
            fleet_table(&mut s, "Homogeneous fleet", h);
            let extra = h.cost - a.pooled.cost;
            let _ = writeln!(
                s,
                "\nCost of homogeneity: ${}/h (${}M/yr, {:.1}% over the pooled fleet).",
                num(extra * HOUR),
                num(extra * YEAR / 1e6),
                over_pooled(a, extra)
            );
        }
        None => s.push_str(
            "\nHomogeneous fleet: none (no single system meets every demand within the site).\n",
        ),
    }
    s.push_str(&fronts_text(a, f, true));
    s
}

/// `extra` (the homogeneous fleet's cost above the pooled one) as a
/// percentage of the pooled fleet's cost; 0 for a free pooled fleet.
fn over_pooled(a: &Answer, extra: f64) -> f64 {
    if a.pooled.cost > 0.0 {
        extra / a.pooled.cost * 100.0
    } else {
        0.0
    }
}

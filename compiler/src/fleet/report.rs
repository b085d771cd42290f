//! The fleet answer as text: the pooled fleet next to the homogeneous one,
//! each pool with the terms its cost and goodput come from.
//!
//! Text only here; every figure printed is a field of [`Pool`] or
//! [`Fleet`], so the report adds no arithmetic beyond unit conversion.

use std::fmt::Write as _;

use super::{Answer, Fleet, Pool};
use gantry_lang::units::format_number as num;

const HOUR: f64 = 3600.0;
const YEAR: f64 = 365.25 * 86_400.0;

fn pool_lines(s: &mut String, p: &Pool) {
    let pt = &p.plan.point;
    let _ = writeln!(
        s,
        "  {} on {}: {} nodes, {} devices; {} x {} devices (plan on {} devices: tp {} pp {} dp {})",
        p.workload,
        p.system,
        p.tco.nodes,
        p.tco.devices,
        p.replicas,
        p.unit_devices,
        p.plan.devices,
        pt.tp,
        pt.pp,
        pt.dp
    );
    let _ = writeln!(
        s,
        "    demand {} {u}/s; raw {} {u}/s; delivered {} {u}/s",
        num(p.demand),
        num(p.raw),
        num(p.delivered),
        u = p.unit
    );
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
                if a.pooled.cost > 0.0 {
                    extra / a.pooled.cost * 100.0
                } else {
                    0.0
                }
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

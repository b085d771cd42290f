//! SVG plots of study results, drawn with `plotters` (SVG backend only:
//! no fonts are rasterised, text is SVG `<text>`).
//!
//! Four plots. A weighted study's per-system breakdown
//! ([`per_system_svg`]: one bar per system, segments per workload). A
//! fleet study's Pareto scatter, the candidate fleets
//! (`fleet::front::FleetFront::points`) at (TCO in $/h, facility
//! power at load in kW), the non-dominated ones in red joined by a line
//! in cost order, the rest in grey. The plot is rendered into a string
//! here; the CLI (`--plot DIR`) writes it to a file. Nothing is computed
//! here: the points are [`Fronts`]' own.
//!
//! The sensitivity bars and the demand-profile radar draw
//! [`Sensitivity`] cells (`gantry_compiler::sensitivity`): one group of
//! six bars (one per resource, the elasticity) per workload, and one
//! polygon per workload on six spokes. The radar is drawn on a plain
//! cartesian chart (plotters has no polar one): spoke `j` points at angle
//! `90° - 60° j`, a workload's vertex on it sits at its elasticity over
//! that workload's own largest one (negative ones at the centre), so
//! each polygon is the workload's demand profile, its shape, whatever its
//! scale; the legend gives each workload's largest elasticity (the outer
//! ring) and the bars give the absolute figures.

use gantry_compiler::fleet::front::Fronts;
use gantry_compiler::sensitivity::{Resource, Sensitivity};
use plotters::prelude::*;

/// Hours per second and kilowatts per watt: the axes' units.
const HOUR: f64 = 3600.0;
const KW: f64 = 1e-3;

/// The colour of front members; tests count circles by it.
pub const FRONT_COLOR: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const OTHER_COLOR: RGBColor = RGBColor(0x99, 0x99, 0x99);

/// An axis range around `xs` with 5% margins (a single value gets a
/// width of its own), finite even for empty input.
fn span(xs: impl Iterator<Item = f64> + Clone) -> std::ops::Range<f64> {
    let lo = xs.clone().fold(f64::INFINITY, f64::min);
    let hi = xs.fold(f64::NEG_INFINITY, f64::max);
    if !(lo.is_finite() && hi.is_finite()) {
        return 0.0..1.0;
    }
    let pad = if hi > lo {
        (hi - lo) * 0.05
    } else {
        lo.abs().max(1.0) * 0.05
    };
    (lo - pad)..(hi + pad)
}

/// The Pareto scatter of a fleet study as an SVG document.
pub fn fleet_pareto_svg(study: &str, f: &Fronts) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let pts: Vec<(f64, f64)> = f.points.iter().map(|&(c, p)| (c * HOUR, p * KW)).collect();
        let (xr, yr) = (span(pts.iter().map(|p| p.0)), span(pts.iter().map(|p| p.1)));
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{study}: candidate fleets, Pareto front in red"),
                ("sans-serif", 20),
            )
            .margin(20)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(xr, yr)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("TCO ($/h)")
            .y_desc("facility power at load (kW)")
            .draw()
            .map_err(|e| e.to_string())?;
        let front: Vec<(f64, f64)> = f
            .fleets
            .iter()
            .map(|m| (m.cost * HOUR, m.power * KW))
            .collect();
        let on_front = |p: &(f64, f64)| front.iter().any(|q| q == p);
        chart
            .draw_series(
                pts.iter()
                    .filter(|p| !on_front(p))
                    .map(|&p| Circle::new(p, 4, OTHER_COLOR.filled())),
            )
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(LineSeries::new(front.iter().copied(), FRONT_COLOR))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(
                front
                    .iter()
                    .map(|&p| Circle::new(p, 5, FRONT_COLOR.filled())),
            )
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// The colour of each resource's bars, in [`Resource::ALL`] order.
pub const RESOURCE_COLORS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

/// Sensitivity bars: for each labelled cell, six bars, the elasticity of
/// its throughput to each resource (absent resources draw no bar). Bars
/// are `<rect>`s filled with [`RESOURCE_COLORS`].
pub fn sensitivity_svg(title: &str, cells: &[(String, &Sensitivity)]) -> Result<String, String> {
    let mut svg = String::new();
    {
        let width = (220 + 150 * cells.len() as u32).max(700);
        let root = SVGBackend::with_string(&mut svg, (width, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let es = cells
            .iter()
            .flat_map(|(_, s)| Resource::ALL.iter().filter_map(|&r| s.elasticity(r)));
        let hi = es.clone().fold(0.0f64, f64::max).max(0.1) * 1.1;
        let lo = es.fold(0.0f64, f64::min) * 1.1;
        let n = cells.len().max(1) as f64;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(20)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..n, lo..hi)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc("elasticity of throughput to +10%")
            .draw()
            .map_err(|e| e.to_string())?;
        let slot = 1.0 / (Resource::ALL.len() as f64 + 2.0);
        for (j, (&r, color)) in Resource::ALL.iter().zip(RESOURCE_COLORS).enumerate() {
            let bars: Vec<_> = cells
                .iter()
                .enumerate()
                .filter_map(|(k, (_, s))| {
                    let e = s.elasticity(r)?;
                    let x0 = k as f64 + slot * (j as f64 + 1.0);
                    Some(Rectangle::new([(x0, 0.0), (x0 + slot, e)], color.filled()))
                })
                .collect();
            chart
                .draw_series(bars)
                .map_err(|e| e.to_string())?
                .label(r.label())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
        }
        chart
            .draw_series(cells.iter().enumerate().map(|(k, (name, _))| {
                Text::new(
                    name.clone(),
                    (k as f64 + slot, lo),
                    ("sans-serif", 13).into_font(),
                )
            }))
            .map_err(|e| e.to_string())?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.9))
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// The point of spoke `j` at radius `r` (spoke 0 up, then clockwise).
fn spoke(j: usize, r: f64) -> (f64, f64) {
    let a =
        std::f64::consts::FRAC_PI_2 - j as f64 * std::f64::consts::TAU / Resource::ALL.len() as f64;
    (r * a.cos(), r * a.sin())
}

/// The demand-profile radar: one closed polygon (a `<polyline>` of seven
/// points) per labelled cell on six spokes, one per resource.
pub fn profile_svg(title: &str, cells: &[(String, &Sensitivity)]) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1000, 640)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{title} (outer ring: each workload's largest elasticity)"),
                ("sans-serif", 16),
            )
            .margin(20)
            .build_cartesian_2d(-1.5..3.3, -1.35..1.35)
            .map_err(|e| e.to_string())?;
        let grey = RGBColor(0xcc, 0xcc, 0xcc);
        for ring in [0.25, 0.5, 0.75, 1.0] {
            let pts: Vec<(f64, f64)> = (0..=Resource::ALL.len()).map(|j| spoke(j, ring)).collect();
            chart
                .draw_series(std::iter::once(PathElement::new(pts, grey)))
                .map_err(|e| e.to_string())?;
        }
        for (j, r) in Resource::ALL.iter().enumerate() {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(0.0, 0.0), spoke(j, 1.0)],
                    grey,
                )))
                .map_err(|e| e.to_string())?;
            let (x, y) = spoke(j, 1.12);
            chart
                .draw_series(std::iter::once(Text::new(
                    r.label(),
                    (x - 0.12, y + 0.03),
                    ("sans-serif", 14).into_font(),
                )))
                .map_err(|e| e.to_string())?;
        }
        for (k, (name, s)) in cells.iter().enumerate() {
            let color = Palette99::pick(k).to_rgba();
            let top = Resource::ALL
                .iter()
                .filter_map(|&r| s.elasticity(r))
                .fold(0.0f64, f64::max);
            let scale = if top > 0.0 { top } else { 1.0 };
            let mut pts: Vec<(f64, f64)> = Resource::ALL
                .iter()
                .enumerate()
                .map(|(j, &r)| spoke(j, s.elasticity(r).unwrap_or(0.0).max(0.0) / scale))
                .collect();
            pts.push(pts[0]);
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(format!("{name} (outer ring {top:.2})"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.9))
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// Workload colours of the per-system breakdown (cycled).
const WORKLOAD_COLORS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
];

/// A weighted study's per-system breakdown: one horizontal bar per system
/// (best score on top), split into each workload's share of the score
/// (`weight x relative`, [`gantry_compiler::study::Row`]), so the bar's
/// length is the system's weighted score and its segments say which
/// workload makes it. Nothing is computed here but the stacking.
pub fn per_system_svg(title: &str, rows: &[gantry_compiler::study::Row]) -> Result<String, String> {
    let mut svg = String::new();
    {
        let n = rows.len().max(1);
        let height = (140 + 26 * n as u32).max(320);
        let root = SVGBackend::with_string(&mut svg, (1100, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(20)
            .x_label_area_size(40)
            .y_label_area_size(10)
            .build_cartesian_2d(0.0..1.0f64, 0.0..n as f64)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .x_desc("weighted score (1 = best on every workload)")
            .draw()
            .map_err(|e| e.to_string())?;
        let workloads: Vec<&str> = rows
            .first()
            .map(|r| r.cells.iter().map(|c| c.workload.as_str()).collect())
            .unwrap_or_default();
        for (j, w) in workloads.iter().enumerate() {
            let color = WORKLOAD_COLORS[j % WORKLOAD_COLORS.len()];
            let bars: Vec<_> = rows
                .iter()
                .enumerate()
                .filter_map(|(k, r)| {
                    let before: f64 = r.cells[..j].iter().map(|c| c.weight * c.relative).sum();
                    let c = r.cells.get(j)?;
                    let y = (n - 1 - k) as f64;
                    Some(Rectangle::new(
                        [
                            (before, y + 0.15),
                            (before + c.weight * c.relative, y + 0.85),
                        ],
                        color.filled(),
                    ))
                })
                .collect();
            chart
                .draw_series(bars)
                .map_err(|e| e.to_string())?
                .label(*w)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
        }
        chart
            .draw_series(rows.iter().enumerate().map(|(k, r)| {
                Text::new(
                    format!("{}  {:.3}", r.system, r.score),
                    (0.01, (n - 1 - k) as f64 + 0.62),
                    ("sans-serif", 12).into_font().color(&WHITE),
                )
            }))
            .map_err(|e| e.to_string())?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.9))
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

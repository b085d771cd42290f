//! SVG plots of study results, drawn with `plotters` (SVG backend only:
//! no fonts are rasterised, text is SVG `<text>`).
//!
//! One plot today: a fleet study's Pareto scatter, the candidate fleets
//! (`fleet::front::FleetFront::points`) at (TCO in $/h, facility
//! power at load in kW), the non-dominated ones in red joined by a line
//! in cost order, the rest in grey. The plot is rendered into a string
//! here; the CLI (`--plot DIR`) writes it to a file. Nothing is computed
//! here: the points are [`Fronts`]' own.

use gantry_compiler::fleet::front::Fronts;
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

//! What fleet studies read beyond the cost model: ownership of devices and
//! nodes (`purchase`, `amortization`, `idle_power`, `mtbf`), a study's
//! `site` and its `demand`.
//!
//! Kept apart from `decls.rs` because these items are all optional and
//! only a study with `demand` uses them; each is read as a hardware figure
//! (a finite quantity in its documented range, `L046` otherwise) so a
//! zero price or an idle power above full load is an error with a span,
//! never a silently odd fleet.

use std::collections::BTreeMap;

use crate::ast::Item;
use crate::check::Checker;
use crate::check::decls::FigureRange;
use crate::check::eval::Env;
use crate::check::value::Value;
use crate::diagnostic::{Code, Diagnostic};
use crate::program::{Arrivals, Demand, DemandKind, Ownership, Site, Workload};
use crate::span::Span;
use crate::units::{Dim, Quantity};

/// A purchase price: above zero, at most $1e9 (a whole node costs a few
/// hundred thousand dollars).
pub const MAX_PURCHASE: FigureRange = FigureRange {
    positive: true,
    min: 0.0,
    max: 1e9,
};
/// An amortisation period, a mean time between failures or a demand's
/// deadline (`within`): at least 1 s (real ones are years, thousands of
/// hours and days; at 1e-300 s an amortisation made the capital cost
/// infinite, C016, and a deadline the demanded rate infinite, C025 "short
/// of inf tokens/s"), at most 1e12 s (about 31,700 years).
pub const MAX_PERIOD: FigureRange = FigureRange {
    positive: true,
    min: 1.0,
    max: 1e12,
};
/// A site's power cap or a rack's power: above zero, at most 1e10 W (10 GW).
pub const MAX_SITE_POWER: FigureRange = FigureRange {
    positive: true,
    min: 0.0,
    max: 1e10,
};
/// An energy price in $/J: above zero, at most $1000/kWh.
pub const MAX_ENERGY_PRICE: FigureRange = FigureRange {
    positive: true,
    min: 0.0,
    max: 1000.0 / 3.6e6,
};
/// Restart time after a failure: zero or more, at most one day.
pub const MAX_RESTART: FigureRange = FigureRange {
    positive: false,
    min: 0.0,
    max: 86_400.0,
};
/// A demanded amount (`tokens`, `samples`): at least 1 (a fraction of a
/// token is no demand; at 1e-300 tokens the cost per million tokens came
/// out as $1.7e308), at most 1e24.
pub const MAX_DEMAND: FigureRange = FigureRange {
    positive: true,
    min: 1.0,
    max: 1e24,
};
/// A demanded rate (`tokens_per_s`, `samples_per_s`, `requests_per_s`):
/// at least 1e-6 per second (one every 11.6 days; the floor of a `serve`
/// workload's arrival rate, `check::serve::MIN_RATE`; at 1e-300 per second
/// the cost per million tokens or requests came out as $1.4e303), at most
/// 1e24.
pub const MAX_DEMAND_RATE: FigureRange = FigureRange {
    positive: true,
    min: super::serve::MIN_RATE,
    max: 1e24,
};

/// A checkpoint store's bandwidth, in B/s: at least 1 MB/s (below it a
/// checkpoint of any real model takes days, and a tiny value made the
/// checkpoint time infinite and the goodput NaN), at most 1e18 (1 EB/s).
pub const MIN_STORAGE: FigureRange = FigureRange {
    positive: true,
    min: 1e6,
    max: 1e18,
};

/// The fields of a study's `site` record: name, dimension, range, example,
/// required.
const SITE_FIELDS: &[(&str, Dim, FigureRange, &str, bool)] = &[
    (
        "pue",
        Dim::NONE,
        FigureRange {
            positive: true,
            min: 0.0,
            max: 10.0,
        },
        "pue = 1.2",
        true,
    ),
    (
        "energy",
        Dim::ENERGY_PRICE,
        MAX_ENERGY_PRICE,
        "energy = $0.08/kWh",
        true,
    ),
    (
        "power_cap",
        Dim::POWER,
        MAX_SITE_POWER,
        "power_cap = 30 MW",
        false,
    ),
    (
        "rack_power",
        Dim::POWER,
        MAX_SITE_POWER,
        "rack_power = 40 kW",
        false,
    ),
    (
        "storage",
        Dim::BANDWIDTH,
        MIN_STORAGE,
        "storage = 1 TB/s",
        false,
    ),
    ("restart", Dim::TIME, MAX_RESTART, "restart = 10 min", false),
];

impl Checker {
    /// The ownership items of a device or node. `full_power` is the
    /// declared full-load power the idle power may not exceed.
    pub(crate) fn ownership(
        &mut self,
        g: &BTreeMap<&'static str, Vec<&Item>>,
        env: &mut Env,
        full_power: f64,
        decl_span: Span,
    ) -> Ownership {
        let mut own = Ownership::default();
        let mut read = |me: &mut Checker, key: &str, dim: Dim, range: FigureRange, ex: &str| {
            let it = g.get(key).and_then(|v| v.first())?;
            let v = me.eval(&it.value, env);
            me.figure(&v, it.value.span, (dim, range), &format!("`{key}`"), ex)
                .map(|x| (x, it.value.span))
        };
        own.purchase = read(
            self,
            "purchase",
            Dim::MONEY,
            MAX_PURCHASE,
            "purchase $30000",
        )
        .map(|x| x.0);
        own.amortization = read(
            self,
            "amortization",
            Dim::TIME,
            MAX_PERIOD,
            "amortization 4 yr",
        )
        .map(|x| x.0);
        own.mtbf = read(self, "mtbf", Dim::TIME, MAX_PERIOD, "mtbf 80000 h").map(|x| x.0);
        let idle_range = FigureRange {
            positive: false,
            min: 0.0,
            max: 1e6,
        };
        if let Some((p, span)) = read(
            self,
            "idle_power",
            Dim::POWER,
            idle_range,
            "idle_power 90 W",
        ) {
            if p > full_power {
                self.diags.push(
                    Diagnostic::error(
                        Code::L046,
                        format!(
                            "`idle_power` {} is above the full-load `power` {}",
                            Quantity::new(p, Dim::POWER),
                            Quantity::new(full_power, Dim::POWER)
                        ),
                        span,
                    )
                    .with_label(span, "idle draws at most what full load draws")
                    .with_help(
                        "`power` is the draw at full load, `idle_power` with nothing running",
                    ),
                );
            } else {
                own.idle_power = Some(p);
            }
        }
        // A purchase needs the period it is amortised over, and the other
        // way round: one without the other prices nothing.
        let pairs = [("purchase", "amortization"), ("amortization", "purchase")];
        for (has, needs) in pairs {
            if g.contains_key(has) && !g.contains_key(needs) {
                self.diags.push(
                    Diagnostic::error(Code::L061, format!("`{has}` needs `{needs}`"), decl_span)
                        .with_label(g[has][0].span, format!("given without `{needs}`"))
                        .with_help("write both, e.g. `purchase $30000` and `amortization 4 yr`"),
                );
            }
        }
        own
    }

    /// A study's `site { ... }` record.
    pub(crate) fn site(&mut self, v: &Value, span: Span) -> Option<Site> {
        let fields = self.record(v, span, "site figures")?;
        let mut got: BTreeMap<&str, f64> = BTreeMap::new();
        let mut ok = true;
        for (name, nspan, fv, fspan) in fields {
            let Some(&(key, dim, range, example, _)) = SITE_FIELDS.iter().find(|f| f.0 == name)
            else {
                let mut d =
                    Diagnostic::error(Code::L060, format!("site has no field `{name}`"), nspan)
                        .with_label(nspan, "unknown field");
                d = match crate::check::suggest(&name, SITE_FIELDS.iter().map(|f| f.0)) {
                    Some(s) => d.with_help(format!("did you mean `{s}`?")),
                    None => d.with_help(format!(
                        "fields: {}",
                        SITE_FIELDS
                            .iter()
                            .map(|f| f.0)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                };
                self.diags.push(d);
                ok = false;
                continue;
            };
            match self.figure(&fv, fspan, (dim, range), &format!("site `{key}`"), example) {
                Some(x) if key == "pue" && x < 1.0 => {
                    self.diags.push(
                        Diagnostic::error(
                            Code::L046,
                            format!(
                                "site `pue` must be at least 1, got {}",
                                crate::units::format_number(x)
                            ),
                            fspan,
                        )
                        .with_label(fspan, "facility power is IT power plus cooling and losses")
                        .with_help("write it like `pue = 1.2`"),
                    );
                    ok = false;
                }
                Some(x) => {
                    got.insert(key, x);
                }
                None => ok = false,
            }
        }
        for &(key, _, _, example, required) in SITE_FIELDS {
            if required && !got.contains_key(key) && ok {
                self.diags.push(
                    Diagnostic::error(Code::L061, format!("site is missing field `{key}`"), span)
                        .with_label(span, format!("needs `{key}`"))
                        .with_help(format!("write it like `{example}`")),
                );
                ok = false;
            }
        }
        if !ok {
            return None;
        }
        Some(Site {
            pue: got["pue"],
            energy_price: got["energy"],
            power_cap: got.get("power_cap").copied(),
            rack_power: got.get("rack_power").copied(),
            storage: got.get("storage").copied(),
            restart: got.get("restart").copied(),
            span,
        })
    }

    /// One workload's demand: a record `{ tokens = 1.5e13, within = 90 day }`,
    /// `{ samples = .., within = .. }`, `{ tokens_per_s = .. }`,
    /// `{ samples_per_s = .. }` or, for a `serve` workload,
    /// `{ requests_per_s = .. }`.
    pub(crate) fn demand(&mut self, w: &Workload, v: &Value, span: Span) -> Option<Demand> {
        let fields = self.record(v, span, "demand figures")?;
        let mut got: BTreeMap<String, (f64, Span)> = BTreeMap::new();
        const KEYS: [&str; 6] = [
            "tokens",
            "samples",
            "within",
            "tokens_per_s",
            "samples_per_s",
            "requests_per_s",
        ];
        let mut ok = true;
        for (name, nspan, fv, fspan) in fields {
            if !KEYS.contains(&name.as_str()) {
                let mut d =
                    Diagnostic::error(Code::L060, format!("demand has no field `{name}`"), nspan)
                        .with_label(nspan, "unknown field");
                d = match crate::check::suggest(&name, KEYS.iter().copied()) {
                    Some(s) => d.with_help(format!("did you mean `{s}`?")),
                    None => d.with_help(format!("fields: {}", KEYS.join(", "))),
                };
                self.diags.push(d);
                ok = false;
                continue;
            }
            let (dim, example) = match name.as_str() {
                "within" => (Dim::TIME, "within = 90 day"),
                "tokens" => (Dim::NONE, "tokens = 1.5e13"),
                "samples" => (Dim::NONE, "samples = 2e10"),
                "tokens_per_s" => (Dim::NONE, "tokens_per_s = 400_000"),
                "samples_per_s" => (Dim::NONE, "samples_per_s = 2e6"),
                _ => (Dim::NONE, "requests_per_s = 40"),
            };
            let range = match name.as_str() {
                "within" => MAX_PERIOD,
                "tokens" | "samples" => MAX_DEMAND,
                _ => MAX_DEMAND_RATE,
            };
            match self.figure(
                &fv,
                fspan,
                (dim, range),
                &format!("demand `{name}`"),
                example,
            ) {
                Some(x) => {
                    got.insert(name, (x, fspan));
                }
                None => ok = false,
            }
        }
        if !ok {
            return None;
        }
        let amounts: Vec<&str> = KEYS
            .iter()
            .copied()
            .filter(|k| *k != "within" && got.contains_key(*k))
            .collect();
        let help = "write one of `{ tokens = 1.5e13, within = 90 day }`, `{ samples_per_s = 1e6 }` or, for a `serve` workload, `{ requests_per_s = 40 }`";
        let [amount] = amounts.as_slice() else {
            self.diags.push(
                Diagnostic::error(
                    Code::L043,
                    format!(
                        "demand of `{}` must state exactly one amount or rate",
                        w.name
                    ),
                    span,
                )
                .with_label(span, format!("states {}", amounts.len()))
                .with_help(help),
            );
            return None;
        };
        let within = got.get("within").map(|x| x.0);
        let is_total = matches!(*amount, "tokens" | "samples");
        if is_total != within.is_some() {
            let msg = if is_total {
                format!(
                    "demand `{amount}` of `{}` needs `within`, the deadline",
                    w.name
                )
            } else {
                format!(
                    "demand `{amount}` of `{}` is a rate and takes no `within`",
                    w.name
                )
            };
            self.diags.push(
                Diagnostic::error(Code::L043, msg, span)
                    .with_label(span, "here")
                    .with_help(help),
            );
            return None;
        }
        let value = got[*amount].0;
        let serve = w.serve.is_some();
        let kind = match *amount {
            "tokens" => DemandKind::Total {
                amount: value,
                tokens: true,
                within: within.unwrap_or(1.0),
            },
            "samples" => DemandKind::Total {
                amount: value,
                tokens: false,
                within: within.unwrap_or(1.0),
            },
            "tokens_per_s" => DemandKind::Rate {
                per_s: value,
                tokens: true,
            },
            "samples_per_s" => DemandKind::Rate {
                per_s: value,
                tokens: false,
            },
            _ => DemandKind::Requests { per_s: value },
        };
        // A serve workload is sized by its request rate under its SLOs;
        // any other workload by tokens or samples.
        if serve != matches!(kind, DemandKind::Requests { .. }) {
            let s = got[*amount].1;
            self.diags.push(
                Diagnostic::error(
                    Code::L043,
                    format!("`{}` is {}a `serve` workload", w.name, if serve { "" } else { "not " }),
                    s,
                )
                .with_label(s, format!("`{amount}` does not apply"))
                .with_help(if serve {
                    "a `serve` workload's demand is `{ requests_per_s = .. }`, served under its SLOs"
                } else {
                    "`requests_per_s` is for `serve` workloads; write `tokens_per_s` or `samples_per_s`"
                }),
            );
            return None;
        }
        // A request rate is simulated from drawn arrivals: a closed loop
        // has no rate of its own, and a trace is read by `gantry plan`.
        if let Some(sv) = w.serve.as_deref()
            && matches!(
                sv.arrivals,
                Arrivals::Closed { .. } | Arrivals::Trace { .. } | Arrivals::Burst
            )
        {
            let s = got[*amount].1;
            self.diags.push(
                Diagnostic::error(
                    Code::L082,
                    format!(
                        "`{}` has {} arrivals: a `requests_per_s` demand is simulated from `poisson` or `gamma` arrivals",
                        w.name,
                        match sv.arrivals {
                            Arrivals::Closed { .. } => "closed-loop",
                            Arrivals::Burst => "burst",
                            _ => "trace",
                        }
                    ),
                    s,
                )
                .with_label(s, "sized by the serving planner at this rate")
                .with_help("give the workload `arrivals = poisson(rate = ..)` or `gamma(rate = .., cv = ..)`, or size it with `gantry plan`"),
            );
            return None;
        }
        Some(Demand {
            workload: w.name.clone(),
            kind,
            span,
        })
    }
}

impl Checker {
    /// A study's `site` and `demand` items. With `demand` and no
    /// `workloads`, the demanded workloads are the study's (at equal
    /// weights, for the weighted table); with both, each demanded workload
    /// must be one of `workloads`. `demand` needs a `site`: the fleet's
    /// cost depends on it.
    pub(crate) fn study_fleet(
        &mut self,
        g: &BTreeMap<&'static str, Vec<&Item>>,
        env: &mut Env,
        workloads: &mut Vec<(Workload, f64)>,
        study_span: Span,
    ) -> (Option<Site>, Vec<Demand>) {
        let site = g.get("site").and_then(|v| v.first()).and_then(|it| {
            let v = self.eval(&it.value, env);
            self.site(&v, it.value.span)
        });
        let Some(it) = g.get("demand").and_then(|v| v.first()) else {
            return (site, Vec::new());
        };
        if !g.contains_key("site") {
            self.diags.push(
                Diagnostic::error(Code::L061, "a study with `demand` needs a `site`", study_span)
                    .with_label(it.key.span, "demand stated here")
                    .with_help("add `site { pue = 1.2, energy = $0.08/kWh }` (stdlib/sites/ has sourced figures)"),
            );
        }
        let given = !workloads.is_empty() || g.contains_key("workloads");
        let v = self.eval(&it.value, env);
        let Some(fields) = self.record(&v, it.value.span, "demands per workload") else {
            return (site, Vec::new());
        };
        let mut out: Vec<Demand> = Vec::new();
        let mut found: Vec<Workload> = Vec::new();
        for (name, nspan, dv, dspan) in fields {
            let inst = self.lookup_global(&name, nspan);
            let Some(i) = self.expect_kind(&inst, nspan, crate::ast::DeclKind::Workload) else {
                continue;
            };
            let Some(w) = self.workload(&i, nspan) else {
                continue;
            };
            if given && !workloads.iter().any(|(x, _)| x.name == w.name) {
                self.diags.push(
                    Diagnostic::error(Code::L060, format!("`{name}` is not one of the study's workloads"), nspan)
                        .with_label(nspan, "not in `workloads`")
                        .with_help("add it to `workloads`, or leave `workloads` out and let `demand` name them"),
                );
                continue;
            }
            if out.iter().any(|d| d.workload == w.name) {
                continue; // a repeated record field is reported by `record`'s caller
            }
            if let Some(d) = self.demand(&w, &dv, dspan) {
                out.push(d);
                found.push(w);
            }
        }
        if !given {
            let n = found.len().max(1) as f64;
            workloads.extend(found.into_iter().map(|w| (w, 1.0 / n)));
        }
        (site, out)
    }
}

//! Total cost of ownership of a pool: capital amortised plus energy at the
//! modelled utilisation, and the site limits it must fit.
//!
//! Shaped as plain functions of plain numbers ([`Owned`], [`Site`]) so
//! every figure is checkable by hand (the unit tests below are hand
//! computations) and the report can print each term's inputs. The formulas,
//! term by term (docs/COST-MODEL.md §9):
//!
//! - device power at compute-busy fraction `u`:
//!   `P_dev(u) = P_idle + (P_max - P_idle) * u`; a node's own draw beyond
//!   its devices likewise; without a declared `idle_power` the draw is
//!   flat at full load;
//! - IT power = devices * P_dev(u) + nodes * P_node(u); facility power =
//!   IT power * PUE;
//! - capital per second = devices * purchase_dev / amortization_dev +
//!   nodes * purchase_node / amortization_node;
//! - energy per second = facility power * price per joule;
//! - a part with only a rental `price` ($/h) is rented: the rental stands
//!   for capital and energy together (a cloud price includes power), and
//!   no energy term is added;
//! - provisioned power (what a site cap limits) is at full load: devices *
//!   P_max + nodes * P_node_max, times PUE;
//! - racks = ceil(nodes / floor(rack_power / node full-load power)).

use gantry_lang::program::{Cluster, Site};
use serde::{Deserialize, Serialize};

/// The ownership figures of one system's node and devices, in base units.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Owned {
    pub devices_per_node: u64,
    /// Full-load and idle watts of one device.
    pub device_power: f64,
    pub device_idle: f64,
    /// A node's own full-load and idle watts, beyond its devices'.
    pub node_power: f64,
    pub node_idle: f64,
    /// Dollars per second of owning one node with its devices: purchase
    /// over amortisation, or the rental rate.
    pub capital_per_node: f64,
    /// Whether the capital is a rental rate (energy included).
    pub rented: bool,
    /// The inputs of `capital_per_node`, for the report: device purchase
    /// and amortisation, node purchase and amortisation (purchase only).
    pub purchase: Option<[f64; 4]>,
}

impl Owned {
    /// The figures of a system's node, or what is missing. A node's
    /// purchase without its devices' (or the reverse) is an error: half a
    /// price would understate the cost.
    pub fn of(c: &Cluster) -> Result<Owned, String> {
        let n = &c.node;
        let d = &n.device;
        let per = n.devices_per_node.max(1);
        let bought = (d.own.purchase.zip(d.own.amortization)).map(|(p, a)| {
            let (np, na) = n.own.purchase.zip(n.own.amortization).unwrap_or((0.0, 1.0));
            [p, a, np, na]
        });
        let (capital_per_node, rented, purchase) = match bought {
            Some(b) => (per as f64 * b[0] / b[1] + b[2] / b[3], false, Some(b)),
            None => {
                let rent = n.price.or(d.price.map(|p| p * per as f64)).ok_or_else(|| {
                    format!(
                        "node `{}` and device `{}` declare neither a `purchase` price nor a rental `price`",
                        n.name, d.name
                    )
                })?;
                (rent, true, None)
            }
        };
        Ok(Owned {
            devices_per_node: per,
            device_power: d.power,
            device_idle: d.own.idle_power.unwrap_or(d.power),
            node_power: n.power_overhead,
            node_idle: n.own.idle_power.unwrap_or(n.power_overhead),
            capital_per_node,
            rented,
            purchase,
        })
    }

    /// Full-load watts of one node with its devices.
    pub fn node_full_power(&self) -> f64 {
        self.devices_per_node as f64 * self.device_power + self.node_power
    }
}

/// What a pool of `nodes` costs and draws.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tco {
    pub nodes: u64,
    pub devices: u64,
    /// Compute-busy fraction of the pool's devices, averaged over time.
    pub busy: f64,
    /// IT watts at that utilisation, and facility watts (x PUE).
    pub it_power: f64,
    pub facility_power: f64,
    /// Facility watts at full load: what the site provisions.
    pub provisioned_power: f64,
    /// Dollars per second: capital, energy, total.
    pub capital: f64,
    pub energy: f64,
    pub total: f64,
    /// Racks at the site's rack power (None without one).
    pub racks: Option<u64>,
}

/// The cost of `nodes` nodes whose devices are compute-busy a fraction
/// `busy` of the time. `Err` when one node draws more than a rack may.
pub fn tco(o: &Owned, site: &Site, nodes: u64, busy: f64) -> Result<Tco, String> {
    let u = busy.clamp(0.0, 1.0);
    let devices = nodes * o.devices_per_node;
    let dev_w = o.device_idle + (o.device_power - o.device_idle) * u;
    let node_w = o.node_idle + (o.node_power - o.node_idle) * u;
    let it_power = devices as f64 * dev_w + nodes as f64 * node_w;
    let facility_power = it_power * site.pue;
    let provisioned_power = nodes as f64 * o.node_full_power() * site.pue;
    let capital = nodes as f64 * o.capital_per_node;
    let energy = if o.rented {
        0.0
    } else {
        facility_power * site.energy_price
    };
    let racks = match site.rack_power {
        None => None,
        Some(rack) => {
            let per_rack = (rack / o.node_full_power()).floor();
            if per_rack < 1.0 {
                return Err(format!(
                    "one node draws {:.1} kW at full load, above the site's rack power of {:.1} kW",
                    o.node_full_power() / 1e3,
                    rack / 1e3
                ));
            }
            Some(nodes.div_ceil(per_rack as u64))
        }
    };
    Ok(Tco {
        nodes,
        devices,
        busy: u,
        it_power,
        facility_power,
        provisioned_power,
        capital,
        energy,
        total: capital + energy,
        racks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_lang::span::Span;

    fn site(rack: Option<f64>) -> Site {
        Site {
            pue: 1.25,
            // $0.10/kWh
            energy_price: 0.10 / 3.6e6,
            power_cap: None,
            rack_power: rack,
            storage: None,
            restart: None,
            span: Span::new(0, 0),
        }
    }

    /// 8 devices of 700 W (100 W idle) at $20,000 over 4 years, a node of
    /// 2,000 W (500 W idle) at $100,000 over 5 years.
    fn owned() -> Owned {
        let year = 365.25 * 86_400.0;
        Owned {
            devices_per_node: 8,
            device_power: 700.0,
            device_idle: 100.0,
            node_power: 2000.0,
            node_idle: 500.0,
            capital_per_node: 8.0 * 20_000.0 / (4.0 * year) + 100_000.0 / (5.0 * year),
            rented: false,
            purchase: Some([20_000.0, 4.0 * year, 100_000.0, 5.0 * year]),
        }
    }

    #[test]
    fn tco_by_hand() {
        // Two nodes, devices compute-busy half the time:
        // device 100 + 600 * 0.5 = 400 W, node 500 + 1500 * 0.5 = 1250 W;
        // IT = 16 * 400 + 2 * 1250 = 8,900 W; facility 8,900 * 1.25 = 11,125 W.
        let t = tco(&owned(), &site(None), 2, 0.5).unwrap();
        assert_eq!(t.devices, 16);
        assert!((t.it_power - 8_900.0).abs() < 1e-9);
        assert!((t.facility_power - 11_125.0).abs() < 1e-9);
        // Energy: 11.125 kW * $0.10/kWh = $1.1125/h.
        assert!((t.energy * 3600.0 - 1.1125).abs() < 1e-9);
        // Capital per year: 2 * (8 * 20,000 / 4 + 100,000 / 5) = $120,000.
        let year = 365.25 * 86_400.0;
        assert!((t.capital * year - 120_000.0).abs() < 1e-6);
        assert!((t.total - t.capital - t.energy).abs() < 1e-15);
        // Provisioned at full load: 2 * (8 * 700 + 2,000) * 1.25 = 19,000 W.
        assert!((t.provisioned_power - 19_000.0).abs() < 1e-9);
    }

    #[test]
    fn idle_and_full_load_bound_the_power() {
        let idle = tco(&owned(), &site(None), 1, 0.0).unwrap();
        assert!((idle.it_power - (8.0 * 100.0 + 500.0)).abs() < 1e-9);
        let full = tco(&owned(), &site(None), 1, 1.0).unwrap();
        assert!((full.it_power - 7_600.0).abs() < 1e-9);
        // Out-of-range fractions are clamped, never extrapolated.
        assert_eq!(tco(&owned(), &site(None), 1, 7.0).unwrap(), full);
    }

    #[test]
    fn racks_and_rental() {
        // A node draws 7.6 kW at full load: 5 fit in 40 kW; 12 nodes need 3 racks.
        let t = tco(&owned(), &site(Some(40_000.0)), 12, 0.3).unwrap();
        assert_eq!(t.racks, Some(3));
        let err = tco(&owned(), &site(Some(5_000.0)), 1, 0.3).unwrap_err();
        assert!(err.contains("7.6 kW") && err.contains("5.0 kW"), "{err}");
        // A rented node: the rental is the whole cost, no energy term.
        let mut r = owned();
        r.rented = true;
        r.capital_per_node = 20.0 / 3600.0;
        let t = tco(&r, &site(None), 3, 0.5).unwrap();
        assert_eq!(t.energy, 0.0);
        assert!((t.total * 3600.0 - 60.0).abs() < 1e-9);
    }
}

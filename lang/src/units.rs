//! Physical units with dimensional analysis.
//!
//! A [`Quantity`] is an `f64` magnitude in base units (FLOP, bytes, seconds,
//! joules, dollars) plus a [`Dim`]: the integer exponent of each base
//! dimension. Everything the language can measure (compute rates, capacities,
//! bandwidths, latencies, power, energy, prices) is a product of these five,
//! so a fixed-size exponent vector is enough and comparisons are cheap.
//!
//! Precision: magnitudes are IEEE-754 doubles. Every prefix is an exact power
//! of two or of ten, integers up to 2^53 are exact, and one unit conversion
//! costs at most one rounding (relative error <= 2^-53, about 1.1e-16). Bits
//! and bytes share a dimension: `1 b` is exactly `0.125 B`.

use std::fmt;

/// Number of base dimensions.
pub const BASES: usize = 5;
/// Base dimension names, in exponent order, as printed.
pub const BASE_NAMES: [&str; BASES] = ["FLOP", "B", "s", "J", "$"];

/// Exponents of the base dimensions [FLOP, byte, second, joule, dollar].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Dim(pub [i8; BASES]);

impl Dim {
    pub const NONE: Dim = Dim([0; BASES]);
    pub const FLOP: Dim = Dim([1, 0, 0, 0, 0]);
    pub const BYTES: Dim = Dim([0, 1, 0, 0, 0]);
    pub const TIME: Dim = Dim([0, 0, 1, 0, 0]);
    pub const ENERGY: Dim = Dim([0, 0, 0, 1, 0]);
    pub const MONEY: Dim = Dim([0, 0, 0, 0, 1]);
    pub const FLOP_RATE: Dim = Dim([1, 0, -1, 0, 0]);
    pub const BANDWIDTH: Dim = Dim([0, 1, -1, 0, 0]);
    pub const POWER: Dim = Dim([0, 0, -1, 1, 0]);
    pub const PRICE_RATE: Dim = Dim([0, 0, -1, 0, 1]);
    /// Dollars per joule, written and printed per kWh.
    pub const ENERGY_PRICE: Dim = Dim([0, 0, 0, -1, 1]);

    pub fn times(self, o: Dim) -> Dim {
        let mut d = self.0;
        for (a, b) in d.iter_mut().zip(o.0) {
            *a = a.saturating_add(b);
        }
        Dim(d)
    }
    pub fn per(self, o: Dim) -> Dim {
        let mut d = self.0;
        for (a, b) in d.iter_mut().zip(o.0) {
            *a = a.saturating_sub(b);
        }
        Dim(d)
    }
    pub fn is_none(self) -> bool {
        self == Dim::NONE
    }
    /// A human name for well-known dimensions, used in diagnostics.
    pub fn describe(self) -> String {
        let name = match self {
            Dim::NONE => "a plain number",
            Dim::FLOP => "an amount of compute (FLOP)",
            Dim::BYTES => "a size (B)",
            Dim::TIME => "a time (s)",
            Dim::ENERGY => "an energy (J)",
            Dim::MONEY => "an amount of money ($)",
            Dim::FLOP_RATE => "a compute rate (FLOP/s)",
            Dim::BANDWIDTH => "a bandwidth (B/s)",
            Dim::POWER => "a power (W)",
            Dim::PRICE_RATE => "a price rate ($/h)",
            Dim::ENERGY_PRICE => "an energy price ($/kWh)",
            _ => return format!("a quantity in {self}"),
        };
        name.to_string()
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_none() {
            return write!(f, "1");
        }
        // Named compound units first, so `W` prints as `W`, not `J/s`.
        match *self {
            Dim::POWER => return write!(f, "W"),
            Dim::PRICE_RATE => return write!(f, "$/h"),
            _ => {}
        }
        let mut num = Vec::new();
        let mut den = Vec::new();
        for (i, &e) in self.0.iter().enumerate() {
            let name = BASE_NAMES[i];
            let part = |e: i8| {
                if e == 1 {
                    name.to_string()
                } else {
                    format!("{name}^{e}")
                }
            };
            match e.cmp(&0) {
                std::cmp::Ordering::Greater => num.push(part(e)),
                std::cmp::Ordering::Less => den.push(part(-e)),
                std::cmp::Ordering::Equal => {}
            }
        }
        let num = if num.is_empty() {
            "1".to_string()
        } else {
            num.join("*")
        };
        if den.is_empty() {
            write!(f, "{num}")
        } else {
            write!(f, "{num}/{}", den.join("/"))
        }
    }
}

impl fmt::Debug for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// A magnitude in base units with its dimension.
#[derive(Clone, Copy, PartialEq, Debug)]
pub struct Quantity {
    pub value: f64,
    pub dim: Dim,
}

impl Quantity {
    pub fn new(value: f64, dim: Dim) -> Self {
        Quantity { value, dim }
    }
    pub fn plain(value: f64) -> Self {
        Quantity {
            value,
            dim: Dim::NONE,
        }
    }
    /// The value as an exact integer, if it is a plain number with no fraction.
    pub fn as_int(&self) -> Option<i64> {
        if self.dim.is_none()
            && self.value.fract() == 0.0
            && self.value.abs() < 9.007_199_254_740_992e15
        {
            Some(self.value as i64)
        } else {
            None
        }
    }
}

/// Prints a quantity in a unit the language itself accepts, so a summary
/// line can be pasted back into a source file: an SI prefix for large
/// magnitudes (`80 GB`, `989.4 TFLOP/s`), sub-unit prefixes only for
/// seconds (`5 us`; a byte count below one prints as `0.125 B`, never
/// `125 mB`), a binary prefix for sizes that are exact in it and not in SI
/// (`2 TiB`), times of a second or more in plain seconds (`10800 s`), and
/// money with a leading `$` (`$30000`, `$2.5/h`).
impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.value;
        // `{:.9}` prints 9 significant digits (labels that must tell two
        // close values apart); the default is 6.
        let sig = f.precision().unwrap_or(6);
        let num = |x: f64| format_number_digits(x, sig);
        let sign = if v < 0.0 { "-" } else { "" };
        match self.dim {
            Dim::NONE => write!(f, "{}", num(v)),
            // Stored per second; printed per hour, as written.
            Dim::PRICE_RATE => write!(f, "{sign}${}/h", num((v * 3600.0).abs())),
            Dim::ENERGY_PRICE => write!(f, "{sign}${}/kWh", num((v * 3.6e6).abs())),
            Dim::MONEY => write!(f, "{sign}${}", num(v.abs())),
            Dim::TIME => {
                let a = v.abs();
                let (scale, prefix) = if a >= 1.0 || a == 0.0 || !a.is_finite() {
                    (1.0, "")
                } else if a >= 1e-3 {
                    (1e-3, "m")
                } else if a >= 1e-6 {
                    (1e-6, "u")
                } else if a >= 1e-12 {
                    (1e-9, "n")
                } else {
                    // Far below a nanosecond: `1.000e-300 s`, not
                    // `1.000e-291 ns`.
                    (1.0, "")
                };
                write!(f, "{} {prefix}s", num(v / scale))
            }
            dim => {
                let unit = dim.to_string();
                let prefixable = ["FLOP", "B", "J", "W"].iter().any(|b| unit.starts_with(b))
                    && !unit.contains(['^', '*', '$']);
                if !prefixable {
                    return write!(f, "{} {unit}", num(v));
                }
                let (scale, prefix) = si_scale(v);
                // A size exact with a binary prefix prints with it, unless
                // SI is exact too and no longer (`80 GB`, but `64 KiB`).
                let sizes = dim == Dim::BYTES || dim == Dim::BANDWIDTH;
                if sizes && let Some((text, bprefix)) = binary_text(v) {
                    let shorter = exact_text(v, scale).is_none_or(|si| digits(&text) < digits(&si));
                    if shorter {
                        return write!(f, "{text} {bprefix}{unit}");
                    }
                }
                write!(f, "{} {prefix}{unit}", num(v / scale))
            }
        }
    }
}

/// Picks an SI prefix so the mantissa lies in [1, 1000) when possible;
/// magnitudes below 1 get none (only seconds have sub-unit prefixes here).
fn si_scale(v: f64) -> (f64, &'static str) {
    const STEPS: [(f64, &str); 6] = [
        (1e18, "E"),
        (1e15, "P"),
        (1e12, "T"),
        (1e9, "G"),
        (1e6, "M"),
        (1e3, "k"),
    ];
    let a = v.abs();
    if !a.is_finite() {
        return (1.0, "");
    }
    STEPS
        .iter()
        .find(|(scale, _)| a >= *scale)
        .map_or((1.0, ""), |&(scale, p)| (scale, p))
}

/// `v / scale` as printed, if printing loses nothing.
fn exact_text(v: f64, scale: f64) -> Option<String> {
    let text = format_number(v / scale);
    let back: f64 = text.parse().ok()?;
    ((back * scale - v).abs() <= v.abs() * 1e-12).then_some(text)
}

/// Significant digits of a printed number.
fn digits(text: &str) -> usize {
    text.chars()
        .filter(char::is_ascii_digit)
        .collect::<String>()
        .trim_start_matches('0')
        .len()
}

/// `v` with the largest binary prefix it reaches, if printing loses nothing.
fn binary_text(v: f64) -> Option<(String, &'static str)> {
    const STEPS: [(i32, &str); 6] = [
        (6, "Ei"),
        (5, "Pi"),
        (4, "Ti"),
        (3, "Gi"),
        (2, "Mi"),
        (1, "Ki"),
    ];
    let &(k, p) = STEPS.iter().find(|(k, _)| v.abs() >= 1024f64.powi(*k))?;
    exact_text(v, 1024f64.powi(k)).map(|t| (t, p))
}

/// Prints a number with at most 6 significant digits and no trailing zeros,
/// so reports and snapshots stay stable across platforms.
pub fn format_number(v: f64) -> String {
    format_number_digits(v, 6)
}

/// [`format_number`] with at most `digits` significant digits (at least
/// 6; a number below 0.001 gets `digits - 3` decimals in its mantissa).
pub fn format_number_digits(v: f64, digits: usize) -> String {
    let sig = digits.clamp(6, 17);
    if !v.is_finite() {
        // `inf`, `-inf`, `NaN`: the digit count below needs a finite log.
        return format!("{v}");
    }
    if v.abs() >= 1e21 {
        // Past any figure a report holds (`1e308`, not 309 digits).
        let s = format!("{v:.*e}", sig - 1);
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        let m = m.trim_end_matches('0').trim_end_matches('.');
        return format!("{m}e{e}");
    }
    if v.fract() == 0.0 && v.abs() < 1e15 {
        return format!("{}", v as i64);
    }
    let s = if v.abs() >= 1e-3 {
        let digits = sig.saturating_sub(v.abs().log10().floor().max(0.0) as usize + 1);
        format!("{v:.digits$}")
    } else {
        format!("{v:.*e}", sig - 3)
    };
    if s.contains('.') && !s.contains('e') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Parses a unit expression such as `TFLOP/s`, `GiB`, `Gb/s`, `$/h`, `us`.
/// Returns the factor to base units and the dimension.
pub fn parse_unit(text: &str) -> Option<(f64, Dim)> {
    let mut parts = text.split('/');
    let first = parts.next()?;
    let (mut factor, mut dim) = if first.is_empty() {
        (1.0, Dim::NONE)
    } else {
        unit_word(first)?
    };
    let mut any_den = false;
    for p in parts {
        let (f, d) = unit_word(p)?;
        factor /= f;
        dim = dim.per(d);
        any_den = true;
    }
    if first.is_empty() && !any_den {
        return None;
    }
    Some((factor, dim))
}

/// One unit word: an optional prefix and a base unit.
pub fn unit_word(w: &str) -> Option<(f64, Dim)> {
    // Bases that take no prefix.
    match w {
        "h" => return Some((3600.0, Dim::TIME)),
        "min" => return Some((60.0, Dim::TIME)),
        // A day, and a Julian year (365.25 days): amortisation periods and
        // training deadlines.
        "day" => return Some((86_400.0, Dim::TIME)),
        "yr" => return Some((31_557_600.0, Dim::TIME)),
        "$" => return Some((1.0, Dim::MONEY)),
        _ => {}
    }
    const BASES: [(&str, f64, Dim); 7] = [
        ("FLOP", 1.0, Dim::FLOP),
        // Watt-hours (`kWh`, `MWh`), for energy prices (`$0.08/kWh`).
        ("Wh", 3600.0, Dim::ENERGY),
        ("B", 1.0, Dim::BYTES),
        ("b", 0.125, Dim::BYTES),
        ("s", 1.0, Dim::TIME),
        ("W", 1.0, Dim::POWER),
        ("J", 1.0, Dim::ENERGY),
    ];
    for (base, bf, dim) in BASES {
        if let Some(prefix) = w.strip_suffix(base) {
            let pf = prefix_factor(prefix, base)?;
            return Some((pf * bf, dim));
        }
    }
    None
}

fn prefix_factor(p: &str, base: &str) -> Option<f64> {
    let si = match p {
        "" => Some(1.0),
        "k" => Some(1e3),
        "M" => Some(1e6),
        "G" => Some(1e9),
        "T" => Some(1e12),
        "P" => Some(1e15),
        "E" => Some(1e18),
        _ => None,
    };
    if let Some(f) = si {
        return Some(f);
    }
    match (p, base) {
        ("Ki", "B" | "b") => Some(1024.0),
        ("Mi", "B" | "b") => Some(1024.0 * 1024.0),
        ("Gi", "B" | "b") => Some(1024f64.powi(3)),
        ("Ti", "B" | "b") => Some(1024f64.powi(4)),
        ("Pi", "B" | "b") => Some(1024f64.powi(5)),
        ("Ei", "B" | "b") => Some(1024f64.powi(6)),
        ("m", "s") => Some(1e-3),
        ("u", "s") => Some(1e-6),
        ("n", "s") => Some(1e-9),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(text: &str) -> (f64, Dim) {
        parse_unit(text).unwrap_or_else(|| panic!("unit {text} should parse"))
    }

    #[test]
    fn extreme_numbers_print_without_panicking() {
        // An infinite figure used to overflow the digit count (issue 11).
        assert_eq!(format_number(f64::INFINITY), "inf");
        assert_eq!(format_number(f64::NEG_INFINITY), "-inf");
        assert_eq!(format_number(f64::NAN), "NaN");
        assert_eq!(format_number(1e308), "1e308");
        assert_eq!(format_number(-2.5e300), "-2.5e300");
        assert_eq!(
            Quantity::new(f64::INFINITY, Dim::BYTES).to_string(),
            "inf B"
        );
        assert_eq!(format_number(123456.0), "123456");
    }

    #[test]
    fn bits_and_bytes_differ_by_eight() {
        assert_eq!(q("Gb").0 * 8.0, q("GB").0);
        assert_eq!(q("Gb/s").1, Dim::BANDWIDTH);
        assert_eq!(q("400 Gb/s".split(' ').nth(1).unwrap()).0 * 400.0, 50e9);
    }

    #[test]
    fn binary_and_si_prefixes_are_exact() {
        assert_eq!(q("GiB").0, 1073741824.0);
        assert_eq!(q("GB").0, 1e9);
        assert_eq!(q("TiB").0, 1099511627776.0);
        assert_eq!(q("KiB").0, 1024.0);
        // SI prefixes on binary units are not the same number.
        assert_ne!(q("TB").0, q("TiB").0);
    }

    #[test]
    fn compound_units() {
        assert_eq!(q("TFLOP/s"), (1e12, Dim::FLOP_RATE));
        assert_eq!(q("TB/s"), (1e12, Dim::BANDWIDTH));
        assert_eq!(q("kW"), (1e3, Dim::POWER));
        assert_eq!(q("MW"), (1e6, Dim::POWER));
        assert_eq!(q("J/s").1, Dim::POWER);
        assert_eq!(q("$/h"), (1.0 / 3600.0, Dim::PRICE_RATE));
        assert_eq!(q("us"), (1e-6, Dim::TIME));
        assert_eq!(q("ns"), (1e-9, Dim::TIME));
        assert_eq!(q("ms"), (1e-3, Dim::TIME));
    }

    #[test]
    fn unknown_units_are_rejected() {
        for bad in ["GX", "mB", "KiW", "", "/", "Gi", "TFLOPS", "uW"] {
            assert!(parse_unit(bad).is_none(), "{bad} should not parse");
        }
    }

    #[test]
    fn dimension_algebra() {
        let energy = Dim::POWER.times(Dim::TIME);
        assert_eq!(energy, Dim::ENERGY);
        assert_eq!(Dim::BYTES.per(Dim::BANDWIDTH), Dim::TIME);
        assert_eq!(Dim::FLOP.per(Dim::FLOP_RATE), Dim::TIME);
        assert!(Dim::BYTES.per(Dim::BYTES).is_none());
        assert_ne!(Dim::BYTES, Dim::BANDWIDTH);
    }

    #[test]
    fn display_is_stable() {
        assert_eq!(Quantity::new(80e9, Dim::BYTES).to_string(), "80 GB");
        assert_eq!(
            Quantity::new(3.35e12, Dim::BANDWIDTH).to_string(),
            "3.35 TB/s"
        );
        assert_eq!(
            Quantity::new(989.4e12, Dim::FLOP_RATE).to_string(),
            "989.4 TFLOP/s"
        );
        assert_eq!(Quantity::new(700.0, Dim::POWER).to_string(), "700 W");
        assert_eq!(
            Quantity::new(2.5 / 3600.0, Dim::PRICE_RATE).to_string(),
            "$2.5/h"
        );
        assert_eq!(Quantity::new(5e-6, Dim::TIME).to_string(), "5 us");
        assert_eq!(Quantity::plain(0.9).to_string(), "0.9");
        assert_eq!(format_number(1.0 / 3.0), "0.33333");
    }

    fn show(text: &str) -> String {
        let (n, u) = text.split_once(' ').unwrap_or((text, ""));
        let (f, d) = if u.is_empty() { (1.0, Dim::NONE) } else { q(u) };
        Quantity::new(n.parse::<f64>().expect("number") * f, d).to_string()
    }

    #[test]
    fn display_never_prints_sub_byte_prefixes() {
        assert_eq!(show("1 b"), "0.125 B");
        assert_eq!(show("4 b"), "0.5 B");
        assert_eq!(show("8 b"), "1 B");
        assert_eq!(show("400 Gb/s"), "50 GB/s");
    }

    #[test]
    fn display_writes_money_with_a_leading_dollar() {
        assert_eq!(Quantity::new(30000.0, Dim::MONEY).to_string(), "$30000");
        assert_eq!(Quantity::new(60.0, Dim::MONEY).to_string(), "$60");
        assert_eq!(Quantity::new(-1.5, Dim::MONEY).to_string(), "-$1.5");
        assert_eq!(
            Quantity::new(30.0 / 3600.0, Dim::PRICE_RATE).to_string(),
            "$30/h"
        );
    }

    #[test]
    fn energy_prices_and_long_times() {
        // 1 kWh = 3.6e6 J, so $0.08/kWh is 0.08 / 3.6e6 $ per joule.
        assert_eq!(q("kWh"), (3.6e6, Dim::ENERGY));
        assert_eq!(q("MWh"), (3.6e9, Dim::ENERGY));
        let (f, d) = q("$/kWh");
        assert!((f - 1.0 / 3.6e6).abs() < 1e-18);
        assert_eq!(d, Dim::MONEY.per(Dim::ENERGY));
        assert_eq!(q("day"), (86_400.0, Dim::TIME));
        assert_eq!(q("yr"), (365.25 * 86_400.0, Dim::TIME));
        assert!(parse_unit("kday").is_none() && parse_unit("Myr").is_none());
        assert_eq!(
            Quantity::new(0.08 / 3.6e6, Dim::ENERGY_PRICE).to_string(),
            "$0.08/kWh"
        );
    }

    #[test]
    fn display_keeps_long_times_in_seconds() {
        assert_eq!(show("3 h"), "10800 s");
        assert_eq!(show("5 min"), "300 s");
        assert_eq!(show("1.5 s"), "1.5 s");
        assert_eq!(show("2 ms"), "2 ms");
        assert_eq!(show("500 ns"), "500 ns");
        assert_eq!(Quantity::new(0.0, Dim::TIME).to_string(), "0 s");
    }

    #[test]
    fn display_uses_binary_prefixes_when_exact() {
        assert_eq!(show("2 TiB"), "2 TiB");
        assert_eq!(show("80 GiB"), "80 GiB");
        assert_eq!(show("1.5 TiB"), "1.5 TiB");
        assert_eq!(show("64 KiB"), "64 KiB");
        assert_eq!(show("100 GiB/s"), "100 GiB/s");
        // SI wins where it is exact, even if binary would be too.
        assert_eq!(show("80 GB"), "80 GB");
        assert_eq!(show("1000 B"), "1 kB");
        assert_eq!(show("2048 B"), "2 KiB");
        assert_eq!(show("3.35 TB/s"), "3.35 TB/s");
    }

    #[test]
    fn display_output_parses_back() {
        for text in [
            "1 b",
            "2 TiB",
            "3 h",
            "80 GB",
            "989.4 TFLOP/s",
            "700 W",
            "2 kW",
            "21.6 MJ",
            "5 us",
            "1 GFLOP",
        ] {
            let shown = show(text);
            let (n, u) = shown.split_once(' ').expect("number and unit");
            assert!(
                parse_unit(u).is_some(),
                "{text} prints as {shown}, whose unit does not parse"
            );
            assert!(n.parse::<f64>().is_ok(), "{shown}");
        }
    }
}

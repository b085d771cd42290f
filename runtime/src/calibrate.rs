//! Turning kernel timings on this host into a `device` declaration.
//!
//! The binary times the JIT kernels (it owns the clock); this module only
//! turns the figures into Gantry source, so the output is deterministic
//! for given measurements and can be tested. Definitions:
//!
//! - `compute fp32`: the best matrix-product rate measured (the host's
//!   achievable peak for these kernels, one core).
//! - `efficiency.matmul`: the mean of each measured shape's rate over that peak.
//! - `memory hbm`: the host's memory capacity `@` the `copy_from_slice`
//!   bandwidth (bytes read plus written per second).
//! - `efficiency.memory`: the streaming elementwise kernel's bandwidth over
//!   the copy bandwidth (capped at 1).
//! - `power`: not measurable from user space; the figure given (an
//!   assumption, stated in a comment).

use std::fmt::Write;

/// One timed matrix product.
#[derive(Clone, Debug, PartialEq)]
pub struct MatmulTiming {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub flops_per_s: f64,
}

/// What `gantry calibrate` measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Measurements {
    pub matmul: Vec<MatmulTiming>,
    /// Bytes read plus written per second by the elementwise kernel.
    pub elementwise_bw: f64,
    /// Bytes read plus written per second by the gather kernel.
    pub gather_bw: f64,
    /// Bytes read plus written per second by `copy_from_slice`.
    pub copy_bw: f64,
    /// Host memory in bytes.
    pub memory_bytes: f64,
    /// Assumed power in watts.
    pub power_w: f64,
}

fn round3(x: f64) -> f64 {
    if x <= 0.0 || !x.is_finite() {
        return 0.0;
    }
    let mag = 10f64.powf(x.log10().floor() - 2.0);
    (x / mag).round() * mag
}

/// [`round3`] as the declaration writes it: three significant digits and
/// no binary noise (`84.1`, not `84.10000000000001`).
fn fig(x: f64) -> String {
    let r = round3(x);
    if r <= 0.0 {
        return "0".into();
    }
    let decimals = (2.0 - r.log10().floor()).max(0.0) as usize;
    format!("{r:.decimals$}")
}

fn clamp_fraction(x: f64) -> f64 {
    (x.clamp(0.01, 1.0) * 1000.0).round() / 1000.0
}

/// Why `gantry calibrate --name NAME --power W` would print a declaration
/// that does not check (a reserved word or a built-in name, a power out
/// of the checker's range), as `[CODE] message`: the declaration is
/// checked with typical figures before anything is measured.
pub fn declaration_error(name: &str, power_w: f64) -> Option<String> {
    let probe = Measurements {
        matmul: vec![MatmulTiming {
            m: 256,
            k: 256,
            n: 256,
            flops_per_s: 40e9,
        }],
        elementwise_bw: 9e9,
        gather_bw: 4e9,
        copy_bw: 10e9,
        memory_bytes: 16e9,
        power_w,
    };
    let text = device_decl(name, &probe);
    let c = gantry_lang::check::check_source("calibrate.gantry", &text);
    c.diagnostics
        .iter()
        .find(|d| d.severity == gantry_lang::diagnostic::Severity::Error)
        .map(|d| format!("[{}] {}", d.code, d.message))
}

/// The `device` declaration for `name` (a valid Gantry identifier).
pub fn device_decl(name: &str, m: &Measurements) -> String {
    let peak = m
        .matmul
        .iter()
        .map(|t| t.flops_per_s)
        .fold(0.0f64, f64::max)
        .max(1e6);
    let eff = if m.matmul.is_empty() {
        1.0
    } else {
        m.matmul.iter().map(|t| t.flops_per_s / peak).sum::<f64>() / m.matmul.len() as f64
    };
    let copy = m.copy_bw.max(1e6);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "// Measured by `gantry calibrate` on this host: one core, Cranelift JIT kernels."
    );
    for t in &m.matmul {
        let _ = writeln!(
            s,
            "// matmul {}x{}x{}: {:.2} GFLOP/s",
            t.m,
            t.k,
            t.n,
            t.flops_per_s / 1e9
        );
    }
    let _ = writeln!(
        s,
        "// elementwise {:.2} GB/s, gather {:.2} GB/s, copy_from_slice {:.2} GB/s (read + write)",
        m.elementwise_bw / 1e9,
        m.gather_bw / 1e9,
        m.copy_bw / 1e9
    );
    let _ = writeln!(s, "device {name} {{");
    let _ = writeln!(s, "  compute {{ fp32 = {} GFLOP/s }}", fig(peak / 1e9));
    let _ = writeln!(
        s,
        "  memory hbm = {} GB @ {} GB/s",
        fig(m.memory_bytes.max(1e9) / 1e9),
        fig(copy / 1e9)
    );
    let _ = writeln!(
        s,
        "  // Assumption, not a measurement: power cannot be read from user space."
    );
    let _ = writeln!(s, "  power {} W", fig(m.power_w.max(1.0)));
    let _ = writeln!(
        s,
        "  efficiency {{ matmul = {}, memory = {} }}",
        clamp_fraction(eff),
        clamp_fraction(m.elementwise_bw / copy)
    );
    let _ = writeln!(s, "}}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declaration_checks() {
        let m = Measurements {
            matmul: vec![
                MatmulTiming {
                    m: 256,
                    k: 256,
                    n: 256,
                    flops_per_s: 41.3e9,
                },
                MatmulTiming {
                    m: 8,
                    k: 4096,
                    n: 4096,
                    flops_per_s: 17.9e9,
                },
            ],
            elementwise_bw: 9.1e9,
            gather_bw: 4.2e9,
            copy_bw: 10.4e9,
            memory_bytes: 24.0 * 1024.0 * 1024.0 * 1024.0,
            power_w: 100.0,
        };
        let text = device_decl("HostCpu", &m);
        let c = gantry_lang::check::check_source("host.gantry", &text);
        assert!(!c.has_errors(), "{}\n{text}", c.render(false));
        let d = &c.program.devices["HostCpu"];
        assert!((d.compute[&gantry_lang::program::DType::F32] - 41.3e9).abs() < 1e6);
        assert!(
            text.contains("efficiency { matmul = 0.717, memory = 0.875 }"),
            "{text}"
        );
    }

    #[test]
    fn figures_print_without_binary_noise() {
        assert_eq!(fig(84.1), "84.1");
        assert_eq!(fig(84.123), "84.1");
        assert_eq!(fig(49.900000000000006), "49.9");
        assert_eq!(fig(25.3), "25.3");
        assert_eq!(fig(1234.0), "1230");
        assert_eq!(fig(0.012345), "0.0123");
        assert_eq!(fig(100.0), "100");
        assert_eq!(fig(0.0), "0");
    }

    #[test]
    fn names_and_powers_the_checker_refuses_are_found_first() {
        assert_eq!(declaration_error("HostCpu", 100.0), None);
        assert_eq!(declaration_error("host_cpu_2", 1e6), None);
        for name in ["plan", "device", "len", "min"] {
            let e = declaration_error(name, 100.0).unwrap_or_default();
            assert!(e.starts_with("[L0"), "{name}: {e}");
        }
        let e = declaration_error("HostCpu", 1e308).unwrap_or_default();
        assert!(e.starts_with("[L046]"), "{e}");
    }
}

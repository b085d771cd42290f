//! The driver: everything that touches the file system, shared by the
//! `gantry` binary and the workspace tests.
//!
//! The language crate never reads files; it asks a [`gantry_lang::source::Loader`].
//! [`FsLoader`] is that loader for real files: imports resolve relative to the
//! importing file first, then against each folder above it (so
//! `import "stdlib/hardware/h100.gantry"` works from anywhere inside a
//! project that has a `stdlib/`), then against the folders given with
//! `--lib`, then against the bundled standard library of this checkout.

/// `print!` to stdout that never panics: a closed pipe (`gantry kernels
/// ... | head -1`) ends the process quietly with exit code 0, since the
/// reader has all it asked for; any other write error is ignored.
#[macro_export]
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write;
        $crate::exit_on_closed_pipe(write!(std::io::stdout().lock(), $($t)*));
    }};
}

/// `println!` to stdout that never panics (see [`out!`]).
#[macro_export]
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write;
        $crate::exit_on_closed_pipe(writeln!(std::io::stdout().lock(), $($t)*));
    }};
}

/// `eprint!` to stderr that never panics: when stderr's reader has gone
/// away (`gantry check DIR 2>&1 | head -1`) the diagnostic is dropped and
/// the command still ends with its own exit code (`eprint!` panicked,
/// exit 101).
#[macro_export]
macro_rules! errprint {
    ($($t:tt)*) => {{
        use std::io::Write;
        let _ = write!(std::io::stderr().lock(), $($t)*);
    }};
}

/// `eprintln!` to stderr that never panics (see [`errprint!`]).
#[macro_export]
macro_rules! errln {
    ($($t:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stderr().lock(), $($t)*);
    }};
}

/// Ends the process quietly (exit 0) when stdout's reader has gone away.
pub fn exit_on_closed_pipe(r: std::io::Result<()>) {
    if let Err(e) = r
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
    }
}

pub mod explain;
pub mod fit_cli;
pub mod html;
pub mod plot;
pub mod runtime_cli;
pub mod serve_cli;
pub mod study_cli;
pub mod test_cli;

/// A metric's value as reports write it: with its unit when it has one.
pub fn fmt_metric(metric: &str, v: f64) -> String {
    match gantry_lang::check::metric_dim(metric) {
        Some(d) if !d.is_none() => gantry_lang::units::Quantity::new(v, d).to_string(),
        _ => gantry_lang::units::format_number(v),
    }
}

/// Prints a pin or planner error and returns its exit code: 2 for `C006`
/// (a malformed or out-of-range `--fix`/`--pin`, a usage error), 1 for
/// every other code (the pins do not fit this plan, or nothing is
/// feasible). One rule for every command (docs/PLANNER.md, "Exit codes").
pub fn pin_error(e: &gantry_compiler::point::PinError) -> std::process::ExitCode {
    pin_error_with(e, &Default::default())
}

/// [`pin_error`] for a point resolved with command-line `pins`: a `C001`
/// (too many devices) names the degrees given on the command line, the
/// knobs the user changed, rather than the compiler's guess.
pub fn pin_error_with(
    e: &gantry_compiler::point::PinError,
    pins: &std::collections::BTreeMap<String, gantry_compiler::point::Pin>,
) -> std::process::ExitCode {
    let given: Vec<&str> = ["dp", "tp", "pp", "cp"]
        .into_iter()
        .filter(|k| pins.contains_key(*k))
        .collect();
    let knob = match e.knob {
        "search" | "fix" => String::new(),
        _ if e.code == gantry_lang::diagnostic::Code::C001 && !given.is_empty() => {
            format!(" (knob `{}`)", given.join("`, `"))
        }
        k => format!(" (knob `{k}`)"),
    };
    crate::errln!("error[{}]: {}{knob}\n  help: {}", e.code, e.message, e.help);
    std::process::ExitCode::from(if e.code == gantry_lang::diagnostic::Code::C006 {
        2
    } else {
        1
    })
}

/// Warns (`C013`) about each command-line pin that overrides a different
/// value in the plan's `fix` block, naming both.
pub fn warn_overridden(
    flag: &str,
    pins: &std::collections::BTreeMap<String, gantry_compiler::point::Pin>,
    fixed: &std::collections::BTreeMap<String, gantry_lang::program::Domain>,
) {
    for (k, cli, plan) in gantry_compiler::point::overridden(pins, fixed) {
        crate::errln!(
            "warning[C013]: {flag} {k}={cli} overrides the plan's `fix {k} = {plan}`\n  help: the command line wins; drop `{k}` from {flag} to use the plan's value"
        );
    }
}

/// The one rule for "the default plan", shared by `plan`, `run` and the
/// tests (README, "Which plan runs"): without `--plan`, a command takes the
/// plan declared first in source order, that is the first in the file
/// named on the command line, or, when that file declares none, the first
/// in its imports in the order they are loaded (depth first). Never the
/// alphabetically first.
pub fn default_plan(
    program: &gantry_lang::program::Program,
) -> Option<&gantry_lang::program::Plan> {
    program
        .plans
        .values()
        .min_by_key(|p| (p.span.file, p.span.start))
}

/// The workload `run` takes from a file without plans, by the same rule as
/// [`default_plan`]: the first declared.
pub fn default_workload(
    program: &gantry_lang::program::Program,
) -> Option<&gantry_lang::program::Workload> {
    program
        .workloads
        .values()
        .min_by_key(|w| (w.span.file, w.span.start))
}

use std::io::Read;

use std::path::{Component, Path, PathBuf};

use gantry_lang::check::{self, Checked, MAX_FILE_BYTES};
use gantry_lang::source::{LoadError, Loader};

/// Loads `.gantry` files from disk.
#[derive(Debug, Clone, Default)]
pub struct FsLoader {
    /// Extra folders to resolve imports against.
    pub lib_dirs: Vec<PathBuf>,
}

impl FsLoader {
    pub fn new() -> FsLoader {
        FsLoader {
            lib_dirs: vec![PathBuf::from(env!("CARGO_MANIFEST_DIR"))],
        }
    }
}

/// Lexically normalizes a path (`a/./b/../c` is `a/c`), without touching the
/// file system, so the same file reached two ways gets one name.
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

impl Loader for FsLoader {
    fn resolve(&self, importer: &str, path: &str) -> Option<String> {
        let rel = Path::new(path);
        let dir = Path::new(importer).parent().unwrap_or(Path::new(""));
        let mut candidates: Vec<PathBuf> = Vec::new();
        if rel.is_absolute() {
            candidates.push(rel.to_path_buf());
        } else {
            let mut d = Some(dir);
            while let Some(x) = d {
                candidates.push(x.join(rel));
                d = x.parent();
            }
            // Relative importers reach the working directory last.
            candidates.push(rel.to_path_buf());
            for l in &self.lib_dirs {
                candidates.push(l.join(rel));
            }
        }
        candidates
            .into_iter()
            .map(|c| normalize(&c))
            .find(|c| c.is_file())
            .map(|c| c.to_string_lossy().into_owned())
    }

    fn load(&self, name: &str) -> Result<String, LoadError> {
        let meta = std::fs::metadata(name).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => LoadError::NotFound,
            _ => LoadError::Other(e.to_string()),
        })?;
        if meta.is_dir() {
            return Err(LoadError::Other("it is a directory".into()));
        }
        if meta.len() > MAX_FILE_BYTES as u64 {
            return Err(LoadError::TooLarge(meta.len()));
        }
        // Devices and pipes report a length of 0: the read itself is bounded.
        let bytes = match read_bounded(Path::new(name), MAX_FILE_BYTES as u64) {
            Ok(Ok(b)) => b,
            Ok(Err(n)) => return Err(LoadError::TooLarge(n)),
            Err(e) => return Err(LoadError::Other(e.to_string())),
        };
        String::from_utf8(bytes).map_err(|_| LoadError::NotUtf8)
    }
}

/// Reads at most `limit` bytes of a file. `Ok(Err(n))` when it holds more:
/// `n` is the bytes read before stopping (`limit` + 1), so `/dev/zero` or
/// an endless pipe costs `limit` bytes of memory, not all of it.
pub fn read_bounded(path: &Path, limit: u64) -> std::io::Result<Result<Vec<u8>, u64>> {
    let f = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    f.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    let n = bytes.len() as u64;
    Ok(if n > limit { Err(n) } else { Ok(bytes) })
}

/// Checks files on disk with the default loader.
pub fn check_files(paths: &[String], lib_dirs: &[PathBuf]) -> Checked {
    let mut loader = FsLoader::new();
    loader.lib_dirs.splice(0..0, lib_dirs.iter().cloned());
    let roots: Vec<String> = paths
        .iter()
        .map(|p| normalize(Path::new(p)).to_string_lossy().into_owned())
        .collect();
    check::check(&roots, &loader)
}

/// Whether folder `d` is walked for the first time: each folder once, by
/// its canonical path, so a symbolic link to a folder above it (a loop;
/// two made every walk exponential in the path length) is walked once.
pub fn first_visit(d: &Path, seen: &mut std::collections::HashSet<PathBuf>) -> bool {
    std::fs::canonicalize(d).is_ok_and(|c| seen.insert(c))
}

/// Every `.gantry` file under a folder, sorted (for tests and `validate`).
pub fn gantry_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if !first_visit(&d, &mut seen) {
            continue;
        }
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "gantry") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

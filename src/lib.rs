//! The driver: everything that touches the file system, shared by the
//! `gantry` binary and the workspace tests.
//!
//! The language crate never reads files; it asks a [`gantry_lang::source::Loader`].
//! [`FsLoader`] is that loader for real files: imports resolve relative to the
//! importing file first, then against each folder above it (so
//! `import "stdlib/hardware/h100.gantry"` works from anywhere inside a
//! project that has a `stdlib/`), then against the folders given with
//! `--lib`, then against the bundled standard library of this checkout.

pub mod runtime_cli;

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
        let bytes = std::fs::read(name).map_err(|e| LoadError::Other(e.to_string()))?;
        String::from_utf8(bytes).map_err(|_| LoadError::NotUtf8)
    }
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

/// Every `.gantry` file under a folder, sorted (for tests and `validate`).
pub fn gantry_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
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

//! Data-driven snapshot tests of the front end's diagnostics.
//!
//! One harness walks `tests/inputs/**/*.gantry` in sorted order, checks each
//! file from disk with [`gantry::check_files`] (so `import "stdlib/..."`
//! resolves as it does for users) and snapshots the source together with
//! what the checker says about it, so every snapshot reads alone:
//!
//! - `invalid/`: must produce at least one error; the snapshot holds
//!   `## Source` and `## Diagnostics`. A file named after a code
//!   (`L040_add_bytes_to_bandwidth.gantry`) must produce that code.
//! - `warning/`: must produce warnings and no errors; the snapshot holds
//!   `## Source`, `## Diagnostics` and `## Program`.
//! - `valid/`: must produce no diagnostic at all; the snapshot holds
//!   `## Source` and `## Program` (the resolved program's summary).
//!
//! Folders whose names start with `_` hold files that inputs import (the two
//! halves of an import cycle, say); they are not inputs themselves.
//! `pending/` holds inputs whose diagnostics are wrong or poor today (checker
//! bugs, recorded there); the harness skips it until they are fixed.
//!
//! Before anything is snapshotted, invariants are checked on every input:
//! every span lies inside its file on character boundaries, checking twice
//! gives the same diagnostics, and the category's expectation above holds.
//! Paths are relative to the package root (the working directory of tests),
//! so snapshots hold no absolute path; the two inputs that need a file no
//! repository should hold (not UTF-8, too large) are written at test time
//! into a temporary folder whose name is masked in the snapshot.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use gantry_lang::check::{Checked, MAX_FILE_BYTES};
use gantry_lang::diagnostic::{Code, Severity};

const INPUTS: &str = "tests/inputs";

/// Codes no input can produce, with the reason. Keep this empty unless a
/// code is truly unreachable from a file.
const UNREACHABLE: &[(Code, &str)] = &[];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Category {
    Valid,
    Warning,
    Invalid,
}

/// One input: its path relative to the package root and its category.
struct Input {
    path: String,
    category: Category,
}

impl Input {
    /// The snapshot name: the path under `tests/inputs` without the
    /// extension, folders joined with `__`.
    fn snapshot_name(&self) -> String {
        let rel = self
            .path
            .strip_prefix(INPUTS)
            .unwrap_or(&self.path)
            .trim_start_matches('/');
        rel.trim_end_matches(".gantry").replace('/', "__")
    }

    /// The code the file is named after (`L040_...`), if any.
    fn named_code(&self) -> Option<Code> {
        let file = Path::new(&self.path).file_name()?.to_str()?;
        let prefix = file.split('_').next()?;
        Code::ALL.iter().copied().find(|c| c.as_str() == prefix)
    }
}

/// Every `.gantry` file under `dir`, sorted, skipping `pending/` and
/// helper folders (`_name/`). Paths use `/` and are relative to the package root.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if p.is_dir() {
            if name == "pending" || name.starts_with('_') {
                continue;
            }
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "gantry") {
            out.push(p);
        }
    }
}

fn inputs() -> Vec<Input> {
    let mut paths = Vec::new();
    walk(Path::new(INPUTS), &mut paths);
    paths
        .into_iter()
        .map(|p| {
            let path = p
                .to_str()
                .expect("input paths are UTF-8")
                .replace('\\', "/");
            let top = path
                .strip_prefix(INPUTS)
                .unwrap_or(&path)
                .trim_start_matches('/');
            let category = match top.split('/').next() {
                Some("valid") => Category::Valid,
                Some("warning") => Category::Warning,
                Some("invalid") => Category::Invalid,
                other => {
                    panic!("{path}: inputs live under valid/, warning/ or invalid/, not {other:?}")
                }
            };
            Input { path, category }
        })
        .collect()
}

fn check(path: &str) -> Checked {
    gantry::check_files(&[path.to_string()], &[])
}

/// Every span of every diagnostic (primary and labels) lies inside a loaded
/// file, is not reversed, and starts and ends on character boundaries.
fn assert_spans_in_bounds(what: &str, checked: &Checked) {
    for d in &checked.diagnostics {
        let spans = std::iter::once(d.span).chain(d.labels.iter().map(|l| l.span));
        for s in spans {
            let file = checked.sources.get(s.file).unwrap_or_else(|| {
                panic!(
                    "{what}: {} `{}` points into no loaded file: {s:?}",
                    d.code, d.message
                )
            });
            let len = file.text.len();
            let (start, end) = (s.start as usize, s.end as usize);
            assert!(
                start <= end && end <= len,
                "{what}: {} `{}` has span {start}..{end} outside `{}` ({len} bytes)",
                d.code,
                d.message,
                file.name
            );
            assert!(
                file.text.is_char_boundary(start) && file.text.is_char_boundary(end),
                "{what}: {} `{}` has span {start}..{end} off a character boundary in `{}`",
                d.code,
                d.message,
                file.name
            );
        }
    }
}

/// Checks `path` twice and asserts the two runs agree.
fn check_deterministic(path: &str) -> Checked {
    let first = check(path);
    let second = check(path);
    assert_eq!(
        first.diagnostics, second.diagnostics,
        "{path}: diagnostics differ between two runs"
    );
    assert_eq!(
        first.render(false),
        second.render(false),
        "{path}: rendering differs between two runs"
    );
    first
}

fn codes(checked: &Checked) -> BTreeSet<Code> {
    checked.diagnostics.iter().map(|d| d.code).collect()
}

/// The snapshot text of one input, after its invariants are checked.
fn snapshot_content(input: &Input) -> String {
    let path = &input.path;
    let source =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    let checked = check_deterministic(path);
    assert_spans_in_bounds(path, &checked);
    let errors = checked
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let warnings = checked.diagnostics.len() - errors;
    let rendered = checked.render(false);
    match input.category {
        Category::Invalid => {
            assert!(
                errors > 0,
                "{path}: an invalid input must produce an error; got none"
            );
        }
        Category::Warning => {
            assert!(
                errors == 0 && warnings > 0,
                "{path}: a warning input must produce warnings and no errors; got:\n{rendered}"
            );
        }
        Category::Valid => {
            assert!(
                checked.diagnostics.is_empty(),
                "{path}: a valid input must produce no diagnostics; got:\n{rendered}"
            );
        }
    }
    if let Some(code) = input.named_code() {
        assert!(
            codes(&checked).contains(&code),
            "{path}: the file is named after {code} but does not produce it; got:\n{rendered}"
        );
    }
    let mut out = String::new();
    let _ = write!(out, "## Source\n\n{source}");
    if !source.ends_with('\n') {
        out.push('\n');
    }
    if input.category != Category::Valid {
        let _ = write!(out, "\n## Diagnostics\n\n{rendered}");
    }
    if input.category != Category::Invalid {
        let _ = write!(out, "\n## Program\n\n{}", checked.program.summary());
    }
    let cwd = std::env::current_dir().expect("working directory");
    assert!(
        !out.contains(cwd.to_str().unwrap_or("\u{0}")),
        "{path}: the snapshot would hold an absolute path"
    );
    out
}

fn assert_snapshot_named(name: &str, description: &str, content: &str) {
    insta::with_settings!({
        snapshot_path => "snapshots",
        prepend_module_to_snapshot => false,
        omit_expression => true,
        description => description,
    }, {
        insta::assert_snapshot!(name, content);
    });
}

#[test]
fn inputs_match_their_snapshots() {
    let inputs = inputs();
    let count = |c: Category| inputs.iter().filter(|i| i.category == c).count();
    assert!(
        count(Category::Invalid) >= 45,
        "expected at least 45 invalid inputs"
    );
    assert!(
        count(Category::Valid) >= 8,
        "expected at least 8 valid inputs"
    );
    let mut failed = Vec::new();
    for input in &inputs {
        let name = input.snapshot_name();
        // One failing input must not hide the others: each is checked and
        // snapshotted on its own, and the failures are listed at the end.
        let result = std::panic::catch_unwind(|| {
            let content = snapshot_content(input);
            assert_snapshot_named(&name, &input.path, &content);
        });
        if result.is_err() {
            failed.push(input.path.clone());
        }
    }
    assert!(
        failed.is_empty(),
        "{} inputs failed:\n  {}",
        failed.len(),
        failed.join("\n  ")
    );
}

/// A fresh folder for files written at test time, and its path as text.
fn temp_dir(name: &str) -> (PathBuf, String) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("snapshots-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    let text = dir.to_str().expect("temp dir is UTF-8").to_string();
    (dir, text)
}

/// Files that cannot live in the repository: one not UTF-8 and one larger
/// than the limit, each imported by a root file and also checked as a root.
/// Returns the codes produced and the snapshot text; `tag` keeps the
/// folders of tests running in parallel apart.
fn unreadable_files(tag: &str) -> (BTreeSet<Code>, String) {
    let (dir, dir_text) = temp_dir(tag);
    let main = "// Both imported files are written by the test: one holds bytes that are\n\
                // not UTF-8, the other is one byte over the size limit (a sparse file).\n\
                import \"latin1.gantry\"\n\
                import \"huge.gantry\"\n";
    std::fs::write(dir.join("main.gantry"), main).expect("write main");
    std::fs::write(dir.join("latin1.gantry"), b"let caf\xe9 = 1\n").expect("write latin1");
    let huge = std::fs::File::create(dir.join("huge.gantry")).expect("create huge");
    huge.set_len(MAX_FILE_BYTES as u64 + 1).expect("size huge");
    drop(huge);
    let mut out = format!("## Source\n\n{main}");
    let mut seen = BTreeSet::new();
    for root in ["main.gantry", "latin1.gantry", "huge.gantry"] {
        let path = format!("{dir_text}/{root}");
        let checked = check_deterministic(&path);
        assert_spans_in_bounds(&path, &checked);
        assert!(checked.has_errors(), "{path}: expected an error");
        seen.extend(codes(&checked));
        let _ = write!(
            out,
            "\n## Diagnostics (checking {root})\n\n{}",
            checked.render(false)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    (seen, out.replace(&dir_text, "$TMP"))
}

#[test]
fn unreadable_files_are_reported() {
    let (seen, content) = unreadable_files("unreadable");
    assert!(
        seen.contains(&Code::L005) && seen.contains(&Code::L006),
        "{seen:?}"
    );
    assert_snapshot_named(
        "generated__L005_L006_unreadable_files",
        "written at test time into $TMP",
        &content,
    );
}

/// Every stored snapshot belongs to an input (or to the generated files):
/// an input moved to `pending/` or renamed must take its snapshot along.
#[test]
fn no_orphan_snapshots() {
    let mut expected: BTreeSet<String> = inputs().iter().map(Input::snapshot_name).collect();
    expected.insert("generated__L005_L006_unreadable_files".to_string());
    let mut orphans = Vec::new();
    for e in std::fs::read_dir("tests/snapshots").expect("read tests/snapshots") {
        let name = e
            .expect("directory entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if let Some(stem) = name.strip_suffix(".snap")
            && !expected.contains(stem)
        {
            orphans.push(name);
        }
    }
    orphans.sort();
    assert!(
        orphans.is_empty(),
        "snapshots without an input: {}",
        orphans.join(", ")
    );
}

/// Every front-end code is produced by some invalid or warning input (or by
/// the files written at test time), unless listed in [`UNREACHABLE`].
#[test]
fn every_code_is_covered() {
    let mut seen: BTreeSet<Code> = BTreeSet::new();
    for input in inputs().iter().filter(|i| i.category != Category::Valid) {
        seen.extend(codes(&check(&input.path)));
    }
    seen.extend(unreadable_files("coverage").0);
    let unreachable: BTreeSet<Code> = UNREACHABLE.iter().map(|(c, _)| *c).collect();
    // Only the front end's codes (`L0xx`): `check_files` never produces the
    // compiler's (`C0xx`), which the compiler's own tests cover.
    let missing: Vec<&str> = Code::ALL
        .iter()
        .filter(|c| c.as_str().starts_with('L'))
        .filter(|c| !seen.contains(c) && !unreachable.contains(c))
        .map(|c| c.as_str())
        .collect();
    assert!(
        missing.is_empty(),
        "no input produces: {}",
        missing.join(", ")
    );
    let stale: Vec<&str> = unreachable
        .iter()
        .filter(|c| seen.contains(c))
        .map(|c| c.as_str())
        .collect();
    assert!(
        stale.is_empty(),
        "listed as unreachable but produced: {}",
        stale.join(", ")
    );
}

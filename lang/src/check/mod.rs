//! The checker: from parsed files to a [`Program`].
//!
//! Order of work: load the root files and their imports (depth first, so a
//! cycle is seen as a file already on the stack), index every top-level
//! declaration by name (one namespace across files, so duplicates are
//! errors wherever they live), then evaluate: constants lazily, hardware and
//! workloads by instantiation (memoized per argument list), plans and
//! studies last. Everything that can go wrong becomes a diagnostic; the
//! checker never stops at the first one.

mod decls;
mod engine;
mod eval;
mod fleet;
mod model;
mod ops;
mod serve;
mod value;

use std::collections::BTreeMap;
use std::rc::Rc;

pub use decls::{
    EFFICIENCY, EFFICIENCY_PHASES, KNOBS, MAX_KNOB_VALUE, METRICS, MIN_EFFICIENCY, NOT_LENT,
    SERVE_KNOBS, metric_dim, study_metric_dim,
};
pub use engine::{ENGINE_KEYS, ENGINE_RECORD_KEYS, ENGINE_TERMS};
pub use eval::MAX_EVAL_DEPTH;
pub use ops::OP_NAMES;
pub use serve::{MAX_RATE, MIN_CV, MIN_RATE};

use crate::ast::{Decl, DeclKind, Expr, ExprKind, File};
use crate::diagnostic::{self, Code, Diagnostic};
use crate::parser;
use crate::program::*;
use crate::source::{LoadError, Loader, MemLoader, SourceMap};
use crate::span::{FileId, Span};
use value::{Instance, Value};

/// Largest file accepted, in bytes.
pub const MAX_FILE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Clone, Debug)]
pub(crate) struct DeclRef {
    pub file: usize,
    pub idx: usize,
    pub kind: DeclKind,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub(crate) enum LetState {
    Pending(usize, usize),
    InProgress,
    Done(Value),
}

/// The result of checking: the program (complete only when there are no
/// errors), every diagnostic in a deterministic order, and the sources they
/// point into.
#[derive(Debug)]
pub struct Checked {
    pub program: Program,
    pub diagnostics: Vec<Diagnostic>,
    pub sources: SourceMap,
}

impl Checked {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(|d| d.is_error())
    }
    pub fn render(&self, color: bool) -> String {
        diagnostic::render(&self.diagnostics, &self.sources, color)
    }
}

pub(crate) struct Checker {
    pub sources: SourceMap,
    pub files: Rc<Vec<File>>,
    pub decls: BTreeMap<String, DeclRef>,
    /// The names of `decls` in the order they were indexed (load order,
    /// then declaration order): the order `evaluate` visits them in.
    decl_order: Vec<String>,
    pub lets: BTreeMap<String, LetState>,
    pub diags: Vec<Diagnostic>,
    pub program: Program,
    pub models: BTreeMap<String, Option<ModelInstance>>,
    pub memo_devices: BTreeMap<String, Option<Device>>,
    pub memo_nodes: BTreeMap<String, Option<Node>>,
    pub memo_clusters: BTreeMap<String, Option<Cluster>>,
    pub memo_workloads: BTreeMap<String, Option<Workload>>,
    pub memo_engines: BTreeMap<String, Option<Engine>>,
    /// Each declaration named bare, as a value: its instance with the
    /// default arguments (`Checker::lookup_global`).
    pub bare_decls: BTreeMap<String, Value>,
    /// Instances being built, to report cyclic definitions.
    in_progress: Vec<String>,
    /// Nested [`Checker::eval`] calls now, and whether `L013` already said
    /// that they went too deep ([`eval::MAX_EVAL_DEPTH`]).
    eval_depth: usize,
    eval_too_deep: bool,
    /// Evaluations and builds refused for depth after the one `L013`: each
    /// counts as an error, so what contains it fails (is memoized as
    /// failed) rather than passing with a part quietly missing.
    depth_failures: usize,
    /// Loaded files, each after the files it imports (depth-first post
    /// order): the order declarations are indexed in, so that of two
    /// declarations with one name the imported one counts as the first.
    load_order: Vec<usize>,
    /// Where the lexer and parser reported errors, so the checker can stay
    /// quiet about what a syntax error already explains.
    syntax_errors: Vec<Span>,
    /// Files named by `trace("file.csv")` in each source file, read when
    /// that file is loaded (the loader is gone by evaluation): keyed by
    /// the naming file and the path as written; the text, or why it could
    /// not be read.
    pub data: BTreeMap<(FileId, String), Result<String, String>>,
}

/// The most instances built inside one another (a cluster builds its node,
/// the node its device, a device the device it borrows factors from, ...):
/// real files nest under 10; a chain past it is `L013`, not a stack
/// overflow (each level is a few KB of stack in a debug build, and checks
/// run on 2 MB threads).
pub const MAX_BUILD_DEPTH: usize = 128;

/// Checks the given root files and everything they import.
pub fn check(roots: &[String], loader: &dyn Loader) -> Checked {
    let mut c = Checker {
        sources: SourceMap::default(),
        files: Rc::new(Vec::new()),
        decls: BTreeMap::new(),
        decl_order: Vec::new(),
        lets: BTreeMap::new(),
        diags: Vec::new(),
        program: Program::default(),
        models: BTreeMap::new(),
        memo_devices: BTreeMap::new(),
        memo_nodes: BTreeMap::new(),
        memo_clusters: BTreeMap::new(),
        memo_workloads: BTreeMap::new(),
        memo_engines: BTreeMap::new(),
        bare_decls: BTreeMap::new(),
        in_progress: Vec::new(),
        eval_depth: 0,
        eval_too_deep: false,
        depth_failures: 0,
        load_order: Vec::new(),
        syntax_errors: Vec::new(),
        data: BTreeMap::new(),
    };
    let mut files = Vec::new();
    let mut loaded: BTreeMap<String, FileId> = BTreeMap::new();
    for r in roots {
        if loaded.contains_key(r) {
            continue;
        }
        c.load(r, None, loader, &mut files, &mut loaded, &mut Vec::new());
    }
    c.files = Rc::new(files);
    c.index();
    c.evaluate();
    let mut diags = std::mem::take(&mut c.diags);
    diagnostic::sort(&mut diags);
    diags.dedup();
    let program = if diags.iter().any(|d| d.is_error()) {
        // Keep what was resolved, but the caller must not trust it whole.
        c.program
    } else {
        c.program
    };
    Checked {
        program,
        diagnostics: diags,
        sources: c.sources,
    }
}

/// The string arguments of `trace(...)` calls in `e`: the request files a
/// `serve` workload's arrivals or lengths may name (`crate::trace`).
fn trace_paths(e: &Expr, out: &mut Vec<String>) {
    match &e.kind {
        ExprKind::Call(callee, args) => {
            if let ExprKind::Name(n) = &callee.kind
                && n == "trace"
                && let Some(ExprKind::Str(path)) = args.first().map(|a| &a.value.kind)
                && !out.contains(path)
            {
                out.push(path.clone());
            }
            trace_paths(callee, out);
            for a in args {
                trace_paths(&a.value, out);
            }
        }
        ExprKind::Neg(a) | ExprKind::Member(a, _) => trace_paths(a, out),
        ExprKind::Binary(_, a, b) | ExprKind::At(a, b) => {
            trace_paths(a, out);
            trace_paths(b, out);
        }
        ExprKind::Range(a, b, c) => {
            trace_paths(a, out);
            trace_paths(b, out);
            if let Some(c) = c {
                trace_paths(c, out);
            }
        }
        ExprKind::List(v) | ExprKind::Set(v) => v.iter().for_each(|x| trace_paths(x, out)),
        ExprKind::Record(fields) => fields.iter().for_each(|f| trace_paths(&f.value, out)),
        ExprKind::Number(..)
        | ExprKind::Quantity(..)
        | ExprKind::Str(_)
        | ExprKind::Bool(_)
        | ExprKind::Name(_)
        | ExprKind::Error => {}
    }
}

/// Checks one in-memory source (tests, fuzzing, `fmt` round trips).
pub fn check_source(name: &str, text: &str) -> Checked {
    let mut l = MemLoader::default();
    l.files.insert(name.to_string(), text.to_string());
    check(&[name.to_string()], &l)
}

impl Checker {
    pub(crate) fn error_count(&self) -> usize {
        self.diags.iter().filter(|d| d.is_error()).count() + self.depth_failures
    }

    /// True if a lexer or parser error lies inside `span` (a declaration, an
    /// item). Such a declaration is memoized as failed, and nothing is
    /// reported *missing* from it (a field, an output, a phase): the thing
    /// is usually there but broken, and the syntax error already says so.
    pub(crate) fn broken(&self, span: Span) -> bool {
        self.syntax_errors.iter().any(|e| {
            e.file == span.file && span.start <= e.start && e.start < span.end.max(span.start + 1)
        })
    }

    /// Loads one file and, depth first, its imports.
    fn load(
        &mut self,
        name: &str,
        import_span: Option<Span>,
        loader: &dyn Loader,
        files: &mut Vec<File>,
        loaded: &mut BTreeMap<String, FileId>,
        stack: &mut Vec<String>,
    ) {
        let text = match loader.load(name) {
            Ok(t) => t,
            Err(e) => {
                let id = self.sources.add(name, "");
                files.push(File { decls: Vec::new() });
                loaded.insert(name.to_string(), id);
                let at = import_span.unwrap_or(Span::new(0, 0).in_file(id));
                let (code, msg, help) = match e {
                    LoadError::NotFound => (
                        Code::L020,
                        format!("cannot find `{name}`"),
                        "check the path".to_string(),
                    ),
                    LoadError::NotUtf8 => (
                        Code::L005,
                        format!("`{name}` is not UTF-8 text"),
                        "Gantry sources are UTF-8 text files; is this a binary file?".to_string(),
                    ),
                    LoadError::TooLarge(n) => (
                        Code::L006,
                        format!(
                            "`{name}` is {n} bytes, more than the {} byte limit",
                            MAX_FILE_BYTES
                        ),
                        "split the file and import the parts".to_string(),
                    ),
                    LoadError::Other(m) => (
                        Code::L020,
                        format!("cannot read `{name}`: {m}"),
                        "check the path and permissions".to_string(),
                    ),
                };
                self.diags.push(
                    Diagnostic::error(code, msg, at)
                        .with_label(at, "while loading this")
                        .with_help(help),
                );
                return;
            }
        };
        if text.len() > MAX_FILE_BYTES {
            let id = self.sources.add(name, "");
            files.push(File { decls: Vec::new() });
            loaded.insert(name.to_string(), id);
            let at = import_span.unwrap_or(Span::new(0, 0).in_file(id));
            self.diags.push(
                Diagnostic::error(
                    Code::L006,
                    format!(
                        "`{name}` is {} bytes, more than the {MAX_FILE_BYTES} byte limit",
                        text.len()
                    ),
                    at,
                )
                .with_label(at, "too large"),
            );
            return;
        }
        let id = self.sources.add(name, text);
        let parsed = parser::parse(self.sources.text(id), id);
        self.syntax_errors.extend(
            parsed
                .diagnostics
                .iter()
                .filter(|d| d.is_error())
                .map(|d| d.span),
        );
        self.diags.extend(parsed.diagnostics);
        let file = parsed.file;
        let imports: Vec<(String, Span)> = file
            .decls
            .iter()
            .filter_map(|d| match d {
                Decl::Import { path, span } => Some((path.clone(), *span)),
                _ => None,
            })
            .collect();
        let mut named = Vec::new();
        for d in &file.decls {
            match d {
                Decl::Let { value, .. } => trace_paths(value, &mut named),
                Decl::Block(b) => {
                    for it in &b.items {
                        trace_paths(&it.value, &mut named);
                    }
                }
                _ => {}
            }
        }
        for path in named {
            let read = match loader.resolve(name, &path) {
                None => Err("not found (paths are relative to the file that names them)".into()),
                Some(full) => loader.load(&full).map_err(|e| match e {
                    LoadError::NotFound => "not found".to_string(),
                    LoadError::NotUtf8 => "not UTF-8 text".to_string(),
                    LoadError::TooLarge(n) => {
                        format!("{n} bytes, more than the {MAX_FILE_BYTES} byte limit")
                    }
                    LoadError::Other(m) => m,
                }),
            };
            self.data.insert((id, path), read);
        }
        let index = files.len();
        files.push(file);
        loaded.insert(name.to_string(), id);
        stack.push(name.to_string());
        for (path, span) in imports {
            let Some(resolved) = loader.resolve(name, &path) else {
                self.diags.push(
                    Diagnostic::error(Code::L020, format!("cannot find imported file `{path}`"), span)
                        .with_label(span, "imported here")
                        .with_help("paths are relative to the importing file, or to a folder above it that holds `stdlib/`"),
                );
                continue;
            };
            if let Some(pos) = stack.iter().position(|s| *s == resolved) {
                let mut cycle: Vec<String> = stack[pos..].to_vec();
                cycle.push(resolved.clone());
                self.diags.push(
                    Diagnostic::error(
                        Code::L021,
                        format!("import cycle: {}", cycle.join(" -> ")),
                        span,
                    )
                    .with_label(span, "this import closes the cycle")
                    .with_help("move the shared declarations into a file that both import"),
                );
                continue;
            }
            if loaded.contains_key(&resolved) {
                continue;
            }
            self.load(&resolved, Some(span), loader, files, loaded, stack);
        }
        stack.pop();
        self.load_order.push(index);
    }

    /// Indexes top-level declarations; reports duplicates.
    fn index(&mut self) {
        let files = self.files.clone();
        let mut order = self.load_order.clone();
        order.extend((0..files.len()).filter(|i| !self.load_order.contains(i)));
        for fi in order {
            let f = &files[fi];
            for (di, d) in f.decls.iter().enumerate() {
                let (name, kind) = match d {
                    Decl::Let { name, .. } => (name, DeclKind::Let),
                    Decl::Block(b) => (&b.name, b.kind),
                    Decl::Model(m) => (&m.name, DeclKind::Model),
                    Decl::Plan(p) => (&p.name, p.kind),
                    _ => continue,
                };
                if let Some(prev) = self.decls.get(&name.name) {
                    self.diags.push(
                        Diagnostic::error(Code::L031, format!("`{}` is defined twice", name.name), name.span)
                            .with_label(name.span, format!("this {} ...", kind.keyword()))
                            .with_label(prev.span, format!("... has the same name as this {}", prev.kind.keyword()))
                            .with_help("every top-level declaration needs its own name, across all imported files"),
                    );
                    continue;
                }
                if crate::check::ops::is_op(&name.name) {
                    self.diags.push(
                        Diagnostic::error(
                            Code::L031,
                            format!("`{}` is the name of a built-in op", name.name),
                            name.span,
                        )
                        .with_label(name.span, "shadows the op")
                        .with_help("choose another name"),
                    );
                    continue;
                }
                if eval::BUILTIN_FUNCTIONS.contains(&name.name.as_str()) {
                    self.diags.push(
                        Diagnostic::error(
                            Code::L031,
                            format!("`{}` is the name of a built-in function", name.name),
                            name.span,
                        )
                        .with_label(name.span, "shadows the function")
                        .with_help("choose another name"),
                    );
                    continue;
                }
                self.decl_order.push(name.name.clone());
                self.decls.insert(
                    name.name.clone(),
                    DeclRef {
                        file: fi,
                        idx: di,
                        kind,
                        span: name.span,
                    },
                );
                if kind == DeclKind::Let {
                    self.lets
                        .insert(name.name.clone(), LetState::Pending(fi, di));
                }
            }
        }
    }

    fn evaluate(&mut self) {
        // In the order declared (imports first): a declaration that names
        // an earlier one finds it already made, so a chain of declarations
        // each naming the one before is evaluated one level deep per link
        // whatever the names (`D9`, `D10`, ... sort out of chain order).
        let decls: Vec<(String, DeclRef)> = self
            .decl_order
            .iter()
            .filter_map(|k| Some((k.clone(), self.decls.get(k)?.clone())))
            .collect();
        let files = self.files.clone();
        for (name, d) in &decls {
            match &files[d.file].decls[d.idx] {
                Decl::Let { .. } => {
                    let v = match self.lets.get(name).cloned() {
                        Some(LetState::Pending(f, i)) => self.eval_let(name, f, i),
                        Some(LetState::Done(v)) => v,
                        _ => Value::Error,
                    };
                    if let Value::Num(q) = v {
                        self.program.constants.insert(name.clone(), q);
                    }
                }
                Decl::Block(b) => {
                    // Declarations whose parameters all have defaults are
                    // instantiated on their own, so their errors show even
                    // when nothing uses them.
                    if b.params.iter().any(|p| p.default.is_none()) {
                        continue;
                    }
                    let Some(args) = self.bind_params(name, &b.params, Vec::new(), b.name.span)
                    else {
                        continue;
                    };
                    let inst = Instance::new(b.kind, name.clone(), args);
                    match b.kind {
                        DeclKind::Device => {
                            self.device(&inst, b.name.span);
                        }
                        DeclKind::Node => {
                            self.node(&inst, b.name.span);
                        }
                        DeclKind::Cluster => {
                            self.cluster(&inst, b.name.span);
                        }
                        DeclKind::Workload => {
                            self.workload(&inst, b.name.span);
                        }
                        DeclKind::Table => {
                            self.table(&inst, b.name.span);
                        }
                        DeclKind::Engine => {
                            self.engine(&inst, b.name.span);
                        }
                        _ => {}
                    }
                }
                Decl::Model(m) => {
                    if m.params.iter().all(|p| p.default.is_some())
                        && let Some(args) =
                            self.bind_params(name, &m.params, Vec::new(), m.name.span)
                    {
                        let inst = Instance::new(DeclKind::Model, name.clone(), args);
                        self.build_model(&inst);
                    }
                }
                Decl::Plan(p) => {
                    let p = p.clone();
                    self.plan(&p);
                }
                _ => {}
            }
        }
    }

    /// `L013` for a nesting past its limit, once per check; later ones are
    /// only counted (`depth_failures`).
    pub(crate) fn too_deep(&mut self, span: Span, message: String, label: &str, help: &str) {
        if self.eval_too_deep {
            self.depth_failures += 1;
            return;
        }
        self.eval_too_deep = true;
        self.diags.push(
            Diagnostic::error(Code::L013, message, span)
                .with_label(span, label)
                .with_help(help),
        );
    }

    /// Marks an instance as being built; false (and a diagnostic) on a
    /// cycle, or past [`MAX_BUILD_DEPTH`] instances built inside one another
    /// (`L013`, once per check): a device that borrows its factors from one
    /// that borrows from another, and so on, builds each lender inside the
    /// borrower, and 5,000 such links overflowed the stack (an abort).
    pub(crate) fn enter(&mut self, inst: &Instance, span: Span) -> bool {
        let key = inst.key();
        if self.in_progress.contains(&key) {
            self.diags.push(
                Diagnostic::error(
                    Code::L037,
                    format!("`{}` is defined in terms of itself", inst.label()),
                    span,
                )
                .with_label(span, "used here while it is being built"),
            );
            return false;
        }
        if self.in_progress.len() >= MAX_BUILD_DEPTH {
            self.too_deep(
                span,
                format!(
                    "declarations built inside one another deeper than {MAX_BUILD_DEPTH} levels: a chain of declarations too long to follow"
                ),
                "too deep to build here",
                "shorten the chain (e.g. of devices each borrowing `efficiency` from the next): borrow from the device that declares the factors",
            );
            return false;
        }
        self.in_progress.push(key);
        true
    }

    pub(crate) fn leave(&mut self, key: &str) {
        if let Some(pos) = self.in_progress.iter().rposition(|k| k == key) {
            self.in_progress.remove(pos);
        }
    }
}

/// The closest known name, for "did you mean" help (edit distance <= 2,
/// or <= 1 for short names). Ties go to the likelier slip: a name that is a
/// prefix of the other (`tpp` -> `tp`), then one with the same first
/// letter, then one whose letters appear in order in the other; then to
/// the alphabetically first.
pub fn suggest<'a>(name: &str, known: impl Iterator<Item = &'a str>) -> Option<String> {
    let limit = if name.len() <= 3 { 1 } else { 2 };
    let mut best: Option<((usize, u8, &str), &str)> = None;
    for k in known {
        if k == name || k.is_empty() {
            continue;
        }
        let d = edit_distance(name, k);
        if d > limit {
            continue;
        }
        let key = (d, closeness(name, k), k);
        if best.is_none_or(|(bk, _)| key < bk) {
            best = Some((key, k));
        }
    }
    best.map(|(_, k)| k.to_string())
}

/// 0 for a prefix either way, 1 for the same first letter, 2 for a
/// subsequence either way, 3 otherwise.
fn closeness(a: &str, b: &str) -> u8 {
    let subsequence = |short: &str, long: &str| {
        let mut it = long.chars();
        short.chars().all(|c| it.any(|x| x == c))
    };
    if a.starts_with(b) || b.starts_with(a) {
        0
    } else if a.chars().next() == b.chars().next() {
        1
    } else if subsequence(a, b) || subsequence(b, a) {
        2
    } else {
        3
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    if a.len().abs_diff(b.len()) > 2 {
        return usize::MAX;
    }
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(
            suggest("d_modle", ["d_model", "d_ff"].into_iter()),
            Some("d_model".into())
        );
        assert_eq!(suggest("zzz", ["d_model"].into_iter()), None);
        // Ties: a prefix beats an alphabetically earlier name.
        assert_eq!(suggest("tpp", ["pp", "tp"].into_iter()), Some("tp".into()));
        assert_eq!(suggest("dpp", ["pp", "dp"].into_iter()), Some("dp".into()));
        // Then a shared first letter.
        assert_eq!(
            suggest("bxtch", ["axtch", "batch"].into_iter()),
            Some("batch".into())
        );
    }
}

#[cfg(test)]
mod chain_tests {
    use super::*;

    /// One device per link, each borrowing its training factors from the
    /// one before through a parameter's default (`D7(prev = D6)`); the
    /// names sort out of chain order (`D10` before `D2`).
    fn chain(links: usize, reversed: bool) -> String {
        let dev = |name: String, eff: String| {
            format!(
                "device {name} {{ compute {{ bf16 = 100 TFLOP/s }}; memory 1 GB @ 1 TB/s; power 100 W; efficiency {eff} }}\n"
            )
        };
        let mut s = String::new();
        if reversed {
            // Each borrows from the next, declared after it: building D0
            // builds D1 inside it, which builds D2, ...
            for k in 0..links {
                s.push_str(&dev(format!("D{k}"), format!("{{ train = D{} }}", k + 1)));
            }
            s.push_str(&dev(format!("D{links}"), "{ matmul = 0.7 }".into()));
        } else {
            s.push_str(&dev("D0".into(), "{ matmul = 0.7 }".into()));
            for k in 1..=links {
                s.push_str(&dev(
                    format!("D{k}(prev = D{})", k - 1),
                    "{ train = prev }".into(),
                ));
            }
        }
        s
    }

    /// 20,000 devices, each derived from the one before: every instance key
    /// spelled out the whole chain, so checking took time and memory
    /// quadratic in its length (5,000 links: minutes and gigabytes), and
    /// the defaults were evaluated as deep as the chain (L013 past 512).
    /// Now each link is made once, one level deep, with a short key.
    #[test]
    fn a_long_chain_of_derived_devices_is_checked_link_by_link() {
        let n = 20_000;
        let c = check_source("chain.gantry", &chain(n, false));
        assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics.first());
        assert_eq!(c.program.devices.len(), n + 1);
        let last = c
            .program
            .devices
            .values()
            .find(|d| d.name.starts_with(&format!("D{n}(")))
            .expect("the last link is in the program");
        // The factors come down the whole chain from D0, and the band
        // names the device they were fitted on.
        assert_eq!(
            last.efficiency.get("train.matmul").map(|q| q.value),
            Some(0.7)
        );
        assert_eq!(last.borrowed.get("train").map(String::as_str), Some("D0"));
        // Its name spells out the nearest links and elides the rest.
        assert!(
            last.name
                .starts_with(&format!("D{n}(prev=D{}(prev=", n - 1))
        );
        assert!(last.name.len() < 400, "{}", last.name);
    }

    /// A chain of devices each borrowing from the next, built inside one
    /// another: 5,000 links overflowed the stack (an abort). Now past
    /// `MAX_BUILD_DEPTH` it is one `L013`, and the borrowers of the device
    /// refused fail with it rather than pass without factors (`L093`).
    #[test]
    fn a_chain_built_inside_one_another_too_deep_is_l013() {
        let c = check_source("deep.gantry", &chain(2_000, true));
        let codes: Vec<Code> = c.diagnostics.iter().map(|d| d.code).collect();
        assert_eq!(codes, vec![Code::L013], "{}", c.render(false));
    }
}

#[cfg(test)]
mod sweep_label_tests {
    use super::*;

    /// A sweep's points closer than 6 significant digits printed the same
    /// name (`Pod(hbm=80 GB)` twice) and shared an instance key, so the
    /// second system was the first. Their names now carry the digits that
    /// tell them apart, their memory is each its own, and a sweep of
    /// points 6 digits tell apart keeps its short names.
    #[test]
    fn close_sweep_points_get_distinct_names_and_systems() {
        let src = |points: &str| {
            format!(
                "device D(hbm = 80 GB) {{ compute {{ bf16 = 100 TFLOP/s }}; memory hbm = hbm @ 1 TB/s; power 100 W }}\n\
                 node N(hbm = 80 GB) {{ device D(hbm = hbm) x 1 }}\n\
                 cluster Pod(hbm = 80 GB) {{ node N(hbm = hbm) x 1 }}\n\
                 model M(d) {{ input t: i32[batch, seq]; x = embedding(t, 16, d); output y = linear(x, d, d) }}\n\
                 workload W {{ model M(d = 8); train {{ global_batch = 1, seq = 4, dtype = bf16, optimizer = adamw }} }}\n\
                 study S on Pod(hbm = {points}) {{ workloads {{ W = 1 }}; objective maximize throughput }}\n"
            )
        };
        let c = check_source("sweep.gantry", &src("{80 GB, 80.0000001 GB, 96 GB}"));
        assert!(!c.has_errors(), "{:?}", c.diagnostics);
        let systems = &c.program.studies["S"].systems;
        let names: Vec<&str> = systems.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["Pod(hbm=80 GB)", "Pod(hbm=80.0000001 GB)", "Pod(hbm=96 GB)"]
        );
        assert_ne!(
            systems[0].node.device.memories[0].capacity,
            systems[1].node.device.memories[0].capacity
        );
        let c = check_source("sweep.gantry", &src("{80 GB, 80.5 GB}"));
        let names: Vec<&str> = c.program.studies["S"]
            .systems
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names, ["Pod(hbm=80 GB)", "Pod(hbm=80.5 GB)"]);
    }
}

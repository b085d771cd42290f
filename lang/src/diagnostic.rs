//! Diagnostics are data; rendering is one function.
//!
//! Every problem the front end finds becomes a [`Diagnostic`] with a stable
//! [`Code`], a lowercase message naming the offending item, labels on exact
//! spans and an optional `help:`. Rendering (ariadne text, or JSON for tools)
//! lives in [`render`] and [`to_json`], apart from the data, so tests can
//! assert on codes and spans and snapshots can hold the rendered text.

use std::fmt;

use serde::Serialize;

use crate::source::SourceMap;
use crate::span::{FileId, Span};

#[derive(Clone, Copy, PartialEq, Eq, Debug, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

macro_rules! codes {
    ($($code:ident => $desc:literal,)*) => {
        /// Stable diagnostic codes: `L0xx` front end, `C0xx` compiler. Never renumber; retire
        /// codes by leaving them unused.
        #[derive(Clone, Copy, PartialEq, Eq, Debug, PartialOrd, Ord, Hash)]
        pub enum Code { $($code,)* }
        impl Code {
            pub const ALL: &'static [Code] = &[$(Code::$code,)*];
            pub fn as_str(self) -> &'static str {
                match self { $(Code::$code => stringify!($code),)* }
            }
            /// One line on what the code means (`gantry explain`, docs).
            pub fn description(self) -> &'static str {
                match self { $(Code::$code => $desc,)* }
            }
        }
    };
}

codes! {
    L001 => "unexpected character",
    L002 => "unterminated string or comment",
    L003 => "invalid number literal",
    L004 => "unknown unit",
    L005 => "file is not valid UTF-8 text",
    L006 => "file too large",
    L010 => "syntax error: unexpected token",
    L011 => "syntax error: unexpected end of file",
    L013 => "nesting too deep",
    L014 => "too many errors; the rest are not shown",
    L020 => "imported file not found",
    L021 => "import cycle",
    L030 => "undefined name",
    L031 => "duplicate definition",
    L032 => "wrong kind of declaration",
    L033 => "unknown parameter",
    L034 => "missing argument",
    L035 => "too many arguments",
    L036 => "argument given twice",
    L037 => "cyclic definition",
    L040 => "unit mismatch",
    L041 => "wrong unit for a field",
    L042 => "division by zero",
    L043 => "type mismatch",
    L044 => "empty or reversed range",
    L045 => "integer expected",
    L046 => "value out of range",
    L047 => "sweep too large",
    L050 => "shape mismatch",
    L051 => "wrong arguments to a built-in op",
    L052 => "unknown op",
    L053 => "wrong rank",
    L054 => "wrong element type",
    L055 => "does not divide evenly",
    L056 => "reshape changes the number of elements",
    L057 => "repeat body changes the shape of a carried value",
    L058 => "model has no output",
    L059 => "unbound shape symbol",
    L060 => "unknown field",
    L061 => "missing field",
    L062 => "field given twice",
    L063 => "unknown choice",
    L070 => "workload needs exactly one phase",
    L071 => "unknown or missing workload setting",
    L072 => "unknown plan knob",
    L073 => "contradictory plan knob",
    L074 => "unknown metric",
    L075 => "workload mix weights do not sum to 1",
    L076 => "serving setting out of range",
    L080 => "unused value",
    L081 => "serving knob on a workload that is not `serve`",
    L082 => "request-rate demand of a `serve` workload without open arrivals",
    L087 => "tolerance is not a fraction in (0, 1], or is given twice",
    L088 => "tolerance for a figure that is not expected",
    L091 => "`expect` in a weighted-mix study (not checked)",
    L093 => "no efficiency factors to borrow",
    L094 => "unknown engine term, or an engine term out of range",
    L095 => "`engine` names no declared engine",
    L096 => "a `trace(\"file.csv\")` request file cannot be read or parsed",
    L097 => "`after` names no LLM serving workload, or its chain is too long",
    L098 => "device memory tier other than `hbm` (not modelled)",
    L099 => "training factors borrowed from a device with special-function units, without `sfu`",
    L085 => "serving setting of the other kind of serving (batching window or token streaming)",
    L086 => "SLO target of the other kind of serving",
    L089 => "unknown target framework",
    L090 => "`target` outside a plan",
    C001 => "design point needs more devices than the system has",
    C002 => "tensor parallelism does not divide the attention heads",
    C003 => "microbatches do not divide the batch",
    C004 => "pipeline stages do not fit the layers",
    C005 => "expert parallelism does not divide the experts",
    C006 => "invalid --fix argument",
    C007 => "no such plan",
    C008 => "workload cannot be priced",
    C009 => "missing calibration or hardware figure",
    C010 => "no design point is feasible",
    C011 => "search space too large",
    C012 => "pin the plan cannot use",
    C013 => "command-line pin overrides the plan's `fix`",
    C014 => "design point needs a link its node does not declare",
    C015 => "constraint or objective on a metric the plan does not have",
    C016 => "result is not a meaningful number",
    C017 => "no reference rows to fit or validate",
    C018 => "cannot write a fitted efficiency record",
    C019 => "no serving configuration meets the SLOs",
    C020 => "serving trace cannot be read (retired: the checker reads traces, L096)",
    C021 => "export target the plan cannot satisfy",
    C024 => "no design point the target framework runs",
    C025 => "no fleet meets the demand",
    C030 => "batching-window serving cannot be priced on one device",
    C031 => "serving plan knob a batching-window workload does not have",
    C032 => "invalid --shard, or a shard that cannot be written exactly",
    C033 => "shard files that do not merge",
    C034 => "cannot fit or write a serving engine's terms",
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Label {
    pub span: Span,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    pub code: Code,
    pub severity: Severity,
    pub message: String,
    /// The primary location; the first label normally covers it too.
    pub span: Span,
    pub labels: Vec<Label>,
    pub notes: Vec<String>,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(code: Code, message: impl Into<String>, span: Span) -> Self {
        Diagnostic {
            code,
            severity: Severity::Error,
            message: message.into(),
            span,
            labels: Vec::new(),
            notes: Vec::new(),
            help: None,
        }
    }
    pub fn warning(code: Code, message: impl Into<String>, span: Span) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(code, message, span)
        }
    }
    pub fn with_label(mut self, span: Span, message: impl Into<String>) -> Self {
        self.labels.push(Label {
            span,
            message: message.into(),
        });
        self
    }
    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
    /// Attaches spans created while lexing or parsing one file to that file.
    pub fn in_file(mut self, file: FileId) -> Self {
        self.span = self.span.in_file(file);
        for l in &mut self.labels {
            l.span = l.span.in_file(file);
        }
        self
    }
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// Orders diagnostics by file, position and code so output is deterministic.
pub fn sort(diags: &mut [Diagnostic]) {
    diags.sort_by(|a, b| {
        (a.span.file, a.span.start, a.span.end, a.code, &a.message).cmp(&(
            b.span.file,
            b.span.start,
            b.span.end,
            b.code,
            &b.message,
        ))
    });
}

/// Renders diagnostics as ariadne text. `color` is for terminals only.
pub fn render(diags: &[Diagnostic], sources: &SourceMap, color: bool) -> String {
    use ariadne::{Config, IndexType, Label as ALabel, Report, ReportKind};
    let mut out = Vec::new();
    let cache_items: Vec<(String, String)> = sources
        .files()
        .map(|f| (f.name.clone(), f.text.clone()))
        .collect();
    let mut cache = ariadne::sources(cache_items);
    for d in diags {
        let name = |s: Span| sources.name(s.file).to_string();
        let clamp = |s: Span| {
            let len = sources.text(s.file).len();
            let st = (s.start as usize).min(len);
            let en = (s.end as usize).clamp(st, len);
            st..en
        };
        let kind = match d.severity {
            Severity::Error => ReportKind::Error,
            Severity::Warning => ReportKind::Warning,
        };
        let mut b = Report::build(kind, (name(d.span), clamp(d.span)))
            .with_config(
                Config::default()
                    .with_color(color)
                    .with_index_type(IndexType::Byte),
            )
            .with_code(d.code)
            .with_message(&d.message);
        let mut labels = d.labels.clone();
        if labels.is_empty() {
            labels.push(Label {
                span: d.span,
                message: String::new(),
            });
        }
        for (i, l) in labels.iter().enumerate() {
            let mut al = ALabel::new((name(l.span), clamp(l.span))).with_order(i as i32);
            if !l.message.is_empty() {
                al = al.with_message(&l.message);
            }
            b = b.with_label(al);
        }
        for n in &d.notes {
            b = b.with_note(n);
        }
        if let Some(h) = &d.help {
            b = b.with_help(h);
        }
        let _ = b.finish().write(&mut cache, &mut out);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One diagnostic in the `--format json` contract.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct JsonDiagnostic {
    pub code: String,
    pub severity: Severity,
    pub message: String,
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub start: usize,
    pub end: usize,
}

/// The JSON form: 1-based line and column (in characters) of the start.
pub fn to_json(diags: &[Diagnostic], sources: &SourceMap) -> Vec<JsonDiagnostic> {
    diags
        .iter()
        .map(|d| {
            let (line, column) = sources.line_col(d.span.file, d.span.start as usize);
            JsonDiagnostic {
                code: d.code.to_string(),
                severity: d.severity,
                message: d.message.clone(),
                file: sources.name(d.span.file).to_string(),
                line,
                column,
                start: d.span.start as usize,
                end: d.span.end as usize,
            }
        })
        .collect()
}

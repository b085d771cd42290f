//! The parser: lalrpop's generated LR parser behind a small facade.
//!
//! lalrpop types (its `ParseError`, `ErrorRecovery`) never leave this
//! module: [`parse`] returns our own AST and [`Diagnostic`]s. Recovery
//! points in the grammar let one run report every syntax error, and keep
//! what they can (a `let`'s name, an item's key) so the checker does not
//! report the same mistake again as something undefined or missing.

use lalrpop_util::{ErrorRecovery, ParseError};

use crate::ast::{Expr, ExprKind, File, MAX_EXPR_DEPTH};
use crate::diagnostic::{Code, Diagnostic};
use crate::lexer::{self, Comment, Tok};
use crate::span::{FileId, Span};

#[allow(clippy::all, clippy::pedantic, unused_parens, dead_code)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/grammar.rs"));
}

/// Most syntax errors reported per file; beyond this one `L014` says so.
pub const MAX_ERRORS: usize = 50;

/// A recovered syntax error, kept as plain data for the facade to report.
pub struct Recovered {
    error: ParseError<usize, Tok, ()>,
    dropped: Vec<(usize, Tok, usize)>,
    start: usize,
}

impl Recovered {
    pub(crate) fn new(e: ErrorRecovery<usize, Tok, ()>, start: usize) -> Self {
        Recovered {
            error: e.error,
            dropped: e.dropped_tokens,
            start,
        }
    }

    /// A `:` written where `=` belongs; the grammar reads it as `=`.
    pub(crate) fn colon_for_eq(start: usize, end: usize) -> Self {
        Recovered {
            error: ParseError::UnrecognizedToken {
                token: (start, Tok::Colon, end),
                expected: vec!["\"=\"".to_string()],
            },
            dropped: Vec::new(),
            start,
        }
    }

    /// Where the error was found: the offending token, or the end of file.
    fn location(&self) -> usize {
        match &self.error {
            ParseError::UnrecognizedToken { token: (s, ..), .. }
            | ParseError::ExtraToken { token: (s, ..) } => *s,
            ParseError::UnrecognizedEof { location, .. }
            | ParseError::InvalidToken { location } => *location,
            ParseError::User { .. } => self.start,
        }
    }
}

/// Builds an expression node, collapsing it to an error if the tree would be
/// deeper than [`MAX_EXPR_DEPTH`] (so later recursive passes stay bounded).
pub(crate) fn mk(
    file: FileId,
    diags: &mut Vec<Diagnostic>,
    kind: ExprKind,
    l: usize,
    r: usize,
) -> Expr {
    let e = Expr::new(kind, Span::at(file, l, r));
    if e.depth > MAX_EXPR_DEPTH {
        if !diags.iter().any(|d| d.code == Code::L013) {
            diags.push(
                Diagnostic::error(
                    Code::L013,
                    format!("expression nested deeper than {MAX_EXPR_DEPTH} levels"),
                    Span::new(l, r),
                )
                .with_label(Span::new(l, r), "this expression is too deep")
                .with_help("split the expression with `let` bindings"),
            );
        }
        return Expr::error(Span::at(file, l, r));
    }
    e
}

/// A parsed file: its tree, its comments (for `fmt`) and what went wrong.
#[derive(Debug)]
pub struct Parsed {
    pub file: File,
    pub comments: Vec<Comment>,
    pub diagnostics: Vec<Diagnostic>,
}

/// Lexes and parses one file. Never panics; never fails: a file with errors
/// still yields a (partial) tree.
///
/// Error recovery resumes at the next line end or closing brace, which may
/// lie inside a bracket the recovery skipped the opening of (`compute = = {
/// bf16 = 1 }` would resume at the record's `}` and close the device
/// there). So after a parse whose recovery stopped inside such a group, the
/// rest of the group is taken out of the token stream and the file parsed
/// again: recovery then skips the group whole. Each pass removes tokens, so
/// this ends; it rarely takes more than one extra pass.
pub fn parse(src: &str, file_id: FileId) -> Parsed {
    let lexed = lexer::lex(src);
    let eof = src.len();
    let all = &lexed.tokens;
    let partner = bracket_partners(all);
    // Indices into `all` of the tokens still fed to the parser.
    let mut alive: Vec<usize> = (0..all.len()).collect();
    let mut pass = 0;
    let (file, mut diags, recovered) = loop {
        pass += 1;
        let mut diags = Vec::new();
        let mut recovered = Vec::new();
        let result = generated::FileParser::new().parse(
            file_id,
            &mut diags,
            &mut recovered,
            alive.iter().map(|&i| Ok::<_, ()>(all[i].clone())),
        );
        let file = match result {
            Ok(f) => f,
            Err(e) => {
                recovered.push(Recovered {
                    error: e,
                    dropped: Vec::new(),
                    start: eof,
                });
                File { decls: Vec::new() }
            }
        };
        let cut = skipped_group_tails(all, &partner, &alive, &recovered);
        if cut.is_empty() || pass >= 16 {
            break (file, diags, recovered);
        }
        alive.retain(|i| !cut.iter().any(|&(a, b)| a <= *i && *i <= b));
    };
    // A syntax error on a line the lexer already complained about is almost
    // always that complaint again (`# note` leaves `note` to trip the
    // parser); an early end of file after the lexer dropped the rest of the
    // file is that drop again.
    let lexer_lines: Vec<usize> = lexed
        .diagnostics
        .iter()
        .map(|d| line_of(src, d.span.start as usize))
        .collect();
    let mut syntax: Vec<Diagnostic> = recovered
        .into_iter()
        .filter(|r| !(lexed.truncated && matches!(r.error, ParseError::UnrecognizedEof { .. })))
        .filter(|r| !lexer_lines.contains(&line_of(src, r.location().min(eof))))
        .map(|r| syntax_error(r, eof))
        .collect();
    syntax.sort_by_key(|d| (d.span.start, d.span.end));
    syntax.dedup_by_key(|d| (d.span.start, d.code));
    if syntax.len() > MAX_ERRORS {
        let extra = syntax.len() - MAX_ERRORS;
        let at = syntax[MAX_ERRORS].span;
        syntax.truncate(MAX_ERRORS);
        syntax.push(
            Diagnostic::error(
                Code::L014,
                format!("{extra} more syntax errors not shown"),
                at,
            )
            .with_label(at, "the next one is here")
            .with_help("fix the errors above first; later ones are often caused by them"),
        );
    }
    let mut all = lexed.diagnostics;
    all.append(&mut diags);
    all.extend(syntax);
    let diagnostics = all.into_iter().map(|d| d.in_file(file_id)).collect();
    Parsed {
        file,
        comments: lexed.comments,
        diagnostics,
    }
}

fn line_of(src: &str, offset: usize) -> usize {
    let offset = offset.min(src.len());
    src.as_bytes()[..offset]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}

fn is_open(t: &Tok) -> bool {
    matches!(t, Tok::LBrace | Tok::LParen | Tok::LBracket)
}

fn is_close(t: &Tok) -> bool {
    matches!(t, Tok::RBrace | Tok::RParen | Tok::RBracket)
}

/// For each bracket token, the index of its matching bracket.
fn bracket_partners(tokens: &[(usize, Tok, usize)]) -> Vec<Option<usize>> {
    let mut out = vec![None; tokens.len()];
    let mut stack = Vec::new();
    for (i, (_, t, _)) in tokens.iter().enumerate() {
        if is_open(t) {
            stack.push(i);
        } else if is_close(t)
            && let Some(o) = stack.pop()
        {
            out[o] = Some(i);
            out[i] = Some(o);
        }
    }
    out
}

/// Ranges of indices into `all` to take out before parsing again: for each
/// opening bracket that a recovery skipped while the recovery stopped
/// before its matching closer, everything after the opener up to and
/// including the closer. The opener stays, so the error is found at the
/// same place (it may be the offending token itself).
fn skipped_group_tails(
    all: &[(usize, Tok, usize)],
    partner: &[Option<usize>],
    alive: &[usize],
    recovered: &[Recovered],
) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for r in recovered {
        for (s, t, e) in &r.dropped {
            if !is_open(t) {
                continue;
            }
            let Ok(idx) = all.binary_search_by_key(&(*s, *e), |(ts, _, te)| (*ts, *te)) else {
                continue;
            };
            let Some(close) = partner[idx] else { continue };
            if close <= idx || alive.binary_search(&close).is_err() {
                continue;
            }
            let (cs, _, ce) = &all[close];
            let closer_dropped = r
                .dropped
                .iter()
                .any(|(ds, dt, de)| ds == cs && de == ce && is_close(dt));
            if !closer_dropped {
                out.push((idx + 1, close));
            }
        }
    }
    out
}

/// "a name, a number or `(`": word classes first (they say the most),
/// then punctuation and keywords in a fixed order.
fn expected_list(expected: &[String]) -> String {
    let ident = expected.iter().any(|e| e == "IDENT");
    let mut names: Vec<(u8, String)> = expected
        .iter()
        .filter_map(|e| {
            Some(match e.as_str() {
                "IDENT" => (0, "a name".to_string()),
                "NUM" => (1, "a number".to_string()),
                "QTY" => (2, "a quantity".to_string()),
                "STR" => (3, "a string".to_string()),
                // Internal: a literal the lexer already reported.
                "BAD" => return None,
                // `x` is also a name.
                "\"x\"" if ident => return None,
                other => (4, format!("`{}`", other.trim_matches('"'))),
            })
        })
        .collect();
    names.sort();
    names.dedup();
    let mut names: Vec<String> = names.into_iter().map(|(_, n)| n).collect();
    if names.len() > 10 {
        let n = names.len();
        names.truncate(8);
        return format!("{} or one of {} others", names.join(", "), n - 8);
    }
    match names.len() {
        0 => "nothing more".to_string(),
        1 => names.remove(0),
        _ => {
            let last = names.pop().unwrap_or_default();
            format!("{} or {}", names.join(", "), last)
        }
    }
}

fn syntax_error(r: Recovered, eof: usize) -> Diagnostic {
    match r.error {
        ParseError::UnrecognizedToken {
            token: (s, tok, e),
            expected,
        } => {
            let span = Span::new(s, e);
            let mut d = Diagnostic::error(Code::L010, format!("unexpected {tok}"), span)
                .with_label(span, format!("expected {}", expected_list(&expected)));
            if let Some(h) = syntax_help(&tok, &expected) {
                d = d.with_help(h);
            }
            d
        }
        ParseError::UnrecognizedEof { location, expected } => {
            let at = location.min(eof);
            let span = Span::new(at, at);
            Diagnostic::error(Code::L011, "unexpected end of file", span)
                .with_label(span, format!("expected {}", expected_list(&expected)))
                .with_help(if expected.iter().any(|e| e == "\"}\"") {
                    "a `{` block is not closed"
                } else {
                    "the file ends in the middle of a declaration"
                })
        }
        ParseError::ExtraToken { token: (s, tok, e) } => {
            let span = Span::new(s, e);
            Diagnostic::error(Code::L010, format!("unexpected {tok}"), span)
                .with_label(span, "not expected here")
        }
        ParseError::InvalidToken { location } => {
            let span = Span::new(location, location + 1);
            Diagnostic::error(Code::L001, "invalid token", span).with_label(span, "here")
        }
        ParseError::User { .. } => {
            let span = Span::new(eof, eof);
            Diagnostic::error(Code::L010, "syntax error", span)
        }
    }
}

fn syntax_help(tok: &Tok, expected: &[String]) -> Option<String> {
    let exp = |s: &str| expected.iter().any(|e| e == s);
    match tok {
        Tok::Ident(_) if exp("\"=\"") && !exp("\"x\"") => {
            Some("statements in a model are `name = expression`".into())
        }
        Tok::Number(_) if exp("IDENT") => {
            Some("a name is expected here; names start with a letter or `_`".into())
        }
        Tok::RBrace if exp("\"=\"") => Some("a field needs a value: `name = value`".into()),
        Tok::Colon => Some("fields, named arguments and model statements use `=`, not `:`".into()),
        _ if exp("\"}\"") && matches!(tok, Tok::Import) => {
            Some("imports go at the top level, outside any `{ }`".into())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ast::{Decl, Stmt};

    fn errors(src: &str) -> Vec<(Code, String)> {
        parse(src, FileId(0))
            .diagnostics
            .into_iter()
            .map(|d| (d.code, d.message))
            .collect()
    }

    /// `engine` is a contextual keyword: it starts a declaration at the
    /// top level and stays an ordinary name elsewhere (a `let`, a record
    /// field, a value); any other name in its place is `L010`.
    #[test]
    fn engine_is_a_contextual_keyword() {
        let src = "engine E {\n  seq_overhead = 1 us\n}\nlet engine = 3\nworkload w {\n  serve { engine = E }\n}\n";
        let parsed = parse(src, FileId(0));
        assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
        let kinds: Vec<_> = parsed
            .file
            .decls
            .iter()
            .map(|d| match d {
                Decl::Block(b) => b.kind.keyword(),
                Decl::Let { .. } => "let",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, ["engine", "let", "workload"]);
        assert_eq!(
            errors("engin E {\n}\n"),
            vec![(Code::L010, "unexpected name `engin`".to_string())]
        );
    }

    #[test]
    fn parses_hardware() {
        let p = parse(
            "device H { compute { bf16 = 989 TFLOP/s, fp8 = 1979 TFLOP/s }\n memory hbm = 80 GB @ 3.35 TB/s\n power 700 W\n price $2.50/h }\n\
             node N { device H x 8\n link nvlink = switch(450 GB/s)\n nic 400 Gb/s x 8 }",
            FileId(0),
        );
        assert!(p.diagnostics.is_empty(), "{:?}", p.diagnostics);
        assert_eq!(p.file.decls.len(), 2);
    }

    #[test]
    fn parses_model_with_x_variable() {
        let p = parse(
            "model M(d) { input t: i32[batch, seq]\n x = embedding(t, 10, d)\n repeat 2 { h = rmsnorm(x)\n x = x + h }\n output y = x }",
            FileId(0),
        );
        assert!(p.diagnostics.is_empty(), "{:?}", p.diagnostics);
    }

    #[test]
    fn reports_several_syntax_errors() {
        let errs = errors("device A { power = }\ndevice B { price $ }\nmodel C { x = = 1 }\n");
        assert!(errs.len() >= 3, "{errs:?}");
    }

    #[test]
    fn deep_expressions_are_cut() {
        let src = format!("let a = {}1", "1 + ".repeat(5000));
        let errs = errors(&src);
        assert!(errs.iter().any(|(c, _)| *c == Code::L013), "{errs:?}");
    }

    #[test]
    fn empty_file_is_fine() {
        assert!(errors("").is_empty());
    }

    fn codes(src: &str) -> Vec<Code> {
        errors(src).into_iter().map(|e| e.0).collect()
    }

    #[test]
    fn a_skipped_group_is_skipped_whole() {
        // Recovery would stop at the record's `}` and close the device there.
        let src = "device D {\n  compute = = { bf16 = 1 TFLOP/s }\n  power 1 W\n}\nlet a = 1\n";
        assert_eq!(codes(src), vec![Code::L010]);
        let p = parse(src, FileId(0));
        assert_eq!(p.file.decls.len(), 2, "{:?}", p.file.decls);
    }

    #[test]
    fn a_colon_for_equals_is_one_error_and_reads_as_equals() {
        let p = parse(
            "device D {\n  compute: { bf16 = 1 TFLOP/s }\n}\nlet r = { a: 1 }\nlet c = f(n: 2)\n",
            FileId(0),
        );
        let c: Vec<Code> = p.diagnostics.iter().map(|d| d.code).collect();
        assert_eq!(c, vec![Code::L010, Code::L010, Code::L010]);
        assert_eq!(p.file.decls.len(), 3);
    }

    #[test]
    fn no_syntax_error_on_a_line_the_lexer_reported() {
        assert_eq!(
            codes("# a note\nlet a = 1\nlet b = a ?? 2\n"),
            vec![Code::L001, Code::L001]
        );
        assert_eq!(codes("let a = 1e999\nlet b = 2\n"), vec![Code::L003]);
        assert_eq!(codes("import \"x.gantry\nlet b = 2\n"), vec![Code::L002]);
    }

    #[test]
    fn no_early_end_after_the_lexer_cut_the_file() {
        let deep = format!("let a = {}1{}", "(".repeat(70), ")".repeat(70));
        assert_eq!(codes(&deep), vec![Code::L013]);
        assert_eq!(codes("device D {\n/* never closed\n"), vec![Code::L002]);
    }

    #[test]
    fn a_broken_value_keeps_its_name() {
        let p = parse(
            "let a = = 1\nmodel M { x = = 1 }\ndevice D { power = }\n",
            FileId(0),
        );
        assert!(matches!(&p.file.decls[0], Decl::Let { name, .. } if name.name == "a"));
        let Decl::Model(m) = &p.file.decls[1] else {
            panic!("{:?}", p.file.decls[1])
        };
        assert!(matches!(&m.body[0], Stmt::Assign { name, .. } if name.name == "x"));
        let Decl::Block(b) = &p.file.decls[2] else {
            panic!("{:?}", p.file.decls[2])
        };
        assert_eq!(b.items[0].key.name, "power");
    }

    #[test]
    fn expected_lists_name_word_classes_first() {
        let e = errors("let a = = 1").remove(0);
        let p = parse("let a = = 1", FileId(0));
        assert_eq!(e.0, Code::L010);
        let label = &p.diagnostics[0].labels[0].message;
        assert!(
            label.starts_with("expected a name, a number, a quantity, a string, `(`"),
            "{label}"
        );
    }
}

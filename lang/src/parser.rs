//! The parser: lalrpop's generated LR parser behind a small facade.
//!
//! lalrpop types (its `ParseError`, `ErrorRecovery`) never leave this
//! module: [`parse`] returns our own AST and [`Diagnostic`]s. Recovery
//! points in the grammar let one run report every syntax error.

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
    end: usize,
}

impl Recovered {
    pub(crate) fn new(e: ErrorRecovery<usize, Tok, ()>, start: usize, end: usize) -> Self {
        Recovered {
            error: e.error,
            dropped: e.dropped_tokens,
            start,
            end,
        }
    }
}

/// Builds an expression node, collapsing it to an error if the tree would be
/// deeper than [`MAX_EXPR_DEPTH`] (so later recursive passes stay bounded).
pub(crate) fn mk(file: FileId, diags: &mut Vec<Diagnostic>, kind: ExprKind, l: usize, r: usize) -> Expr {
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
pub fn parse(src: &str, file_id: FileId) -> Parsed {
    let lexed = lexer::lex(src);
    let mut diags = lexed.diagnostics;
    let mut recovered = Vec::new();
    let tokens = lexed.tokens;
    let eof = src.len();
    let result = generated::FileParser::new().parse(
        file_id,
        &mut diags,
        &mut recovered,
        tokens.into_iter().map(Ok::<_, ()>),
    );
    let file = match result {
        Ok(f) => f,
        Err(e) => {
            recovered.push(Recovered {
                error: e,
                dropped: Vec::new(),
                start: eof,
                end: eof,
            });
            File { decls: Vec::new() }
        }
    };
    let mut syntax: Vec<Diagnostic> = recovered.into_iter().map(|r| syntax_error(r, eof)).collect();
    syntax.dedup_by_key(|d| (d.span.start, d.code));
    if syntax.len() > MAX_ERRORS {
        let extra = syntax.len() - MAX_ERRORS;
        let at = syntax[MAX_ERRORS].span;
        syntax.truncate(MAX_ERRORS);
        syntax.push(
            Diagnostic::error(Code::L014, format!("{extra} more syntax errors not shown"), at)
                .with_label(at, "the next one is here")
                .with_help("fix the errors above first; later ones are often caused by them"),
        );
    }
    diags.extend(syntax);
    let diagnostics = diags.into_iter().map(|d| d.in_file(file_id)).collect();
    Parsed {
        file,
        comments: lexed.comments,
        diagnostics,
    }
}

fn expected_list(expected: &[String]) -> String {
    let mut names: Vec<String> = expected
        .iter()
        .map(|e| match e.as_str() {
            "IDENT" => "a name".to_string(),
            "NUM" => "a number".to_string(),
            "QTY" => "a quantity".to_string(),
            "STR" => "a string".to_string(),
            other => format!("`{}`", other.trim_matches('"')),
        })
        .collect();
    names.sort();
    names.dedup();
    if names.len() > 8 {
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
    let _ = (&r.dropped, r.start, r.end);
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
            Diagnostic::error(Code::L010, format!("unexpected {tok}"), span).with_label(span, "not expected here")
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
        Tok::Ident(_) if exp("\"=\"") && !exp("\"x\"") => Some("statements in a model are `name = expression`".into()),
        Tok::Number(_) if exp("IDENT") => Some("a name is expected here; names start with a letter or `_`".into()),
        Tok::RBrace if exp("\"=\"") => Some("a field needs a value: `name = value`".into()),
        Tok::Colon => Some("fields and named arguments use `=`, not `:`".into()),
        _ if exp("\"}\"") && matches!(tok, Tok::Import) => Some("imports go at the top level, outside any `{ }`".into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(src: &str) -> Vec<(Code, String)> {
        parse(src, FileId(0))
            .diagnostics
            .into_iter()
            .map(|d| (d.code, d.message))
            .collect()
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
}

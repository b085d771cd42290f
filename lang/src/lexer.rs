//! Tokens, produced by a logos lexer plus one small joining pass.
//!
//! logos does the character-level work. The joining pass then turns a number
//! followed on the same line by a unit word (`989 TFLOP/s`, `80 GiB`, `$2.50/h`)
//! into one `Quantity` token, because only the lexer can see that the `/` in
//! `TFLOP/s` has no spaces around it (so `80 GB / 2` still divides). Bad
//! characters become diagnostics and are skipped, so the parser always sees a
//! well-formed token stream and can report every syntax error in one run. A
//! literal that cannot be read (an overflowing number, an unknown unit, a
//! misplaced `$`, an unterminated string) is reported here and becomes one
//! [`Tok::Bad`], which the parser accepts as a literal and the checker as
//! an already-reported value: one mistake, one diagnostic.
//! Bracket nesting is bounded here, before any recursive code sees the input.

use logos::Logos;

use crate::diagnostic::{Code, Diagnostic};
use crate::span::Span;
use crate::units;

/// Deepest bracket nesting accepted; deeper input is reported, not recursed into.
pub const MAX_NESTING: usize = 64;

#[derive(Logos, Debug, Clone, PartialEq)]
#[logos(skip r"[ \t\r\n\f]+")]
#[logos(skip(r"//[^\n]*", allow_greedy = true))]
enum Raw {
    #[token("/*")]
    BlockCommentStart,
    #[token("import")]
    Import,
    #[token("let")]
    Let,
    #[token("device")]
    Device,
    #[token("node")]
    Node,
    #[token("cluster")]
    Cluster,
    #[token("model")]
    Model,
    #[token("table")]
    Table,
    #[token("workload")]
    Workload,
    #[token("plan")]
    Plan,
    #[token("study")]
    Study,
    #[token("on")]
    On,
    #[token("for")]
    For,
    #[token("repeat")]
    Repeat,
    #[token("input")]
    Input,
    #[token("output")]
    Output,
    #[token("search")]
    Search,
    #[token("fix")]
    Fix,
    #[token("objective")]
    Objective,
    #[token("maximize")]
    Maximize,
    #[token("minimize")]
    Minimize,
    #[token("subject")]
    Subject,
    #[token("to")]
    To,
    #[token("in")]
    In,
    #[token("true")]
    True,
    #[token("false")]
    False,
    #[token("x", priority = 5)]
    X,
    #[regex(r"[A-Za-z_][A-Za-z0-9_]*")]
    Ident,
    #[regex(r"[0-9][0-9_]*(\.[0-9][0-9_]*)?([eE][+-]?[0-9]+)?")]
    Number,
    #[regex(r#""([^"\\\n]|\\.)*""#)]
    Str,
    #[regex(r#""([^"\\\n]|\\.)*"#)]
    UnterminatedStr,
    #[token("$")]
    Dollar,
    #[token("{")]
    LBrace,
    #[token("}")]
    RBrace,
    #[token("(")]
    LParen,
    #[token(")")]
    RParen,
    #[token("[")]
    LBracket,
    #[token("]")]
    RBracket,
    #[token(",")]
    Comma,
    #[token(":")]
    Colon,
    #[token("=")]
    Eq,
    #[token("==")]
    EqEq,
    #[token("!=")]
    NotEq,
    #[token("<")]
    Lt,
    #[token("<=")]
    Le,
    #[token(">")]
    Gt,
    #[token(">=")]
    Ge,
    #[token("+")]
    Plus,
    #[token("-")]
    Minus,
    #[token("*")]
    Star,
    #[token("/")]
    Slash,
    #[token("%")]
    Percent,
    #[token("..")]
    DotDot,
    #[token(".")]
    Dot,
    #[token("@")]
    At,
    #[token(";")]
    Semi,
}

/// A token as the parser sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    Import,
    Let,
    Device,
    Node,
    Cluster,
    Model,
    Table,
    Workload,
    Plan,
    Study,
    On,
    For,
    Repeat,
    Input,
    Output,
    Search,
    Fix,
    Objective,
    Maximize,
    Minimize,
    Subject,
    To,
    In,
    True,
    False,
    X,
    Ident(String),
    /// A plain number; the text is kept so `fmt` reprints it as written.
    Number(NumLit),
    /// A number with a unit (magnitude in base units) and its text as written.
    Quantity(QtyLit),
    Str(String),
    /// A literal the lexer already reported (an overflowing number, an
    /// unknown unit, an unterminated string, a misplaced `$`). The parser
    /// accepts it wherever a literal may stand and the checker treats its
    /// value as already reported, so one mistake gives one diagnostic.
    Bad,
    LBrace,
    RBrace,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Colon,
    Eq,
    EqEq,
    NotEq,
    Lt,
    Le,
    Gt,
    Ge,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    DotDot,
    Dot,
    At,
    /// A statement terminator: an explicit `;` or a significant newline.
    Semi,
}

impl std::fmt::Display for Tok {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tok::Ident(s) => write!(f, "identifier `{s}`"),
            Tok::Number(NumLit { text: t, .. }) => write!(f, "number `{t}`"),
            Tok::Quantity(QtyLit { text: t, .. }) => write!(f, "quantity `{t}`"),
            Tok::Str(s) => write!(f, "string \"{s}\""),
            Tok::Semi => write!(f, "end of line"),
            Tok::Bad => write!(f, "invalid literal"),
            other => write!(f, "`{}`", tok_text(other)),
        }
    }
}

/// The source text of a fixed token.
pub fn tok_text(t: &Tok) -> &'static str {
    match t {
        Tok::Import => "import",
        Tok::Let => "let",
        Tok::Device => "device",
        Tok::Node => "node",
        Tok::Cluster => "cluster",
        Tok::Model => "model",
        Tok::Table => "table",
        Tok::Workload => "workload",
        Tok::Plan => "plan",
        Tok::Study => "study",
        Tok::On => "on",
        Tok::For => "for",
        Tok::Repeat => "repeat",
        Tok::Input => "input",
        Tok::Output => "output",
        Tok::Search => "search",
        Tok::Fix => "fix",
        Tok::Objective => "objective",
        Tok::Maximize => "maximize",
        Tok::Minimize => "minimize",
        Tok::Subject => "subject",
        Tok::To => "to",
        Tok::In => "in",
        Tok::True => "true",
        Tok::False => "false",
        Tok::X => "x",
        Tok::LBrace => "{",
        Tok::RBrace => "}",
        Tok::LParen => "(",
        Tok::RParen => ")",
        Tok::LBracket => "[",
        Tok::RBracket => "]",
        Tok::Comma => ",",
        Tok::Colon => ":",
        Tok::Eq => "=",
        Tok::EqEq => "==",
        Tok::NotEq => "!=",
        Tok::Lt => "<",
        Tok::Le => "<=",
        Tok::Gt => ">",
        Tok::Ge => ">=",
        Tok::Plus => "+",
        Tok::Minus => "-",
        Tok::Star => "*",
        Tok::Slash => "/",
        Tok::Percent => "%",
        Tok::DotDot => "..",
        Tok::Dot => ".",
        Tok::At => "@",
        Tok::Semi => ";",
        Tok::Ident(_) | Tok::Number(..) | Tok::Quantity(..) | Tok::Str(_) | Tok::Bad => "",
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct NumLit {
    pub value: f64,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QtyLit {
    pub value: units::Quantity,
    pub text: String,
}

/// A comment, kept so the formatter loses nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct Comment {
    pub span: Span,
    pub text: String,
}

/// The result of lexing one file.
#[derive(Debug, Default)]
pub struct Lexed {
    pub tokens: Vec<(usize, Tok, usize)>,
    pub comments: Vec<Comment>,
    pub diagnostics: Vec<Diagnostic>,
    /// The lexer dropped the rest of the file (brackets nested too deep, or
    /// a block comment never closed), so the parser's complaints about the
    /// file ending early would only repeat that diagnostic.
    pub truncated: bool,
}

/// Lexes `src`. Never fails: problems are returned as diagnostics.
pub fn lex(src: &str) -> Lexed {
    let mut out = Lexed::default();
    let mut raw: Vec<(usize, Raw, usize)> = Vec::new();
    let mut lexer = Raw::lexer(src);
    // A byte-order mark (editors on Windows write one) marks the encoding,
    // not the program: skipped, so spans still index the file as read.
    if src.starts_with('\u{FEFF}') {
        lexer.bump('\u{FEFF}'.len_utf8());
    }
    let mut bad_run: Option<(usize, usize)> = None;
    let flush_bad = |out: &mut Lexed, run: &mut Option<(usize, usize)>| {
        if let Some((s, e)) = run.take() {
            let text: String = src[s..e].chars().take(16).collect();
            let plural = src[s..e].chars().count() > 1;
            let help = if text.starts_with('#') {
                "comments start with `//` (or `/* ... */`); `#` is not a comment marker"
            } else {
                "Gantry source uses ASCII letters, digits, `_` and the operators listed in docs/LANGUAGE.md"
            };
            out.diagnostics.push(
                Diagnostic::error(
                    Code::L001,
                    format!(
                        "unexpected character{} `{}`",
                        if plural { "s" } else { "" },
                        text.escape_debug()
                    ),
                    Span::new(s, e),
                )
                .with_label(Span::new(s, e), "not part of any token")
                .with_help(help),
            );
        }
    };
    while let Some(res) = lexer.next() {
        let span = lexer.span();
        match res {
            Ok(Raw::BlockCommentStart) => {
                flush_bad(&mut out, &mut bad_run);
                let rest = lexer.remainder();
                match rest.find("*/") {
                    Some(end) => {
                        lexer.bump(end + 2);
                        out.comments.push(Comment {
                            span: Span::new(span.start, lexer.span().end),
                            text: src[span.start..lexer.span().end].to_string(),
                        });
                    }
                    None => {
                        lexer.bump(rest.len());
                        out.truncated = true;
                        out.diagnostics.push(
                            Diagnostic::error(
                                Code::L002,
                                "unterminated block comment",
                                Span::new(span.start, span.start + 2),
                            )
                            .with_label(
                                Span::new(span.start, span.start + 2),
                                "comment opened here",
                            )
                            .with_help("close it with `*/`"),
                        );
                    }
                }
            }
            Ok(Raw::UnterminatedStr) => {
                flush_bad(&mut out, &mut bad_run);
                out.diagnostics.push(
                    Diagnostic::error(
                        Code::L002,
                        "unterminated string",
                        Span::new(span.start, span.end),
                    )
                    .with_label(Span::new(span.start, span.end), "string starts here")
                    .with_help("close the string with `\"` on the same line"),
                );
                // Stands in for the string so the line still parses.
                raw.push((span.start, Raw::UnterminatedStr, span.end));
            }
            Ok(t) => {
                flush_bad(&mut out, &mut bad_run);
                raw.push((span.start, t, span.end));
            }
            Err(()) => match &mut bad_run {
                Some((_, e)) if *e == span.start => *e = span.end,
                _ => {
                    flush_bad(&mut out, &mut bad_run);
                    bad_run = Some((span.start, span.end));
                }
            },
        }
    }
    flush_bad(&mut out, &mut bad_run);
    collect_line_comments(src, &mut out.comments);
    join(src, raw, &mut out);
    limit_nesting(&mut out);
    close_before_declarations(src, &mut out);
    out.tokens = terminate(src, std::mem::take(&mut out.tokens));
    out
}

/// Whether the token at `i` starts a top-level declaration header: at the
/// start of a line, `import "..."`, `device|node|cluster|table|workload|model
/// NAME [(...)] {`, or `plan|study NAME on`. No valid file has such a header
/// inside brackets, so meeting one there means a bracket was left open.
fn declaration_header(src: &str, toks: &[(usize, Tok, usize)], i: usize) -> bool {
    let (s, t, _) = &toks[i];
    if !(src[..*s].ends_with('\n') || *s == 0) {
        return false;
    }
    let at = |k: usize| toks.get(i + k).map(|x| &x.1);
    match t {
        Tok::Import => matches!(at(1), Some(Tok::Str(_))),
        Tok::Plan | Tok::Study => {
            matches!(at(1), Some(Tok::Ident(_))) && matches!(at(2), Some(Tok::On))
        }
        Tok::Device | Tok::Node | Tok::Cluster | Tok::Table | Tok::Workload | Tok::Model => {
            if !matches!(at(1), Some(Tok::Ident(_))) {
                return false;
            }
            match at(2) {
                Some(Tok::LBrace) => true,
                Some(Tok::LParen) => {
                    let mut depth = 0usize;
                    for (k, (_, tok, _)) in toks.iter().enumerate().skip(i + 2) {
                        match tok {
                            Tok::LParen => depth += 1,
                            Tok::RParen => {
                                depth -= 1;
                                if depth == 0 {
                                    return matches!(
                                        toks.get(k + 1).map(|x| &x.1),
                                        Some(Tok::LBrace)
                                    );
                                }
                            }
                            Tok::LBrace | Tok::RBrace => return false,
                            _ => {}
                        }
                    }
                    false
                }
                _ => false,
            }
        }
        _ => false,
    }
}

/// Closes brackets left open before a line that starts a new declaration,
/// with one diagnostic per unclosed bracket, so the declarations after it
/// are still read (instead of the rest of the file being swallowed).
fn close_before_declarations(src: &str, out: &mut Lexed) {
    let toks = std::mem::take(&mut out.tokens);
    let mut fixed = Vec::with_capacity(toks.len());
    let mut stack: Vec<(Tok, usize, usize)> = Vec::new();
    for i in 0..toks.len() {
        if !stack.is_empty() && declaration_header(src, &toks, i) {
            let at = fixed
                .last()
                .map_or(toks[i].0, |x: &(usize, Tok, usize)| x.2);
            while let Some((open, s, e)) = stack.pop() {
                let (close, text) = match open {
                    Tok::LParen => (Tok::RParen, ")"),
                    Tok::LBracket => (Tok::RBracket, "]"),
                    _ => (Tok::RBrace, "}"),
                };
                out.diagnostics.push(
                    Diagnostic::error(
                        Code::L010,
                        format!("`{}` is never closed", tok_text(&open)),
                        Span::new(s, e),
                    )
                    .with_label(Span::new(s, e), "opened here")
                    .with_label(
                        Span::new(toks[i].0, toks[i].2),
                        "a new declaration starts here",
                    )
                    .with_help(format!(
                        "close it with `{text}` before the next declaration"
                    )),
                );
                fixed.push((at, close, at));
            }
        }
        let (s, t, e) = &toks[i];
        match t {
            Tok::LBrace | Tok::LParen | Tok::LBracket => stack.push((t.clone(), *s, *e)),
            Tok::RBrace | Tok::RParen | Tok::RBracket => {
                stack.pop();
            }
            _ => {}
        }
        fixed.push(toks[i].clone());
    }
    out.tokens = fixed;
}

/// Newlines end items and statements, as in Go: a newline becomes a `;`
/// token when it is directly inside `{ }` (or at the top level), the token
/// before it can end a statement, and the token after it is not a closing
/// bracket. Newlines inside `( )` and `[ ]` are ignored, so arguments may
/// span lines. Redundant `;` are dropped so the grammar needs exactly one.
fn terminate(src: &str, tokens: Vec<(usize, Tok, usize)>) -> Vec<(usize, Tok, usize)> {
    let mut out: Vec<(usize, Tok, usize)> = Vec::with_capacity(tokens.len() + tokens.len() / 4);
    let mut stack: Vec<bool> = Vec::new(); // true for `{`
    let ends_statement = |t: &Tok| {
        matches!(
            t,
            Tok::Ident(_)
                | Tok::Number(_)
                | Tok::Quantity(_)
                | Tok::Str(_)
                | Tok::Bad
                | Tok::True
                | Tok::False
                | Tok::X
                | Tok::RParen
                | Tok::RBracket
                | Tok::RBrace
        )
    };
    let in_block = |stack: &Vec<bool>| stack.last().is_none_or(|&b| b);
    for (s, t, e) in tokens {
        if let Some((_, prev, pe)) = out.last() {
            let closes = matches!(t, Tok::RBrace | Tok::RParen | Tok::RBracket);
            if in_block(&stack) && ends_statement(prev) && !closes && src[*pe..s].contains('\n') {
                let at = *pe;
                out.push((at, Tok::Semi, at));
            }
        }
        match t {
            Tok::LBrace => stack.push(true),
            Tok::LParen | Tok::LBracket => stack.push(false),
            Tok::RBrace | Tok::RParen | Tok::RBracket => {
                stack.pop();
            }
            _ => {}
        }
        if t == Tok::Semi {
            let redundant = match out.last() {
                None => true,
                Some((_, prev, _)) => matches!(prev, Tok::Semi | Tok::LBrace | Tok::Comma),
            };
            if redundant {
                continue;
            }
        }
        // A `;` right before a closing brace is dropped too.
        if t == Tok::RBrace && matches!(out.last(), Some((_, Tok::Semi, _))) {
            out.pop();
        }
        out.push((s, t, e));
    }
    if let Some((_, prev, pe)) = out.last()
        && stack.is_empty()
        && ends_statement(prev)
    {
        let at = *pe;
        out.push((at, Tok::Semi, at));
    }
    out
}

/// logos skips `//` comments; find them again for the formatter. A `//`
/// inside a string literal is not a comment, so strings are stepped over.
fn collect_line_comments(src: &str, comments: &mut Vec<Comment>) {
    let b = src.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' && b[i] != b'\n' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => match src[i + 2..].find("*/") {
                Some(e) => i += e + 4,
                None => break,
            },
            b'/' if b.get(i + 1) == Some(&b'/') => {
                let end = src[i..].find('\n').map_or(b.len(), |e| i + e);
                comments.push(Comment {
                    span: Span::new(i, end),
                    text: src[i..end].trim_end().to_string(),
                });
                i = end;
            }
            _ => i += 1,
        }
    }
    comments.sort_by_key(|c| c.span.start);
}

fn same_line(src: &str, a: usize, b: usize) -> bool {
    !src[a..b].contains('\n')
}

/// Joins numbers and unit words into quantities, and maps raw tokens to `Tok`.
/// A literal that cannot be read is reported here and becomes one
/// [`Tok::Bad`] covering all of it (number and unit), so nothing after the
/// report sees a half-read literal.
fn join(src: &str, raw: Vec<(usize, Raw, usize)>, out: &mut Lexed) {
    let mut i = 0;
    while i < raw.len() {
        let (s, ref t, e) = raw[i];
        match t {
            Raw::Number => {
                let text = &src[s..e];
                let value = parse_number(text);
                if value.is_none() {
                    out.diagnostics.push(
                        Diagnostic::error(Code::L003, format!("number `{text}` is too large for a double"), Span::new(s, e))
                            .with_label(Span::new(s, e), "overflows a 64-bit float (the largest is about 1.8e308)")
                            .with_help("Gantry numbers are IEEE-754 doubles; write a smaller number, or use a unit with a larger prefix"),
                    );
                }
                // A unit word on the same line right after the number?
                if let Some((end_idx, unit_end)) = unit_after(src, &raw, i + 1, e) {
                    let unit_text = src[raw[i + 1].0..unit_end].to_string();
                    match (units::parse_unit(&unit_text), value) {
                        (Some((f, dim)), Some(v)) => {
                            let q = units::Quantity::new(v * f, dim);
                            let text = src[s..unit_end].to_string();
                            out.tokens.push((
                                s,
                                Tok::Quantity(QtyLit { value: q, text }),
                                unit_end,
                            ));
                            i = end_idx;
                            continue;
                        }
                        (Some(_), None) => {
                            out.tokens.push((s, Tok::Bad, unit_end));
                            i = end_idx;
                            continue;
                        }
                        (None, _) if looks_like_unit(&unit_text) => {
                            out.diagnostics.push(
                                Diagnostic::error(
                                    Code::L004,
                                    format!("unknown unit `{unit_text}`"),
                                    Span::new(raw[i + 1].0, unit_end),
                                )
                                .with_label(
                                    Span::new(raw[i + 1].0, unit_end),
                                    "not a unit Gantry knows",
                                )
                                .with_help(unit_help(&unit_text)),
                            );
                            out.tokens.push((s, Tok::Bad, unit_end));
                            i = end_idx;
                            continue;
                        }
                        (None, _) => {}
                    }
                }
                let tok = match value {
                    Some(v) => Tok::Number(NumLit {
                        value: v,
                        text: text.to_string(),
                    }),
                    None => Tok::Bad,
                };
                out.tokens.push((s, tok, e));
                i += 1;
            }
            Raw::Dollar => {
                // `$2.50/h` or `$100`; `$ 2.50/h` (a space after `$`) is
                // reported and read as one bad literal.
                let amount = match raw.get(i + 1) {
                    Some(&(ns, Raw::Number, ne)) if same_line(src, e, ns) => Some((ns, ne)),
                    _ => None,
                };
                if let Some((ns, ne)) = amount {
                    let mut end = ne;
                    let mut next = i + 2;
                    let mut factor = 1.0;
                    let mut dim = units::Dim::MONEY;
                    if let (Some(&(ss, Raw::Slash, se)), Some(&(ws, Raw::Ident, we))) =
                        (raw.get(i + 2), raw.get(i + 3))
                        && ss == ne
                        && ws == se
                        && let Some((f, d)) = units::unit_word(&src[ws..we])
                    {
                        factor = 1.0 / f;
                        dim = dim.per(d);
                        end = we;
                        next = i + 4;
                    }
                    let adjacent = ns == e;
                    match parse_number(&src[ns..ne]) {
                        Some(v) if adjacent => {
                            let q = units::Quantity::new(v * factor, dim);
                            out.tokens.push((
                                s,
                                Tok::Quantity(QtyLit {
                                    value: q,
                                    text: src[s..end].to_string(),
                                }),
                                end,
                            ));
                        }
                        Some(_) => {
                            let written = &src[s..end];
                            let joined: String =
                                written.chars().filter(|c| !c.is_whitespace()).collect();
                            out.diagnostics.push(
                                Diagnostic::error(
                                    Code::L001,
                                    "`$` must be followed directly by the amount",
                                    Span::new(s, end),
                                )
                                .with_label(Span::new(e, ns), "no space is allowed here")
                                .with_help(format!("write `{joined}`")),
                            );
                            out.tokens.push((s, Tok::Bad, end));
                        }
                        None => {
                            let text = &src[ns..ne];
                            out.diagnostics.push(
                                Diagnostic::error(
                                    Code::L003,
                                    format!("number `{text}` is too large for a double"),
                                    Span::new(ns, ne),
                                )
                                .with_label(
                                    Span::new(ns, ne),
                                    "overflows a 64-bit float (the largest is about 1.8e308)",
                                )
                                .with_help(
                                    "Gantry numbers are IEEE-754 doubles; write a smaller number",
                                ),
                            );
                            out.tokens.push((s, Tok::Bad, end));
                        }
                    }
                    i = next;
                    continue;
                }
                out.diagnostics.push(
                    Diagnostic::error(
                        Code::L001,
                        "`$` must be followed by an amount",
                        Span::new(s, e),
                    )
                    .with_label(Span::new(s, e), "expected a number right after `$`")
                    .with_help("write prices as `$2.50/h` or `$30000`"),
                );
                out.tokens.push((s, Tok::Bad, e));
                i += 1;
            }
            Raw::UnterminatedStr => {
                // Already reported while lexing.
                out.tokens.push((s, Tok::Bad, e));
                i += 1;
            }
            _ => {
                out.tokens.push((s, map_raw(t, &src[s..e]), e));
                i += 1;
            }
        }
    }
}

/// If a unit expression (`Word(/Word)*`, words adjacent to the slashes)
/// starts at raw index `j` on the same line as a number ending at `num_end`,
/// returns the index after it and its end offset.
fn unit_after(
    src: &str,
    raw: &[(usize, Raw, usize)],
    j: usize,
    num_end: usize,
) -> Option<(usize, usize)> {
    let &(ws, ref wt, we) = raw.get(j)?;
    let word_like = matches!(wt, Raw::Ident | Raw::Dollar);
    if !word_like || !same_line(src, num_end, ws) {
        return None;
    }
    // Only join a word that is a known unit word or looks like one (starts
    // upper-case or is a short lower-case unit); plain identifiers stay apart.
    let word = &src[ws..we];
    if units::unit_word(word).is_none() && !looks_like_unit(word) {
        return None;
    }
    let mut k = j + 1;
    let mut end = we;
    while let (Some(&(ss, Raw::Slash, se)), Some(&(ns, ref nt, ne))) = (raw.get(k), raw.get(k + 1))
    {
        if ss != end || ns != se || !matches!(nt, Raw::Ident | Raw::X) {
            break;
        }
        end = ne;
        k += 2;
    }
    Some((k, end))
}

/// Heuristic for "the user meant a unit here": an identifier written right
/// after a number whose spelling resembles a unit (upper-case start, or ends
/// in a known base such as `flops`).
fn looks_like_unit(w: &str) -> bool {
    let first = w.split('/').next().unwrap_or("");
    let lower = first.to_ascii_lowercase();
    first.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        || lower.contains("flop")
        || lower.ends_with("bps")
}

fn unit_help(w: &str) -> String {
    let lower = w.to_ascii_lowercase();
    if lower.contains("flops") {
        return "compute rates are written `TFLOP/s` (FLOP per second), not `TFLOPS`".into();
    }
    if lower.starts_with("gbps") || lower.ends_with("bps") {
        return "bandwidths are written `Gb/s` (bits) or `GB/s` (bytes)".into();
    }
    "units are FLOP, B (bytes), b (bits), s, ms, us, ns, h, min, day, yr, W, J, Wh and $, with prefixes k M G T P E or Ki Mi Gi Ti Pi, combined with `/`".into()
}

fn parse_number(text: &str) -> Option<f64> {
    let clean: String = text.chars().filter(|&c| c != '_').collect();
    let v: f64 = clean.parse().ok()?;
    v.is_finite().then_some(v)
}

fn map_raw(t: &Raw, text: &str) -> Tok {
    match t {
        Raw::Import => Tok::Import,
        Raw::Let => Tok::Let,
        Raw::Device => Tok::Device,
        Raw::Node => Tok::Node,
        Raw::Cluster => Tok::Cluster,
        Raw::Model => Tok::Model,
        Raw::Table => Tok::Table,
        Raw::Workload => Tok::Workload,
        Raw::Plan => Tok::Plan,
        Raw::Study => Tok::Study,
        Raw::On => Tok::On,
        Raw::For => Tok::For,
        Raw::Repeat => Tok::Repeat,
        Raw::Input => Tok::Input,
        Raw::Output => Tok::Output,
        Raw::Search => Tok::Search,
        Raw::Fix => Tok::Fix,
        Raw::Objective => Tok::Objective,
        Raw::Maximize => Tok::Maximize,
        Raw::Minimize => Tok::Minimize,
        Raw::Subject => Tok::Subject,
        Raw::To => Tok::To,
        Raw::In => Tok::In,
        Raw::True => Tok::True,
        Raw::False => Tok::False,
        Raw::X => Tok::X,
        Raw::Ident => Tok::Ident(text.to_string()),
        Raw::Str => Tok::Str(unescape(&text[1..text.len() - 1])),
        Raw::LBrace => Tok::LBrace,
        Raw::RBrace => Tok::RBrace,
        Raw::LParen => Tok::LParen,
        Raw::RParen => Tok::RParen,
        Raw::LBracket => Tok::LBracket,
        Raw::RBracket => Tok::RBracket,
        Raw::Comma => Tok::Comma,
        Raw::Colon => Tok::Colon,
        Raw::Eq => Tok::Eq,
        Raw::EqEq => Tok::EqEq,
        Raw::NotEq => Tok::NotEq,
        Raw::Lt => Tok::Lt,
        Raw::Le => Tok::Le,
        Raw::Gt => Tok::Gt,
        Raw::Ge => Tok::Ge,
        Raw::Plus => Tok::Plus,
        Raw::Minus => Tok::Minus,
        Raw::Star => Tok::Star,
        Raw::Slash => Tok::Slash,
        Raw::Percent => Tok::Percent,
        Raw::DotDot => Tok::DotDot,
        Raw::Dot => Tok::Dot,
        Raw::At => Tok::At,
        Raw::Semi => Tok::Semi,
        // Handled by the caller before mapping.
        Raw::Number | Raw::Dollar | Raw::BlockCommentStart | Raw::UnterminatedStr => {
            Tok::Ident(text.to_string())
        }
    }
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\\' {
            match it.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Bounds bracket nesting. Past [`MAX_NESTING`] the rest of the file is cut
/// off with one diagnostic, so no later pass can recurse without bound.
fn limit_nesting(out: &mut Lexed) {
    let mut depth = 0usize;
    for (idx, (s, t, e)) in out.tokens.iter().enumerate() {
        match t {
            Tok::LBrace | Tok::LParen | Tok::LBracket => {
                depth += 1;
                if depth > MAX_NESTING {
                    out.diagnostics.push(
                        Diagnostic::error(
                            Code::L013,
                            format!("brackets nested deeper than {MAX_NESTING} levels"),
                            Span::new(*s, *e),
                        )
                        .with_label(Span::new(*s, *e), "this bracket is too deep")
                        .with_help("split the expression with `let` bindings"),
                    );
                    out.tokens.truncate(idx);
                    out.truncated = true;
                    return;
                }
            }
            Tok::RBrace | Tok::RParen | Tok::RBracket => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(src: &str) -> Vec<Tok> {
        let l = lex(src);
        assert!(l.diagnostics.is_empty(), "{:?}", l.diagnostics);
        l.tokens.into_iter().map(|t| t.1).collect()
    }

    #[test]
    fn quantities_join_units() {
        let t = toks("989 TFLOP/s 80 GiB $2.50/h 5 us");
        assert_eq!(t.len(), 5);
        match &t[0] {
            Tok::Quantity(QtyLit { value: q, text }) => {
                assert_eq!(q.value, 989e12);
                assert_eq!(text, "989 TFLOP/s");
            }
            other => panic!("{other:?}"),
        }
        match &t[2] {
            Tok::Quantity(QtyLit { value: q, .. }) => {
                assert!((q.value * 3600.0 - 2.5).abs() < 1e-12)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_byte_order_mark_is_skipped_and_spans_index_the_file() {
        let src = "\u{FEFF}let x = 1";
        let l = lex(src);
        assert!(l.diagnostics.is_empty(), "{:?}", l.diagnostics);
        assert_eq!(l.tokens[0].1, Tok::Let);
        assert_eq!(&src[l.tokens[0].0..l.tokens[0].2], "let");
        // Only at the start: elsewhere it is still not a token (L001).
        assert_eq!(lex("let x = 1 \u{FEFF}").diagnostics.len(), 1);
    }

    #[test]
    fn spaced_slash_divides() {
        let t = toks("80 GB / 2");
        assert_eq!(t.len(), 4);
        assert_eq!(t[1], Tok::Slash);
    }

    #[test]
    fn unit_needs_same_line() {
        let t = toks("x = 8\nB = 2");
        assert!(matches!(t[2], Tok::Number(..)));
        assert_eq!(t[3], Tok::Semi);
    }

    #[test]
    fn newlines_terminate_only_in_blocks() {
        let t = toks("f(a,\n b)\ng { a\n b\n}\n");
        let semis = t.iter().filter(|t| **t == Tok::Semi).count();
        // after `f(..)`, after `a` in the block, after `}`; not before `}`.
        assert_eq!(semis, 3, "{t:?}");
    }

    #[test]
    fn unknown_unit_is_reported() {
        let l = lex("compute 989 TFLOPS");
        assert_eq!(l.diagnostics.len(), 1);
        assert_eq!(l.diagnostics[0].code, Code::L004);
    }

    #[test]
    fn bad_characters_are_one_diagnostic_per_run() {
        let l = lex("a ### b");
        assert_eq!(l.diagnostics.len(), 1);
        assert_eq!(l.tokens.len(), 3);
    }

    #[test]
    fn comments_are_kept() {
        let l = lex("a // one\n/* two */ b \"// not\"");
        assert_eq!(l.comments.len(), 2);
        assert_eq!(l.tokens.len(), 5);
    }

    #[test]
    fn unclosed_bracket_is_closed_before_the_next_declaration() {
        let l = lex("let a = max(1,\n  2\ndevice D {\n  power 700 W\n}\n");
        assert_eq!(l.diagnostics.len(), 1, "{:?}", l.diagnostics);
        assert!(l.diagnostics[0].message.contains("never closed"));
        // A `)` was inserted before `device`.
        let pos = l
            .tokens
            .iter()
            .position(|t| t.1 == Tok::Device)
            .expect("device");
        assert!(l.tokens[..pos].iter().any(|t| t.1 == Tok::RParen));
        // Indented item keywords inside blocks are not declarations.
        assert!(lex("node N {\n  device H x 8\n}\n").diagnostics.is_empty());
        assert!(
            lex("workload W {\nmodel M(a = 1)\ntrain { seq = 1 }\n}\n")
                .diagnostics
                .is_empty()
        );
    }

    #[test]
    fn deep_nesting_is_cut() {
        let src = "(".repeat(10_000);
        let l = lex(&src);
        assert_eq!(l.diagnostics[0].code, Code::L013);
        assert!(l.tokens.len() <= MAX_NESTING);
        assert!(l.truncated);
    }

    /// Reported literals become one `Bad` token covering all of them, so
    /// the parser and checker see something already reported, not a half.
    fn bad(src: &str) -> (Vec<Code>, Vec<Tok>) {
        let l = lex(src);
        (
            l.diagnostics.iter().map(|d| d.code).collect(),
            l.tokens.into_iter().map(|t| t.1).collect(),
        )
    }

    #[test]
    fn reported_literals_become_one_bad_token() {
        assert_eq!(bad("1e999"), (vec![Code::L003], vec![Tok::Bad, Tok::Semi]));
        assert_eq!(
            bad("1e999 GB"),
            (vec![Code::L003], vec![Tok::Bad, Tok::Semi])
        );
        assert_eq!(
            bad("989 TFLOPS"),
            (vec![Code::L004], vec![Tok::Bad, Tok::Semi])
        );
        assert_eq!(
            bad("$ 2.50/h"),
            (vec![Code::L001], vec![Tok::Bad, Tok::Semi])
        );
        assert_eq!(bad("$"), (vec![Code::L001], vec![Tok::Bad, Tok::Semi]));
        assert_eq!(bad("\"abc"), (vec![Code::L002], vec![Tok::Bad, Tok::Semi]));
    }

    #[test]
    fn one_multibyte_character_is_singular() {
        let l = lex("1 \u{2022}");
        assert_eq!(l.diagnostics[0].message, "unexpected character `\u{2022}`");
    }

    #[test]
    fn unclosed_block_comment_truncates() {
        assert!(lex("a /* b").truncated);
        assert!(!lex("a /* b */").truncated);
    }
}

//! The canonical formatter (`gantry fmt`).
//!
//! It prints the syntax tree, not the tokens, so layout is canonical: two
//! spaces of indent, one item per line, single spaces around operators,
//! minimal parentheses, numbers and units exactly as written (`80 GiB` stays
//! `80 GiB`: the formatter never changes a value). Comments are kept: each
//! is printed before the first node that starts after it, or at the end of
//! the line it trailed. Blank lines between items are kept (at most one), so
//! the author's grouping survives. A record, list, set or argument list
//! written over several lines stays multi-line, one element per line (lists,
//! sets and arguments with a trailing comma), with the comments between its
//! elements kept in place. An empty block prints as `{}`. Files with syntax
//! errors are not formatted.

use crate::ast::*;
use crate::diagnostic::Diagnostic;
use crate::lexer::Comment;
use crate::parser;
use crate::span::FileId;

/// Formats a whole file, or returns its syntax errors.
pub fn format_source(src: &str) -> Result<String, Vec<Diagnostic>> {
    let parsed = parser::parse(src, FileId(0));
    let errors: Vec<Diagnostic> = parsed
        .diagnostics
        .into_iter()
        .filter(|d| d.is_error())
        .collect();
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut p = Printer {
        src,
        comments: parsed.comments,
        next: 0,
        out: String::new(),
        indent: 0,
    };
    p.file(&parsed.file);
    Ok(p.out)
}

struct Printer<'a> {
    src: &'a str,
    comments: Vec<Comment>,
    next: usize,
    out: String,
    indent: usize,
}

const AT: u8 = 1;
const CMP: u8 = 2;
const RANGE: u8 = 3;
const SUM: u8 = 4;
const PROD: u8 = 5;
const UNARY: u8 = 6;
const POSTFIX: u8 = 7;

fn level(e: &Expr) -> u8 {
    match &e.kind {
        ExprKind::At(..) => AT,
        ExprKind::Binary(op, ..) if op.is_comparison() => CMP,
        ExprKind::Range(..) => RANGE,
        ExprKind::Binary(BinOp::Add | BinOp::Sub, ..) => SUM,
        ExprKind::Binary(..) => PROD,
        ExprKind::Neg(_) => UNARY,
        ExprKind::Call(..) | ExprKind::Member(..) => POSTFIX,
        _ => 8,
    }
}

impl Printer<'_> {
    fn line_start(&mut self) {
        for _ in 0..self.indent {
            self.out.push_str("  ");
        }
    }

    /// Prints the comments that start before `pos`, each on its own line.
    fn leading(&mut self, pos: u32) {
        while self.next < self.comments.len() && self.comments[self.next].span.start < pos {
            let c = self.comments[self.next].clone();
            // Keep a blank line above a comment block if the source had one.
            let opened = ["{\n", "[\n", "(\n", "\n\n"]
                .iter()
                .any(|o| self.out.ends_with(o));
            if self.blank_before(c.span.start) && !self.out.is_empty() && !opened {
                self.out.push('\n');
            }
            for (i, line) in c.text.lines().enumerate() {
                if i == 0 {
                    self.line_start();
                }
                self.out.push_str(line.trim_end());
                self.out.push('\n');
            }
            self.next += 1;
        }
    }

    /// Appends a comment that trails `end` on the same source line.
    fn trailing(&mut self, end: u32) {
        self.trailing_before(end, u32::MAX);
    }

    /// [`Self::trailing`] for a comment that starts before `limit`: inside
    /// brackets, the closing bracket, so a comment after `2)` in `f(1,\n2)
    /// // c` trails the `)`, not the `2`.
    fn trailing_before(&mut self, end: u32, limit: u32) {
        if let Some(c) = self.comments.get(self.next)
            && c.span.start >= end
            && c.span.start < limit
            && !self.src[end as usize..c.span.start as usize].contains('\n')
            && !c.text.contains('\n')
        {
            let text = c.text.clone();
            self.out.push_str("  ");
            self.out.push_str(text.trim_end());
            self.next += 1;
        }
    }

    /// Appends a comment that trails an opening bracket (`device D { // c`,
    /// `let w = [ // c`) on the same source line, if the next comment does
    /// and starts before `before` (the first element), so it stays on the
    /// bracket's line instead of moving to the next one.
    fn trailing_open(&mut self, before: u32) {
        if let Some(c) = self.comments.get(self.next)
            && c.span.start < before
            && !c.text.contains('\n')
            && self.src[..c.span.start as usize]
                .trim_end_matches([' ', '\t'])
                .ends_with(['{', '[', '('])
        {
            let text = c.text.clone();
            self.out.push_str("  ");
            self.out.push_str(text.trim_end());
            self.next += 1;
        }
    }

    /// True if there is an empty line between the previous token and `pos`.
    fn blank_before(&self, pos: u32) -> bool {
        let before = &self.src[..pos as usize];
        let trimmed = before.trim_end_matches([' ', '\t', '\r']);
        let Some(rest) = trimmed.strip_suffix('\n') else {
            return false;
        };
        rest.trim_end_matches([' ', '\t', '\r']).ends_with('\n')
    }

    fn file(&mut self, f: &File) {
        let mut prev: Option<&Decl> = None;
        for d in &f.decls {
            if let Decl::Error(_) = d {
                continue;
            }
            if let Some(p) = prev {
                let same_group = matches!(
                    (p, d),
                    (Decl::Import { .. }, Decl::Import { .. })
                        | (Decl::Let { .. }, Decl::Let { .. })
                );
                if !same_group || self.blank_before(self.first_pos(d.span().start)) {
                    self.out.push('\n');
                }
            }
            self.leading(d.span().start);
            self.line_start();
            self.decl(d);
            self.trailing(d.span().end);
            self.out.push('\n');
            prev = Some(d);
        }
        // Comments after the last declaration.
        if self.next < self.comments.len() && !self.out.is_empty() {
            self.out.push('\n');
        }
        self.leading(u32::MAX);
    }

    /// The start of a node's leading comments, if any, else its own start.
    fn first_pos(&self, start: u32) -> u32 {
        self.comments
            .get(self.next)
            .filter(|c| c.span.start < start)
            .map_or(start, |c| c.span.start)
    }

    fn decl(&mut self, d: &Decl) {
        match d {
            Decl::Import { path, .. } => {
                self.out.push_str("import ");
                self.string(path);
            }
            Decl::Let { name, value, .. } => {
                self.out.push_str(&format!("let {} = ", name.name));
                self.expr(value, 0);
            }
            Decl::Block(b) => {
                self.out
                    .push_str(&format!("{} {}", b.kind.keyword(), b.name.name));
                self.params(&b.params);
                self.block(&b.items, b.span.end, |p, it| p.item(it), |it| it.span);
            }
            Decl::Model(m) => {
                self.out.push_str(&format!("model {}", m.name.name));
                self.params(&m.params);
                self.block(&m.body, m.span.end, |p, s| p.stmt(s), |s| s.span());
            }
            Decl::Plan(pd) => {
                self.out
                    .push_str(&format!("{} {} on ", pd.kind.keyword(), pd.name.name));
                self.expr(&pd.system, 0);
                if let Some(w) = &pd.workload {
                    self.out.push_str(" for ");
                    self.expr(w, 0);
                }
                self.block(
                    &pd.items,
                    pd.span.end,
                    |p, it| p.plan_item(it),
                    |it| it.span(),
                );
            }
            Decl::Error(_) => {}
        }
    }

    fn params(&mut self, params: &[Param]) {
        if params.is_empty() {
            return;
        }
        self.out.push('(');
        for (i, p) in params.iter().enumerate() {
            if i > 0 {
                self.out.push_str(", ");
            }
            self.out.push_str(&p.name.name);
            if let Some(t) = &p.ty {
                self.out.push_str(": ");
                self.expr(t, 8);
            }
            if let Some(d) = &p.default {
                self.out.push_str(" = ");
                self.expr(d, 0);
            }
        }
        self.out.push(')');
    }

    fn block<T>(
        &mut self,
        items: &[T],
        end: u32,
        mut print: impl FnMut(&mut Self, &T),
        span: impl Fn(&T) -> crate::span::Span,
    ) {
        let empty = items.iter().all(|it| {
            let s = span(it);
            s.start == s.end
        });
        let comment_inside = self
            .comments
            .get(self.next)
            .is_some_and(|c| c.span.start < end);
        if empty && !comment_inside {
            self.out.push_str(" {}");
            return;
        }
        self.out.push_str(" {");
        let first = items
            .iter()
            .map(&span)
            .find(|s| s.start != s.end)
            .map_or(end, |s| s.start);
        self.trailing_open(first);
        self.out.push('\n');
        self.indent += 1;
        for (i, it) in items.iter().enumerate() {
            let s = span(it);
            if s.start == s.end {
                continue;
            }
            if i > 0 && self.blank_before(self.first_pos(s.start)) {
                self.out.push('\n');
            }
            self.leading(s.start);
            self.line_start();
            print(self, it);
            self.trailing_before(s.end, end.saturating_sub(1));
            self.out.push('\n');
        }
        // Comments before the closing brace.
        self.leading(end.saturating_sub(1));
        self.indent -= 1;
        self.line_start();
        self.out.push('}');
    }

    fn item(&mut self, it: &Item) {
        self.out.push_str(&it.key.name);
        match it.form {
            ItemForm::Assign => {
                self.out.push_str(" = ");
                self.expr(&it.value, 0);
            }
            ItemForm::Value => {
                self.out.push(' ');
                self.expr(&it.value, 0);
                if let Some(c) = &it.count {
                    self.out.push_str(" x ");
                    self.expr(c, 0);
                }
            }
            ItemForm::Named => {
                if let Some(n) = &it.name {
                    self.out.push(' ');
                    self.out.push_str(&n.name);
                }
                self.out.push_str(" = ");
                self.expr(&it.value, 0);
            }
        }
    }

    fn stmt(&mut self, s: &Stmt) {
        match s {
            Stmt::Let { name, value, .. } => {
                self.out.push_str(&format!("let {} = ", name.name));
                self.expr(value, 0);
            }
            Stmt::Input {
                name, dtype, dims, ..
            } => {
                self.out
                    .push_str(&format!("input {}: {}[", name.name, dtype.name));
                self.list(dims);
                self.out.push(']');
            }
            Stmt::Assign { name, value, .. } => {
                self.out.push_str(&format!("{} = ", name.name));
                self.expr(value, 0);
            }
            Stmt::Output { name, value, .. } => {
                self.out.push_str(&format!("output {} = ", name.name));
                self.expr(value, 0);
            }
            Stmt::Repeat { count, body, span } => {
                self.out.push_str("repeat ");
                self.expr(count, 0);
                self.block(body, span.end, |p, s| p.stmt(s), |s| s.span());
            }
            Stmt::Error(_) => {}
        }
    }

    fn plan_item(&mut self, it: &PlanItem) {
        match it {
            PlanItem::Search { knobs, .. } => {
                self.out.push_str("search ");
                self.knobs(knobs);
            }
            PlanItem::Fix { knobs, .. } => {
                self.out.push_str("fix ");
                self.knobs(knobs);
            }
            PlanItem::Objective { goal, metric, .. } => {
                let g = match goal {
                    Goal::Maximize => "maximize",
                    Goal::Minimize => "minimize",
                };
                self.out.push_str(&format!("objective {g} {}", metric.name));
            }
            PlanItem::SubjectTo { constraints, .. } => {
                self.out.push_str("subject to ");
                self.list(constraints);
            }
            PlanItem::Item(i) => self.item(i),
            PlanItem::Error(_) => {}
        }
    }

    fn knobs(&mut self, knobs: &[Knob]) {
        for (i, k) in knobs.iter().enumerate() {
            if i > 0 {
                self.out.push_str(", ");
            }
            match k {
                Knob::In(n, e) => {
                    self.out.push_str(&format!("{} in ", n.name));
                    self.expr(e, 0);
                }
                Knob::Eq(n, e) => {
                    self.out.push_str(&format!("{} = ", n.name));
                    self.expr(e, 0);
                }
            }
        }
    }

    fn list(&mut self, xs: &[Expr]) {
        for (i, x) in xs.iter().enumerate() {
            if i > 0 {
                self.out.push_str(", ");
            }
            self.expr(x, 0);
        }
    }

    fn string(&mut self, s: &str) {
        self.out.push('"');
        for c in s.chars() {
            match c {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                '\t' => self.out.push_str("\\t"),
                c => self.out.push(c),
            }
        }
        self.out.push('"');
    }

    /// Prints `e`, parenthesized if its precedence is below `min`.
    fn expr(&mut self, e: &Expr, min: u8) {
        let lv = level(e);
        let paren = lv < min;
        if paren {
            self.out.push('(');
        }
        match &e.kind {
            ExprKind::Number(_, text) => self.out.push_str(text),
            ExprKind::Quantity(_, text) => self.out.push_str(&quantity_text(text)),
            ExprKind::Str(s) => self.string(s),
            ExprKind::Bool(b) => self.out.push_str(if *b { "true" } else { "false" }),
            ExprKind::Name(n) => self.out.push_str(n),
            ExprKind::Neg(a) => {
                self.out.push('-');
                self.expr(a, UNARY);
            }
            ExprKind::Binary(op, a, b) => {
                let (l, r) = if op.is_comparison() {
                    (RANGE, RANGE)
                } else {
                    (lv, lv + 1)
                };
                self.expr(a, l);
                self.out.push_str(&format!(" {} ", op.symbol()));
                self.expr(b, r);
            }
            ExprKind::Range(a, b, step) => {
                self.expr(a, SUM);
                self.out.push_str("..");
                self.expr(b, SUM);
                if let Some(s) = step {
                    self.out.push_str(" step ");
                    self.expr(s, SUM);
                }
            }
            ExprKind::At(a, b) => {
                self.expr(a, CMP);
                self.out.push_str(" @ ");
                self.expr(b, CMP);
            }
            ExprKind::Call(f, args) => {
                self.expr(f, POSTFIX);
                let open = self.src[f.span.end as usize..]
                    .find('(')
                    .map_or(f.span.end, |i| f.span.end + i as u32);
                let arg_span = |a: &Arg| match &a.name {
                    Some(n) => n.span.to(a.value.span),
                    None => a.value.span,
                };
                let print = |p: &mut Self, a: &Arg| {
                    if let Some(n) = &a.name {
                        p.out.push_str(&format!("{} = ", n.name));
                    }
                    p.expr(&a.value, 0);
                };
                self.seq(
                    ('(', ')'),
                    args,
                    (open, e.span.end.saturating_sub(1)),
                    arg_span,
                    print,
                );
            }
            ExprKind::Member(a, m) => {
                self.expr(a, POSTFIX);
                self.out.push('.');
                self.out.push_str(&m.name);
            }
            ExprKind::List(xs) => {
                let within = (e.span.start, e.span.end.saturating_sub(1));
                self.seq(('[', ']'), xs, within, |x| x.span, |p, x| p.expr(x, 0));
            }
            ExprKind::Set(xs) => {
                let within = (e.span.start, e.span.end.saturating_sub(1));
                self.seq(('{', '}'), xs, within, |x| x.span, |p, x| p.expr(x, 0));
            }
            ExprKind::Record(fs) => self.record(fs, e),
            ExprKind::Error => {}
        }
        if paren {
            self.out.push(')');
        }
    }

    /// A bracketed, comma-separated sequence whose brackets sit at byte
    /// offsets `open` and `close`. On one line if it was written on one line
    /// (at its own level: a newline inside an element does not count);
    /// otherwise one element per line, each with a trailing comma, and the
    /// comments between elements where they were.
    fn seq<T>(
        &mut self,
        (open_ch, close_ch): (char, char),
        items: &[T],
        (open, close): (u32, u32),
        span: impl Fn(&T) -> crate::span::Span,
        mut print: impl FnMut(&mut Self, &T),
    ) {
        let mut gaps = Vec::with_capacity(items.len() + 1);
        let mut at = open + 1;
        for it in items {
            let s = span(it);
            gaps.push((at, s.start));
            at = s.end;
        }
        gaps.push((at, close));
        let multiline = !items.is_empty()
            && gaps.iter().any(|&(a, b)| {
                a <= b
                    && self
                        .src
                        .get(a as usize..b as usize)
                        .is_some_and(|t| t.contains('\n'))
            });
        self.out.push(open_ch);
        if !multiline {
            for (i, it) in items.iter().enumerate() {
                if i > 0 {
                    self.out.push_str(", ");
                }
                print(self, it);
            }
            self.out.push(close_ch);
            return;
        }
        self.trailing_open(items.first().map_or(close, |it| span(it).start));
        self.out.push('\n');
        self.indent += 1;
        for it in items {
            let s = span(it);
            self.leading(s.start);
            self.line_start();
            print(self, it);
            self.out.push(',');
            self.trailing_after_comma(s.end, close);
            self.out.push('\n');
        }
        self.leading(close);
        self.indent -= 1;
        self.line_start();
        self.out.push(close_ch);
    }

    fn record(&mut self, fs: &[Field], e: &Expr) {
        let multiline = self.src[e.span.range()].contains('\n') && !fs.is_empty();
        if !multiline {
            self.out.push_str("{ ");
            for (i, f) in fs.iter().enumerate() {
                if i > 0 {
                    self.out.push_str(", ");
                }
                self.out.push_str(&format!("{} = ", f.name.name));
                self.expr(&f.value, 0);
            }
            self.out.push_str(if fs.is_empty() { "}" } else { " }" });
            return;
        }
        self.out.push('{');
        self.trailing_open(fs.first().map_or(e.span.end, |f| f.name.span.start));
        self.out.push('\n');
        self.indent += 1;
        for f in fs {
            self.leading(f.name.span.start);
            self.line_start();
            self.out.push_str(&format!("{} = ", f.name.name));
            self.expr(&f.value, 0);
            self.trailing_after_comma(f.value.span.end, e.span.end.saturating_sub(1));
            self.out.push('\n');
        }
        self.leading(e.span.end.saturating_sub(1));
        self.indent -= 1;
        self.line_start();
        self.out.push('}');
    }

    /// Like [`Self::trailing_before`], but skips a comma after the field.
    fn trailing_after_comma(&mut self, end: u32, limit: u32) {
        let rest = &self.src[end as usize..];
        let skip = rest.len() - rest.trim_start_matches([' ', '\t', ',']).len();
        self.trailing_before(end + skip as u32, limit);
    }
}

/// A quantity as written, with exactly one space between number and unit.
fn quantity_text(text: &str) -> String {
    if text.starts_with('$') {
        return text.to_string();
    }
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'_' || b[i] == b'.') {
        i += 1;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        let mut j = i + 1;
        if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
            j += 1;
        }
        if j < b.len() && b[j].is_ascii_digit() {
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            i = j;
        }
    }
    let (num, unit) = text.split_at(i);
    format!("{} {}", num, unit.trim_start())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(s: &str) -> String {
        format_source(s).unwrap_or_else(|e| panic!("{e:?}"))
    }

    #[test]
    fn canonical_layout() {
        let src = "device   H{power 700W\n compute {bf16=989 TFLOP/s}}\n";
        assert_eq!(
            fmt(src),
            "device H {\n  power 700 W\n  compute { bf16 = 989 TFLOP/s }\n}\n"
        );
    }

    #[test]
    fn comments_survive() {
        let src = "// header\ndevice H { // trailing\n  power 700 W // watts\n  // before price\n  price $2/h\n}\n// end\n";
        let out = fmt(src);
        for c in [
            "// header",
            "// trailing",
            "// watts",
            "// before price",
            "// end",
        ] {
            assert!(out.contains(c), "{c} lost in:\n{out}");
        }
        assert_eq!(fmt(&out), out, "not idempotent");
    }

    #[test]
    fn minimal_parentheses() {
        let out = fmt("let a = (1 + 2) * 3 - (4 - 5)\nlet b = 1 + (2 * 3)\n");
        assert_eq!(out, "let a = (1 + 2) * 3 - (4 - 5)\nlet b = 1 + 2 * 3\n");
    }

    #[test]
    fn multi_line_list_stays_multi_line_with_comments_in_place() {
        let src = "let widths = [512, // first\n  // second next\n  256,\n  64 // last\n]\n";
        let out = fmt(src);
        assert_eq!(
            out,
            "let widths = [\n  512,  // first\n  // second next\n  256,\n  64,  // last\n]\n"
        );
        assert_eq!(fmt(&out), out, "not idempotent");
    }

    #[test]
    fn one_line_list_stays_one_line() {
        assert_eq!(
            fmt("let a = [1,2,  3]\nlet b = [1, 2,]\n"),
            "let a = [1, 2, 3]\nlet b = [1, 2]\n"
        );
    }

    #[test]
    fn multi_line_call_puts_one_argument_per_line() {
        let src = "model M(d = 4) {\n  input t: i32[batch, seq]\n  x = embedding(t,\n    100, dim = d)\n  output y = x\n}\n";
        let out = fmt(src);
        assert!(
            out.contains("  x = embedding(\n    t,\n    100,\n    dim = d,\n  )\n"),
            "{out}"
        );
        assert_eq!(fmt(&out), out, "not idempotent");
    }

    #[test]
    fn a_newline_inside_an_element_does_not_split_the_outer_call() {
        let src = "let x = max(1, len([\n  2,\n  3]))\nlet y = f(a, [\n  1,\n  2])\n";
        let out = fmt(src);
        assert!(
            out.starts_with("let x = max(1, len([\n  2,\n  3,\n]))\n"),
            "{out}"
        );
        assert!(out.contains("let y = f(a, [\n  1,\n  2,\n])\n"), "{out}");
        assert_eq!(fmt(&out), out, "not idempotent");
    }

    #[test]
    fn multi_line_set_gets_trailing_commas() {
        let src = "plan p on N for w {\n  search tp in {1,\n    2, 4,}\n}\n";
        let out = fmt(src);
        assert_eq!(
            out,
            "plan p on N for w {\n  search tp in {\n    1,\n    2,\n    4,\n  }\n}\n"
        );
        assert_eq!(fmt(&out), out, "not idempotent");
        // A one-line set drops a trailing comma.
        assert_eq!(fmt("let s = {1, 2,}\n"), "let s = {1, 2}\n");
    }

    #[test]
    fn empty_block_prints_on_one_line() {
        assert_eq!(fmt("table T(rows) {\n}\n"), "table T(rows) {}\n");
        assert_eq!(fmt("device D {}\n"), "device D {}\n");
        // A comment keeps the block open.
        assert_eq!(
            fmt("device D {\n  // later\n}\n"),
            "device D {\n  // later\n}\n"
        );
    }

    #[test]
    fn comments_after_brackets_stay_on_their_line() {
        let src = "device D { // d\n  efficiency { // e\n    matmul = 0.5, // m\n    memory = 0.9 } // closed\n} // end\nlet w = [ // w\n  1,\n  2] // after\nlet z = 1 // no newline";
        let out = fmt(src);
        assert_eq!(
            out,
            "device D {  // d\n  efficiency {  // e\n    matmul = 0.5  // m\n    memory = 0.9\n  }  // closed\n}  // end\n\nlet w = [  // w\n  1,\n  2,\n]  // after\nlet z = 1  // no newline\n"
        );
        assert_eq!(fmt(&out), out, "not idempotent");
        // An empty block with a comment after its brace keeps both.
        assert_eq!(fmt("device D { // later\n}\n"), "device D {  // later\n}\n");
    }

    #[test]
    fn keyword_annotations_round_trip() {
        let src =
            "model M(tables: [table], d: int = 4) {\n  input t: i32[batch]\n  output y = t\n}\n";
        assert_eq!(fmt(src), src);
    }

    #[test]
    fn quantity_spacing() {
        assert_eq!(quantity_text("80GiB"), "80 GiB");
        assert_eq!(quantity_text("1e9 B"), "1e9 B");
        assert_eq!(quantity_text("1EFLOP/s"), "1 EFLOP/s");
        assert_eq!(quantity_text("$2.50/h"), "$2.50/h");
    }
}

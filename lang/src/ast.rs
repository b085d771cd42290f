//! The syntax tree. Every node carries the [`Span`] it was parsed from.
//!
//! The tree is deliberately generic where the language is: hardware,
//! workload and table declarations are all "a name, parameters and a list of
//! items", so adding a field to `device` needs no grammar change, only a
//! checker rule. Models (statements with data flow) and plans (search
//! knobs) have their own shapes. This module is private to `lang`; the
//! checker turns it into [`crate::program`] types, which are what other
//! crates see.

use crate::span::Span;
use crate::units::Quantity;

#[derive(Debug, Clone, PartialEq)]
pub struct File {
    pub decls: Vec<Decl>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeclKind {
    Device,
    Node,
    Cluster,
    Table,
    Workload,
    Model,
    Plan,
    Study,
    /// A serving engine's fitted host and kernel terms (`engine NAME { ... }`).
    Engine,
    Let,
}

impl DeclKind {
    pub fn keyword(self) -> &'static str {
        match self {
            DeclKind::Device => "device",
            DeclKind::Node => "node",
            DeclKind::Cluster => "cluster",
            DeclKind::Table => "table",
            DeclKind::Workload => "workload",
            DeclKind::Model => "model",
            DeclKind::Plan => "plan",
            DeclKind::Study => "study",
            DeclKind::Engine => "engine",
            DeclKind::Let => "let",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decl {
    Import {
        path: String,
        span: Span,
    },
    Let {
        name: Ident,
        value: Expr,
        span: Span,
    },
    Block(BlockDecl),
    Model(ModelDecl),
    Plan(PlanDecl),
    /// A declaration the parser could not read; already reported.
    Error(Span),
}

impl Decl {
    pub fn span(&self) -> Span {
        match self {
            Decl::Import { span, .. } | Decl::Let { span, .. } | Decl::Error(span) => *span,
            Decl::Block(b) => b.span,
            Decl::Model(m) => m.span,
            Decl::Plan(p) => p.span,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    pub name: Ident,
    /// An optional annotation such as `int`, `[int]` or `[table]`.
    pub ty: Option<Expr>,
    pub default: Option<Expr>,
    pub span: Span,
}

/// `device`, `node`, `cluster`, `table` and `workload` declarations.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockDecl {
    pub kind: DeclKind,
    pub name: Ident,
    pub params: Vec<Param>,
    pub items: Vec<Item>,
    pub span: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemForm {
    /// `key = value`
    Assign,
    /// `key value` or `key value x count`
    Value,
    /// `key name = value`
    Named,
}

/// One line of a block declaration.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub key: Ident,
    pub form: ItemForm,
    pub name: Option<Ident>,
    pub value: Expr,
    pub count: Option<Expr>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelDecl {
    pub name: Ident,
    pub params: Vec<Param>,
    pub body: Vec<Stmt>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Stmt {
    Let {
        name: Ident,
        value: Expr,
        span: Span,
    },
    Input {
        name: Ident,
        dtype: Ident,
        dims: Vec<Expr>,
        span: Span,
    },
    Assign {
        name: Ident,
        value: Expr,
        span: Span,
    },
    Output {
        name: Ident,
        value: Expr,
        span: Span,
    },
    Repeat {
        count: Expr,
        body: Vec<Stmt>,
        span: Span,
    },
    Error(Span),
}

impl Stmt {
    pub fn span(&self) -> Span {
        match self {
            Stmt::Let { span, .. }
            | Stmt::Input { span, .. }
            | Stmt::Assign { span, .. }
            | Stmt::Output { span, .. }
            | Stmt::Repeat { span, .. }
            | Stmt::Error(span) => *span,
        }
    }
}

/// `plan NAME on SYSTEM for WORKLOAD { ... }` and `study NAME on SYSTEM { ... }`.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanDecl {
    pub kind: DeclKind,
    pub name: Ident,
    pub system: Expr,
    pub workload: Option<Expr>,
    pub items: Vec<PlanItem>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Knob {
    /// `tp in {1, 2, 4}` or `pp in 1..32`
    In(Ident, Expr),
    /// `dp = auto`, `tp = 8`
    Eq(Ident, Expr),
}

impl Knob {
    pub fn name(&self) -> &Ident {
        match self {
            Knob::In(n, _) | Knob::Eq(n, _) => n,
        }
    }
    pub fn value(&self) -> &Expr {
        match self {
            Knob::In(_, e) | Knob::Eq(_, e) => e,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    Maximize,
    Minimize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PlanItem {
    Search {
        knobs: Vec<Knob>,
        span: Span,
    },
    Fix {
        knobs: Vec<Knob>,
        span: Span,
    },
    Objective {
        goal: Goal,
        metric: Ident,
        span: Span,
    },
    SubjectTo {
        constraints: Vec<Expr>,
        span: Span,
    },
    Item(Item),
    Error(Span),
}

impl PlanItem {
    pub fn span(&self) -> Span {
        match self {
            PlanItem::Search { span, .. }
            | PlanItem::Fix { span, .. }
            | PlanItem::Objective { span, .. }
            | PlanItem::SubjectTo { span, .. }
            | PlanItem::Error(span) => *span,
            PlanItem::Item(i) => i.span,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
        }
    }
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge | BinOp::Eq | BinOp::Ne
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: Ident,
    pub value: Expr,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ExprKind {
    /// A plain number and its text as written.
    Number(f64, String),
    /// A number with a unit, in base units, and its text as written.
    Quantity(Quantity, String),
    Str(String),
    Bool(bool),
    Name(String),
    Neg(Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `lo..hi`, inclusive, or `lo..hi step s` (linear steps).
    Range(Box<Expr>, Box<Expr>, Option<Box<Expr>>),
    /// `capacity @ bandwidth`
    At(Box<Expr>, Box<Expr>),
    Call(Box<Expr>, Vec<Arg>),
    Member(Box<Expr>, Ident),
    List(Vec<Expr>),
    Set(Vec<Expr>),
    Record(Vec<Field>),
    /// An expression the parser could not read (or one nested too deeply).
    Error,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
    /// Height of this expression tree; bounded by the parser.
    pub depth: u32,
}

/// Deepest expression tree accepted; see [`crate::lexer::MAX_NESTING`].
pub const MAX_EXPR_DEPTH: u32 = 128;

impl Expr {
    pub fn new(kind: ExprKind, span: Span) -> Expr {
        let depth = 1 + match &kind {
            ExprKind::Neg(a) | ExprKind::Member(a, _) => a.depth,
            ExprKind::Binary(_, a, b) | ExprKind::Range(a, b, None) | ExprKind::At(a, b) => {
                a.depth.max(b.depth)
            }
            ExprKind::Range(a, b, Some(s)) => a.depth.max(b.depth).max(s.depth),
            ExprKind::Call(f, args) => args
                .iter()
                .map(|a| a.value.depth)
                .max()
                .unwrap_or(0)
                .max(f.depth),
            ExprKind::List(xs) | ExprKind::Set(xs) => xs.iter().map(|x| x.depth).max().unwrap_or(0),
            ExprKind::Record(fs) => fs.iter().map(|f| f.value.depth).max().unwrap_or(0),
            _ => 0,
        };
        Expr { kind, span, depth }
    }
    pub fn error(span: Span) -> Expr {
        Expr {
            kind: ExprKind::Error,
            span,
            depth: 1,
        }
    }
    pub fn as_name(&self) -> Option<&str> {
        match &self.kind {
            ExprKind::Name(n) => Some(n),
            _ => None,
        }
    }
}

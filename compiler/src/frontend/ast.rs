//! The syntax tree of a `.snet` file, exactly as written: no names resolved, no values computed.
//! Every node carries its byte span. `lower` gives it meaning.

use ir::Span;

#[derive(Clone, Debug, Default)]
pub struct Program {
    pub items: Vec<Item>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct Item {
    pub kind: ItemKind,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub enum ItemKind {
    /// `model "name"`
    Model { name: String, name_span: Span },
    /// `input [c, h, w]`
    Input { dims: Vec<Expr> },
    /// `let name = expr`
    Let { name: Ident, value: Expr },
    /// `unit name { ops }`: a named op sequence used as a block's layer or a transition.
    Unit { name: Ident, body: Vec<OpStmt> },
    /// `[label:] stem|block|transition|head [(args)] [{ ops }]`
    Stage(Stage),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StageKind {
    Stem,
    Block,
    Transition,
    Head,
}

impl StageKind {
    pub fn keyword(self) -> &'static str {
        match self {
            StageKind::Stem => "stem",
            StageKind::Block => "block",
            StageKind::Transition => "transition",
            StageKind::Head => "head",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Stage {
    pub label: Option<Ident>,
    pub kind: StageKind,
    pub keyword_span: Span,
    pub args: Vec<Arg>,
    pub body: Option<Vec<OpStmt>>,
}

/// One op in a sequence: `[name =] op [(args)]`. The name is a dotted path (`bn1`,
/// `classifier.linear`) or a string; it names the op's parameters.
#[derive(Clone, Debug)]
pub struct OpStmt {
    pub name: Option<(String, Span)>,
    pub op: Ident,
    pub args: Vec<Arg>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    FloorDiv,
    Rem,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::FloorDiv => "//",
            BinOp::Rem => "%",
        }
    }
}

#[derive(Clone, Debug)]
pub enum ExprKind {
    Int(i64),
    Real(f64),
    Str(String),
    Name(String),
    Neg(Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `f(args)`: a function (`floor`, `channels`, `sparse`, ...), resolved by context.
    Call(Ident, Vec<Arg>),
    List(Vec<Expr>),
    /// Stands in for an expression that failed to parse (already reported).
    Error,
}

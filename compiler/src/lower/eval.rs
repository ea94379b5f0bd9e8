//! Expression evaluation: integers, reals, strings and booleans; `+ - * / // %`, `floor`,
//! `ceil`, `round`, `min`, `max` and `channels(label)`. Integer arithmetic is checked (overflow
//! is an error, never a wrap); `/` always gives a real, `//` and `%` floor like Python.
//!
//! Owns name lookup (locals over `let` bindings) and value diagnostics (E02xx names,
//! E03xx values). Must not touch the graph.

use crate::diagnostics::{Code, Diagnostic};
use crate::frontend::ast::{BinOp, Expr, ExprKind};
use crate::frontend::parser::suggest;
use ir::Span;
use std::collections::HashMap;
use std::fmt;

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    Real(f64),
    Str(String),
    Bool(bool),
    /// The value of a binding whose definition failed (already reported); every use of it is
    /// a follow-on error that is not shown.
    Poison,
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Int(_) => "integer",
            Value::Real(_) => "real",
            Value::Str(_) => "string",
            Value::Bool(_) => "boolean",
            Value::Poison => "invalid value",
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(v) => write!(f, "{v}"),
            Value::Real(v) => write!(f, "{v:?}"),
            Value::Str(s) => write!(f, "\"{s}\""),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Poison => write!(f, "<invalid>"),
        }
    }
}

/// A `let` binding: its value (or [`Value::Poison`]) and where it is written.
#[derive(Clone, Debug)]
pub struct Binding {
    pub value: Value,
    /// The bound name.
    pub name_span: Span,
    /// The expression after `=`: where a value that is wrong at its uses is fixed.
    pub value_span: Span,
}

/// Everything a name can resolve to, in lookup order: locals, then `let` bindings.
pub struct Scope<'a> {
    pub lets: &'a HashMap<String, Binding>,
    pub locals: &'a [(&'static str, Value)],
    /// Channels of each labelled stage's output; `None` for a stage that failed (a use is a
    /// follow-on error).
    pub labels: &'a HashMap<String, Option<u32>>,
}

impl Scope<'_> {
    fn lookup(&self, name: &str) -> Option<Value> {
        if let Some((_, v)) = self.locals.iter().find(|(n, _)| *n == name) {
            return Some(v.clone());
        }
        match name {
            "true" => return Some(Value::Bool(true)),
            "false" => return Some(Value::Bool(false)),
            _ => {}
        }
        self.lets.get(name).map(|b| b.value.clone())
    }

    /// The `let` binding an expression refers to when it is exactly a bound name (not shadowed
    /// by a local).
    fn binding_of<'e>(&'e self, expr: &'e Expr) -> Option<(&'e str, &'e Binding)> {
        let ExprKind::Name(name) = &expr.kind else {
            return None;
        };
        if self.locals.iter().any(|(n, _)| n == name) {
            return None;
        }
        self.lets.get(name).map(|b| (name.as_str(), b))
    }

    fn known_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.locals.iter().map(|(n, _)| *n).collect();
        names.extend(self.lets.keys().map(String::as_str));
        names.sort_unstable();
        names
    }
}

pub type Eval<T> = Result<T, Diagnostic>;

pub fn eval(expr: &Expr, scope: &Scope) -> Eval<Value> {
    match &expr.kind {
        ExprKind::Int(v) => Ok(Value::Int(*v)),
        ExprKind::Real(v) => Ok(Value::Real(*v)),
        ExprKind::Str(s) => Ok(Value::Str(s.clone())),
        ExprKind::Error => Err(Diagnostic::new(
            Code::UnexpectedToken,
            expr.span,
            "invalid expression",
        )),
        ExprKind::Name(name) => match scope.lookup(name) {
            Some(Value::Poison) => Err(Diagnostic::new(
                Code::UnknownName,
                expr.span,
                format!("`{name}` has no value"),
            )
            .follow_on()),
            Some(v) => Ok(v),
            None => Err(unknown_name(name, expr.span, scope)),
        },
        ExprKind::Neg(inner) => match eval(inner, scope)? {
            Value::Int(v) => v
                .checked_neg()
                .map(Value::Int)
                .ok_or_else(|| overflow(expr.span)),
            Value::Real(v) => Ok(Value::Real(-v)),
            other => Err(wrong_type(inner.span, "a number", &other)),
        },
        ExprKind::Binary(op, lhs, rhs) => {
            let a = eval(lhs, scope)?;
            let b = eval(rhs, scope)?;
            binary(*op, a, b, lhs.span, rhs.span, expr.span)
        }
        ExprKind::Call(callee, args) => {
            let named = args.iter().find(|a| a.name.is_some());
            if let Some(arg) = named {
                return Err(Diagnostic::new(
                    Code::UnknownArgument,
                    arg.span,
                    format!("`{}` takes no named arguments", callee.name),
                )
                .label("named argument")
                .help("pass the values in order"));
            }
            let values = |n: usize| -> Eval<Vec<Value>> {
                if args.len() != n && n != usize::MAX {
                    return Err(Diagnostic::new(
                        Code::WrongArity,
                        expr.span,
                        format!(
                            "`{}` takes {n} argument(s), found {}",
                            callee.name,
                            args.len()
                        ),
                    )
                    .label("wrong number of arguments")
                    .help(format!("write `{}(x)`", callee.name)));
                }
                args.iter().map(|a| eval(&a.value, scope)).collect()
            };
            match callee.name.as_str() {
                "floor" | "ceil" | "round" => {
                    let v = values(1)?.remove(0);
                    match v {
                        Value::Int(i) => Ok(Value::Int(i)),
                        Value::Real(r) => {
                            let r = match callee.name.as_str() {
                                "floor" => r.floor(),
                                "ceil" => r.ceil(),
                                _ => r.round(),
                            };
                            if r.abs() > 9.0e15 {
                                return Err(overflow(expr.span));
                            }
                            Ok(Value::Int(r as i64))
                        }
                        other => Err(wrong_type(args[0].span, "a number", &other)),
                    }
                }
                "min" | "max" => {
                    if args.is_empty() {
                        return Err(Diagnostic::new(
                            Code::WrongArity,
                            expr.span,
                            format!("`{}` needs at least one argument", callee.name),
                        )
                        .label("no arguments")
                        .help(format!("write `{}(a, b)`", callee.name)));
                    }
                    let vs = values(usize::MAX)?;
                    let mut best = vs[0].clone();
                    for (v, a) in vs.into_iter().zip(args).skip(1) {
                        let (x, y) = (as_real(&best, args[0].span)?, as_real(&v, a.span)?);
                        let take = if callee.name == "min" { y < x } else { y > x };
                        if take {
                            best = v;
                        }
                    }
                    as_real(&best, args[0].span)?;
                    Ok(best)
                }
                "channels" => {
                    let [arg] = args.as_slice() else {
                        return Err(Diagnostic::new(
                            Code::WrongArity,
                            expr.span,
                            format!("`channels` takes 1 argument, found {}", args.len()),
                        )
                        .label("wrong number of arguments")
                        .help("write `channels(label)` with the label of an earlier stage"));
                    };
                    let ExprKind::Name(label) = &arg.value.kind else {
                        return Err(Diagnostic::new(
                            Code::WrongType,
                            arg.span,
                            "expected a stage label",
                        )
                        .label("not a label")
                        .help("label a stage with `name: block(...)` and write `channels(name)`"));
                    };
                    match scope.labels.get(label) {
                        Some(&Some(c)) => Ok(Value::Int(i64::from(c))),
                        Some(None) => Err(Diagnostic::new(
                            Code::UnknownName,
                            arg.span,
                            format!("stage `{label}` failed"),
                        )
                        .follow_on()),
                        None => {
                            let mut known: Vec<&str> =
                                scope.labels.keys().map(String::as_str).collect();
                            known.sort_unstable();
                            let help = match suggest(label, &known) {
                                Some(s) => format!("did you mean `{s}`?"),
                                None if known.is_empty() => "no stage has a label yet: write `name: block(...)` before using it".into(),
                                None => format!("labelled stages so far: {}", known.join(", ")),
                            };
                            Err(Diagnostic::new(
                                Code::UnknownName,
                                arg.span,
                                format!("no stage labelled `{label}`"),
                            )
                            .label("unknown label")
                            .help(help))
                        }
                    }
                }
                other => {
                    let fns = ["floor", "ceil", "round", "min", "max", "channels"];
                    let help = match suggest(other, &fns) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => format!("functions: {}", fns.join(", ")),
                    };
                    Err(Diagnostic::new(
                        Code::UnknownName,
                        callee.span,
                        format!("unknown function `{other}`"),
                    )
                    .label("not a function")
                    .help(help))
                }
            }
        }
        ExprKind::List(_) => {
            Err(
                Diagnostic::new(Code::WrongType, expr.span, "a list is not a value here")
                    .label("unexpected list")
                    .help("lists are not values in .snet: write offsets as `offsets(1, 2, 4)`"),
            )
        }
    }
}

fn binary(op: BinOp, a: Value, b: Value, sa: Span, sb: Span, span: Span) -> Eval<Value> {
    if let (Value::Int(x), Value::Int(y)) = (&a, &b) {
        let (x, y) = (*x, *y);
        let zero = || {
            Diagnostic::new(Code::DivisionByZero, sb, "division by zero")
                .label("this is zero")
                .help("the divisor must not be zero")
        };
        let r = match op {
            BinOp::Add => x.checked_add(y),
            BinOp::Sub => x.checked_sub(y),
            BinOp::Mul => x.checked_mul(y),
            BinOp::Div => {
                if y == 0 {
                    return Err(zero());
                }
                return Ok(Value::Real(x as f64 / y as f64));
            }
            BinOp::FloorDiv => {
                if y == 0 {
                    return Err(zero());
                }
                floor_div(x, y)
            }
            BinOp::Rem => {
                if y == 0 {
                    return Err(zero());
                }
                floor_div(x, y)
                    .and_then(|q| q.checked_mul(y))
                    .and_then(|m| x.checked_sub(m))
            }
        };
        return r.map(Value::Int).ok_or_else(|| overflow(span));
    }
    let x = as_real(&a, sa)?;
    let y = as_real(&b, sb)?;
    if matches!(op, BinOp::Div | BinOp::FloorDiv | BinOp::Rem) && y == 0.0 {
        return Err(
            Diagnostic::new(Code::DivisionByZero, sb, "division by zero")
                .label("this is zero")
                .help("the divisor must not be zero"),
        );
    }
    let r = match op {
        BinOp::Add => x + y,
        BinOp::Sub => x - y,
        BinOp::Mul => x * y,
        BinOp::Div => x / y,
        BinOp::FloorDiv => (x / y).floor(),
        BinOp::Rem => x - (x / y).floor() * y,
    };
    if !r.is_finite() {
        return Err(overflow(span));
    }
    Ok(Value::Real(r))
}

/// Python's `//` on integers: rounds toward negative infinity.
fn floor_div(x: i64, y: i64) -> Option<i64> {
    let q = x.checked_div(y)?;
    if (x % y != 0) && ((x < 0) != (y < 0)) {
        q.checked_sub(1)
    } else {
        Some(q)
    }
}

fn as_real(v: &Value, span: Span) -> Eval<f64> {
    match v {
        Value::Int(i) => Ok(*i as f64),
        Value::Real(r) => Ok(*r),
        other => Err(wrong_type(span, "a number", other)),
    }
}

pub fn wrong_type(span: Span, expected: &str, found: &Value) -> Diagnostic {
    Diagnostic::new(
        Code::WrongType,
        span,
        format!("expected {expected}, found {} `{found}`", found.type_name()),
    )
    .label(format!("this is a {}", found.type_name()))
    .help(format!("write {expected} here"))
}

fn overflow(span: Span) -> Diagnostic {
    Diagnostic::new(Code::OutOfRange, span, "arithmetic overflow")
        .label("the result does not fit in 64 bits")
        .help("sizes in a network are far smaller than this")
}

fn unknown_name(name: &str, span: Span, scope: &Scope) -> Diagnostic {
    let known = scope.known_names();
    let help = match suggest(name, &known) {
        Some(s) => format!("did you mean `{s}`?"),
        None if known.is_empty() => format!("bind it first: `let {name} = ...`"),
        None => format!("names in scope here: {}", known.join(", ")),
    };
    Diagnostic::new(Code::UnknownName, span, format!("unknown name `{name}`"))
        .label("not bound here")
        .help(help)
}

/// Evaluates an expression that must be a positive integer no larger than `max` (channel
/// counts, kernel sizes, layer counts); `what` names it in messages. When the expression is
/// just the name of a `let` binding, a bad value is the binding's fault: the error points at
/// the binding, with a note at this use (uses of one binding merge into one error, see
/// `compile_source`).
pub fn eval_count(expr: &Expr, scope: &Scope, what: &str, min: i64, max: i64) -> Eval<u32> {
    let v = eval(expr, scope)?;
    check_count(&v, expr.span, what, min, max).map_err(|bad| {
        let (d, need) = *bad;
        let Some((name, b)) = scope.binding_of(expr) else {
            return d;
        };
        Diagnostic::new(
            d.code,
            b.value_span,
            format!("`{name}` is bound to {v}, but it is used where {need}"),
        )
        .label(format!("`{name}` is bound to {v} here"))
        .note(expr.span, format!("used as {what} here"))
        .help(format!(
            "change the value bound to `{name}`: every use of it reads this value"
        ))
    })
}

/// Checks a value against a count's bounds: the error at the use, and what was needed.
fn check_count(
    v: &Value,
    span: Span,
    what: &str,
    min: i64,
    max: i64,
) -> Result<u32, Box<(Diagnostic, String)>> {
    let i = match v {
        Value::Int(i) => *i,
        Value::Real(r) => {
            let frac = if r.fract() != 0.0 { "fractional " } else { "" };
            return Err(Box::new((
                Diagnostic::new(
                    Code::ExpectedInteger,
                    span,
                    format!("{what} must be an integer, found the {frac}real `{r:?}`"),
                )
                .label("a real number")
                .help("round it explicitly with `floor(...)`, `ceil(...)` or `round(...)`"),
                "an integer is needed".into(),
            )));
        }
        other => {
            return Err(Box::new((
                wrong_type(span, "an integer", other),
                "an integer is needed".into(),
            )));
        }
    };
    if i < min {
        let code = if what == "the number of layers" && i == 0 {
            Code::ZeroLayers
        } else {
            Code::NotPositive
        };
        let bound = if min == 1 {
            "positive".to_string()
        } else {
            format!("at least {min}")
        };
        return Err(Box::new((
            Diagnostic::new(code, span, format!("{what} must be {bound}, found {i}"))
                .label(format!("this is {i}"))
                .help(format!("{what} is a count: use a value of at least {min}")),
            format!("a value of at least {min} is needed"),
        )));
    }
    if i > max {
        return Err(Box::new((
            Diagnostic::new(Code::OutOfRange, span, format!("{what} is too large: {i}"))
                .label(format!("the limit is {max}"))
                .help("sparsec accepts networks up to these sizes; check the arithmetic"),
            format!("at most {max} is allowed"),
        )));
    }
    Ok(i as u32)
}

//! Lowering of single ops (`conv`, `batch_norm`, `relu`, `avg_pool`, `max_pool`,
//! `global_avg_pool`, `linear`): argument binding, value checks, parameter naming and creation,
//! and the shape checks that deserve a better message than the IR's own (pools that do not
//! divide the input, windows larger than the input, a linear layer on a spatial tensor).
//!
//! Must not know about blocks or topology: it sees one op, its input and a [`Ctx`].

use super::eval::{Value, eval, eval_count, wrong_type};
use super::{Ctx, Lowering};
use crate::diagnostics::{Code, Diagnostic};
use crate::frontend::ast::{Arg, Expr, OpStmt};
use crate::frontend::parser::suggest;
use ir::op::{Access, BatchNorm, Conv2d, Linear, Pool, PoolKind};
use ir::{MAX_DIM, NodeId, Op, ParamId, ParamKind, ShapeError, Span};

const OPS: [&str; 8] = [
    "conv",
    "batch_norm",
    "bn",
    "relu",
    "avg_pool",
    "max_pool",
    "global_avg_pool",
    "linear",
];

/// Parameters of each op in positional order; `None` default = required.
fn signature(op: &str) -> Option<&'static [(&'static str, Option<&'static str>)]> {
    Some(match op {
        "conv" => &[
            ("out", None),
            ("kernel", None),
            ("stride", Some("1")),
            ("pad", Some("0")),
            ("bias", Some("false")),
        ],
        "batch_norm" | "bn" => &[("eps", Some("1e-5"))],
        "relu" | "global_avg_pool" => &[],
        "avg_pool" | "max_pool" => &[
            ("kernel", None),
            ("stride", Some("kernel")),
            ("pad", Some("0")),
        ],
        "linear" => &[("out", None), ("bias", Some("true"))],
        _ => return None,
    })
}

impl Lowering<'_> {
    /// Lowers one op reading `x`; with `x == None` only names and values are checked.
    pub(super) fn op(&mut self, stmt: &OpStmt, x: Option<NodeId>, ctx: &Ctx) -> Option<NodeId> {
        let name = stmt.op.name.as_str();
        let Some(sig) = signature(name) else {
            let help = match suggest(name, &OPS) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("ops: {}", OPS.join(", ")),
            };
            self.diagnostics.push(
                Diagnostic::new(
                    Code::UnknownOp,
                    stmt.op.span,
                    format!("unknown op `{name}`"),
                )
                .label("not an op")
                .help(help),
            );
            return None;
        };
        let args = self.bind(stmt, sig)?;
        let arg = |i: usize| args[i];
        let parametric = matches!(name, "conv" | "batch_norm" | "bn" | "linear");
        let param_name = match (&stmt.name, parametric) {
            (Some((n, span)), true) => {
                let full = if ctx.prefix.is_empty() {
                    n.clone()
                } else {
                    format!("{}.{n}", ctx.prefix)
                };
                Some((full, *span))
            }
            (None, true) => {
                self.diagnostics.push(
                    Diagnostic::new(
                        Code::UnnamedParams,
                        stmt.op.span,
                        format!("this `{name}` has parameters but no name"),
                    )
                    .label("unnamed")
                    .help(format!(
                        "name it to name its parameters, e.g. `conv1 = {name}(...)`"
                    )),
                );
                return None;
            }
            (_, false) => None,
        };
        let scope_vals = ctx.locals.as_slice();
        let max = i64::from(MAX_DIM);
        let cnt = |l: &mut Self, e: Option<&Expr>, what: &str, min: i64| -> Option<Option<u32>> {
            let Some(e) = e else { return Some(None) };
            match eval_count(e, &l.scope(scope_vals), what, min, max) {
                Ok(v) => Some(Some(v)),
                Err(d) => {
                    l.diagnostics.push(d);
                    None
                }
            }
        };
        let op = match name {
            "conv" => {
                let out = cnt(self, arg(0), "the output channel count", 1);
                let kernel = cnt(self, arg(1), "the kernel size", 1);
                let stride = cnt(self, arg(2), "the stride", 1);
                let pad = cnt(self, arg(3), "the padding", 0);
                let bias = self.boolean(arg(4), false, scope_vals);
                let (out, kernel, stride, pad, bias) = (out??, kernel??, stride?, pad?, bias?);
                let (stride, pad) = (stride.unwrap_or(1), pad.unwrap_or(0));
                let x = x?;
                let cin = self.graph.node(x).ty.channels as usize;
                let (pname, pspan) = param_name?;
                let k = kernel as usize;
                let weight = self.param(
                    &pname,
                    "weight",
                    vec![out as usize, cin, k, k],
                    ParamKind::Weight,
                    pspan,
                )?;
                let bias = if bias {
                    Some(self.param(&pname, "bias", vec![out as usize], ParamKind::Bias, pspan)?)
                } else {
                    None
                };
                self.window_fits(x, kernel, pad, stmt.span)?;
                Op::Conv2d(Conv2d {
                    out_channels: out,
                    kernel: [kernel; 2],
                    stride: [stride; 2],
                    pad: [pad; 2],
                    weight,
                    bias,
                    access: Access::PLAIN,
                    relu: false,
                })
            }
            "batch_norm" | "bn" => {
                let eps = match arg(0) {
                    None => 1e-5,
                    Some(e) => match eval(e, &self.scope(scope_vals)) {
                        Ok(Value::Real(r)) if r > 0.0 => r,
                        Ok(Value::Int(i)) if i > 0 => i as f64,
                        Ok(v @ (Value::Real(_) | Value::Int(_))) => {
                            self.diagnostics.push(
                                Diagnostic::new(
                                    Code::NotPositive,
                                    e.span,
                                    format!("eps must be positive, found {v}"),
                                )
                                .label("not positive")
                                .help("PyTorch's default is `eps = 1e-5`"),
                            );
                            return None;
                        }
                        Ok(other) => {
                            self.diagnostics
                                .push(wrong_type(e.span, "a number", &other));
                            return None;
                        }
                        Err(d) => {
                            self.diagnostics.push(d);
                            return None;
                        }
                    },
                };
                let x = x?;
                let c = self.graph.node(x).ty.channels as usize;
                let (pname, pspan) = param_name?;
                let gamma = self.param(&pname, "weight", vec![c], ParamKind::BnGamma, pspan)?;
                let beta = self.param(&pname, "bias", vec![c], ParamKind::BnBeta, pspan)?;
                let mean = self.param(
                    &pname,
                    "running_mean",
                    vec![c],
                    ParamKind::BnRunningMean,
                    pspan,
                )?;
                let var = self.param(
                    &pname,
                    "running_var",
                    vec![c],
                    ParamKind::BnRunningVar,
                    pspan,
                )?;
                Op::BatchNorm(BatchNorm {
                    eps,
                    gamma,
                    beta,
                    mean,
                    var,
                })
            }
            "relu" => Op::Relu,
            "avg_pool" | "max_pool" => {
                let kernel = cnt(self, arg(0), "the pool size", 1);
                let stride = cnt(self, arg(1), "the pool stride", 1);
                let pad = cnt(self, arg(2), "the pool padding", 0);
                let (kernel, stride, pad) = (kernel??, stride?, pad?);
                let stride = stride.unwrap_or(kernel);
                let pad = pad.unwrap_or(0);
                let x = x?;
                self.window_fits(x, kernel, pad, stmt.span)?;
                let t = self.graph.node(x).ty;
                if stride > kernel || 2 * pad > kernel {
                    let (what, help) = if stride > kernel {
                        (
                            format!(
                                "a stride of {stride} skips rows between {kernel}x{kernel} windows"
                            ),
                            "use a stride no larger than the pool size",
                        )
                    } else {
                        (
                            format!("padding {pad} is more than half the {kernel}x{kernel} window"),
                            "PyTorch requires pad <= kernel / 2: border windows would read only padding",
                        )
                    };
                    self.diagnostics.push(
                        Diagnostic::new(Code::OutOfRange, stmt.span, what)
                            .label("invalid pool window")
                            .help(help),
                    );
                    return None;
                }
                for (dim, size) in [("height", t.height), ("width", t.width)] {
                    // PyTorch floors the output size; refuse when that drops real input rows.
                    let padded = u64::from(size) + 2 * u64::from(pad);
                    let out = (padded - u64::from(kernel)) / u64::from(stride) + 1;
                    let covered = (out - 1) * u64::from(stride) + u64::from(kernel);
                    let real_end = u64::from(pad) + u64::from(size);
                    if covered < real_end {
                        let left = real_end - covered;
                        self.diagnostics.push(
                            Diagnostic::new(
                                Code::PoolNotDivisible,
                                stmt.span,
                                format!("the input {dim} {size} is not divisible by this pool"),
                            )
                            .label(format!(
                                "a {kernel}x{kernel} window with stride {stride} and padding {pad} never reads the last {left} of {size} rows"
                            ))
                            .help(format!(
                                "the input here is {t}; choose sizes so that every input row is pooled (size + 2*pad - kernel divisible by the stride)"
                            )),
                        );
                        return None;
                    }
                }
                let kind = if name == "avg_pool" {
                    PoolKind::Avg
                } else {
                    PoolKind::Max
                };
                Op::Pool(Pool {
                    kind,
                    global: false,
                    kernel: [kernel; 2],
                    stride: [stride; 2],
                    pad: [pad; 2],
                    access: Access::PLAIN,
                })
            }
            "global_avg_pool" => Op::Pool(Pool {
                kind: PoolKind::Avg,
                global: true,
                kernel: [1; 2],
                stride: [1; 2],
                pad: [0; 2],
                access: Access::PLAIN,
            }),
            _ => {
                // linear
                let out = cnt(self, arg(0), "the output feature count", 1);
                let bias = self.boolean(arg(1), true, scope_vals);
                let (out, bias) = (out??, bias?);
                let x = x?;
                let t = self.graph.node(x).ty;
                if t.height != 1 || t.width != 1 {
                    self.diagnostics.push(
                        Diagnostic::new(Code::NotFlat, stmt.span, format!("a linear layer needs a 1x1 input, found {t}"))
                            .label(format!("its input is {}x{}", t.height, t.width))
                            .help("pool to 1x1 first: `global_avg_pool()` or `avg_pool(N)` with N the spatial size"),
                    );
                    return None;
                }
                let (pname, pspan) = param_name?;
                let weight = self.param(
                    &pname,
                    "weight",
                    vec![out as usize, t.channels as usize],
                    ParamKind::Weight,
                    pspan,
                )?;
                let bias = if bias {
                    Some(self.param(&pname, "bias", vec![out as usize], ParamKind::Bias, pspan)?)
                } else {
                    None
                };
                Op::Linear(Linear {
                    out_features: out,
                    weight,
                    bias,
                    access: Access::PLAIN,
                    global_pool: false,
                })
            }
        };
        let x = x?;
        match self.graph.add(op, &[x], stmt.span, ctx.scope) {
            Ok(y) => Some(y),
            Err(e) => {
                let code = match e {
                    ShapeError::WindowTooLarge { .. } => Code::WindowTooLarge,
                    ShapeError::NotFlat { .. } => Code::NotFlat,
                    ShapeError::TooLarge { .. } => Code::OutOfRange,
                    _ => Code::Shape,
                };
                self.diagnostics.push(
                    Diagnostic::new(code, stmt.span, e.to_string())
                        .label(format!("the input here is {}", self.graph.node(x).ty))
                        .help("check the op's arguments against the shape of its input"),
                );
                None
            }
        }
    }

    /// Binds positional then named arguments to the op's signature.
    fn bind<'s>(
        &mut self,
        stmt: &'s OpStmt,
        sig: &[(&str, Option<&str>)],
    ) -> Option<Vec<Option<&'s Expr>>> {
        let op = stmt.op.name.as_str();
        let names: Vec<&str> = sig.iter().map(|(n, _)| *n).collect();
        let mut bound: Vec<Option<&Arg>> = vec![None; sig.len()];
        let mut ok = true;
        let mut positional = 0;
        for a in &stmt.args {
            let slot = match &a.name {
                None => {
                    positional += 1;
                    if positional > sig.len() {
                        self.diagnostics.push(
                            Diagnostic::new(
                                Code::WrongArity,
                                a.span,
                                format!("`{op}` takes at most {} argument(s)", sig.len()),
                            )
                            .label("one too many")
                            .help(if sig.is_empty() {
                                format!("write `{op}()`")
                            } else {
                                format!("`{op}` takes {}", names.join(", "))
                            }),
                        );
                        ok = false;
                        continue;
                    }
                    positional - 1
                }
                Some(n) => match names.iter().position(|s| *s == n.name) {
                    Some(i) => i,
                    None => {
                        let help = match suggest(&n.name, &names) {
                            Some(s) => format!("did you mean `{s}`?"),
                            None if names.is_empty() => format!("`{op}` takes no arguments"),
                            None => format!("`{op}` takes {}", names.join(", ")),
                        };
                        self.diagnostics.push(
                            Diagnostic::new(
                                Code::UnknownArgument,
                                n.span,
                                format!("`{op}` has no argument `{}`", n.name),
                            )
                            .label("unknown argument")
                            .help(help),
                        );
                        ok = false;
                        continue;
                    }
                },
            };
            if let Some(first) = bound[slot] {
                self.diagnostics.push(
                    Diagnostic::new(
                        Code::DuplicateArgument,
                        a.span,
                        format!("argument `{}` is given twice", sig[slot].0),
                    )
                    .label("given again here")
                    .note(first.span, "first given here")
                    .help("give each argument once"),
                );
                ok = false;
                continue;
            }
            bound[slot] = Some(a);
        }
        for (i, (n, default)) in sig.iter().enumerate() {
            // After a misspelt argument, "missing" would only repeat the same mistake.
            if ok && bound[i].is_none() && default.is_none() {
                self.diagnostics.push(
                    Diagnostic::new(
                        Code::MissingArgument,
                        stmt.span,
                        format!("`{op}` needs `{n}`"),
                    )
                    .label(format!("`{n}` is missing"))
                    .help(format!(
                        "`{op}` takes {}; the ones without a default are required",
                        names.join(", ")
                    )),
                );
                ok = false;
            }
        }
        ok.then(|| bound.into_iter().map(|a| a.map(|a| &a.value)).collect())
    }

    fn boolean(
        &mut self,
        e: Option<&Expr>,
        default: bool,
        locals: &[(&'static str, Value)],
    ) -> Option<bool> {
        let Some(e) = e else { return Some(default) };
        match eval(e, &self.scope(locals)) {
            Ok(Value::Bool(b)) => Some(b),
            Ok(other) => {
                self.diagnostics
                    .push(wrong_type(e.span, "`true` or `false`", &other));
                None
            }
            Err(d) => {
                self.diagnostics.push(d);
                None
            }
        }
    }

    fn window_fits(&mut self, x: NodeId, kernel: u32, pad: u32, span: Span) -> Option<()> {
        let t = self.graph.node(x).ty;
        let padded = |s: u32| u64::from(s) + 2 * u64::from(pad);
        if u64::from(kernel) > padded(t.height) || u64::from(kernel) > padded(t.width) {
            self.diagnostics.push(
                Diagnostic::new(Code::WindowTooLarge, span, format!("a {kernel}x{kernel} window does not fit the {}x{} input", t.height, t.width))
                    .label(format!("the input here is {t}"))
                    .help("use a smaller kernel, more padding, or fewer downsampling stages before this op"),
            );
            return None;
        }
        Some(())
    }

    fn param(
        &mut self,
        prefix: &str,
        leaf: &str,
        shape: Vec<usize>,
        kind: ParamKind,
        span: Span,
    ) -> Option<ParamId> {
        let name = format!("{prefix}.{leaf}");
        match self.graph.params.add(name.clone(), shape, kind) {
            Ok(id) => {
                self.param_spans.insert(name, span);
                Some(id)
            }
            Err(_) => {
                let first = self.param_spans.get(&name).copied().unwrap_or(span);
                self.diagnostics.push(
                    Diagnostic::new(Code::DuplicateParam, span, format!("parameter `{name}` is defined twice"))
                        .label("named again here")
                        .note(first, "first named here")
                        .help("give each op with parameters its own name (or its stage its own `params` prefix)"),
                );
                None
            }
        }
    }
}

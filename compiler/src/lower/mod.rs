//! Lowering: syntax tree → IR graph. Evaluates `let` bindings, expands every block into its
//! layers by the aggregation topology, instantiates units and transitions, names every parameter
//! (official PyTorch names by default), and infers shapes as it builds, reporting every name,
//! value, shape and topology error with its source span.
//!
//! Owns the meaning of the language (docs/language.md). Must not optimise: it emits the plain
//! graph (explicit `concat`/`add`, `batch_norm`, `relu`), which passes later rewrite.

mod eval;
mod ops;
pub mod topology;

use crate::diagnostics::{Code, Diagnostic};
use crate::frontend::ast::{
    Arg, Expr, ExprKind, Item, ItemKind, OpStmt, Program, Stage, StageKind,
};
use crate::frontend::parser::suggest;
use eval::{Binding, Scope, Value, eval, eval_count};
use ir::{Graph, MAX_DIM, NodeId, Op, ScopeId, Span, TensorType};
use std::collections::HashMap;
use topology::{Links, Order, OutputRule};

/// Most layers one block may have, and most aggregation edges in a network: generous for real
/// networks (SparseNet-BC-1000 has 166 per block), small enough that hostile input cannot make
/// the compiler allocate without bound.
pub const MAX_LAYERS: i64 = 1_000_000;
pub const MAX_EDGES: usize = 50_000_000;

/// Parses and lowers a whole source file.
pub fn compile_source(default_name: &str, source: &str) -> (Option<Graph>, Vec<Diagnostic>) {
    let (program, mut diagnostics) = crate::frontend::parse(source);
    let (graph, errors) = lower(&program, default_name);
    diagnostics.extend(errors);
    // The same mistake reached twice (a unit used by several layers, a bad `let` used in
    // several places) is reported once, with the notes of every report.
    let mut merged: Vec<Diagnostic> = Vec::with_capacity(diagnostics.len());
    for d in diagnostics.into_iter().filter(|d| !d.follow_on) {
        match merged
            .iter_mut()
            .find(|m| (m.span, m.code, &m.message) == (d.span, d.code, &d.message))
        {
            Some(first) => {
                for note in d.notes {
                    if !first.notes.contains(&note) {
                        first.notes.push(note);
                    }
                }
            }
            None => merged.push(d),
        }
    }
    let diagnostics = merged;
    if diagnostics.is_empty() {
        (graph, diagnostics)
    } else {
        (None, diagnostics)
    }
}

/// Lowers a parsed program. Returns the graph when no error was found.
pub fn lower(program: &Program, default_name: &str) -> (Option<Graph>, Vec<Diagnostic>) {
    let mut l = Lowering {
        graph: Graph::new(default_name),
        diagnostics: Vec::new(),
        lets: HashMap::new(),
        units: HashMap::new(),
        labels: HashMap::new(),
        label_spans: HashMap::new(),
        param_spans: HashMap::new(),
        current: None,
        poisoned: false,
        input_span: None,
        stage_before_input: false,
        model_span: None,
        blocks: 0,
        transitions: 0,
        stages: 0,
        edges: 0,
    };
    for item in &program.items {
        l.item(item);
    }
    if l.input_span.is_none() && !l.stage_before_input {
        l.diagnostics.push(
            Diagnostic::new(
                Code::MissingInput,
                Span::new(0, 0),
                "the model declares no input",
            )
            .label("expected `input [channels, height, width]`")
            .help("add `input [3, 32, 32]` before the first stage"),
        );
    } else if l.stages == 0 {
        l.diagnostics.push(
            Diagnostic::new(
                Code::NoStages,
                l.input_span.unwrap_or_default(),
                "the model has no stages",
            )
            .label("nothing reads this input")
            .help("add a `stem { ... }`, `block(...)` or `head { ... }`"),
        );
    }
    if let (Some(x), false) = (l.current, l.poisoned)
        && l.diagnostics.is_empty()
    {
        let scope = l.graph.add_scope("output", Span::new(0, 0));
        let span = l.graph.node(x).span;
        if let Err(e) = l.graph.add(
            Op::Output {
                name: "output".into(),
            },
            &[x],
            span,
            scope,
        ) {
            l.diagnostics
                .push(Diagnostic::new(Code::Shape, span, e.to_string()));
        }
    }
    let ok = l.diagnostics.is_empty();
    (ok.then_some(l.graph), l.diagnostics)
}

struct Lowering<'p> {
    graph: Graph,
    diagnostics: Vec<Diagnostic>,
    lets: HashMap<String, Binding>,
    units: HashMap<String, (&'p [OpStmt], Span)>,
    /// Channels of each labelled stage's output (`None`: the stage failed).
    labels: HashMap<String, Option<u32>>,
    label_spans: HashMap<String, Span>,
    /// Where each parameter name was first defined (for duplicate reports).
    param_spans: HashMap<String, Span>,
    /// The tensor the next stage reads.
    current: Option<NodeId>,
    /// An earlier stage failed: later stages are still name-checked but not shape-checked.
    poisoned: bool,
    input_span: Option<Span>,
    /// A stage came before `input` (reported once).
    stage_before_input: bool,
    model_span: Option<Span>,
    blocks: u32,
    transitions: u32,
    stages: u32,
    edges: usize,
}

/// Values bound inside an op sequence besides the `let`s.
pub(crate) struct Ctx {
    pub locals: Vec<(&'static str, Value)>,
    /// Parameter-name prefix for this sequence (already expanded).
    pub prefix: String,
    pub scope: ScopeId,
}

impl<'p> Lowering<'p> {
    fn scope<'a>(&'a self, locals: &'a [(&'static str, Value)]) -> Scope<'a> {
        Scope {
            lets: &self.lets,
            locals,
            labels: &self.labels,
        }
    }

    fn item(&mut self, item: &'p Item) {
        match &item.kind {
            ItemKind::Model { name, name_span } => {
                if let Some(first) = self.model_span {
                    self.duplicate_item("model", *name_span, first);
                } else {
                    self.model_span = Some(*name_span);
                    self.graph.name = name.clone();
                }
            }
            ItemKind::Input { dims } => self.input(dims, item.span),
            ItemKind::Let { name, value } => {
                if let Some(first) = self.lets.get(&name.name) {
                    let first = first.name_span;
                    self.diagnostics.push(
                        Diagnostic::new(
                            Code::DuplicateBinding,
                            name.span,
                            format!("`{}` is bound twice", name.name),
                        )
                        .label("bound again here")
                        .note(first, "first bound here")
                        .help("bindings cannot be reassigned: pick another name"),
                    );
                    return;
                }
                let value_span = value.span;
                let value = match eval(value, &self.scope(&[])) {
                    Ok(v) => v,
                    Err(d) => {
                        self.diagnostics.push(d);
                        // Later uses of the name are follow-on errors, not new ones.
                        Value::Poison
                    }
                };
                let binding = Binding {
                    value,
                    name_span: name.span,
                    value_span,
                };
                self.lets.insert(name.name.clone(), binding);
            }
            ItemKind::Unit { name, body } => {
                if let Some((_, first)) = self.units.get(&name.name) {
                    let first = *first;
                    self.diagnostics.push(
                        Diagnostic::new(
                            Code::DuplicateBinding,
                            name.span,
                            format!("unit `{}` is defined twice", name.name),
                        )
                        .label("defined again here")
                        .note(first, "first defined here")
                        .help("give the second unit another name"),
                    );
                    return;
                }
                self.units
                    .insert(name.name.clone(), (body.as_slice(), name.span));
            }
            ItemKind::Stage(stage) => self.stage(stage, item.span),
        }
    }

    fn duplicate_item(&mut self, what: &str, span: Span, first: Span) {
        self.diagnostics.push(
            Diagnostic::new(
                Code::DuplicateItem,
                span,
                format!("`{what}` is declared twice"),
            )
            .label("declared again here")
            .note(first, "first declared here")
            .help(format!("a model has exactly one `{what}`")),
        );
    }

    fn input(&mut self, dims: &[Expr], span: Span) {
        if let Some(first) = self.input_span {
            self.duplicate_item("input", span, first);
            return;
        }
        self.input_span = Some(span);
        if dims.len() != 3 {
            self.diagnostics.push(
                Diagnostic::new(
                    Code::WrongArity,
                    span,
                    format!("the input has 3 dimensions, found {}", dims.len()),
                )
                .label("expected [channels, height, width]")
                .help("the batch size is chosen at run time: write `input [3, 32, 32]`"),
            );
            self.poisoned = true;
            return;
        }
        let names = ["input channels", "input height", "input width"];
        let mut v = [0u32; 3];
        for (i, d) in dims.iter().enumerate() {
            match eval_count(d, &self.scope(&[]), names[i], 1, i64::from(MAX_DIM)) {
                Ok(x) => v[i] = x,
                Err(e) => {
                    self.diagnostics.push(e);
                    self.poisoned = true;
                }
            }
        }
        if self.poisoned {
            return;
        }
        let scope = self.graph.add_scope("input", span);
        let ty = TensorType::new(v[0], v[1], v[2]);
        self.current = Some(self.graph.add_input("input", ty, span, scope));
    }

    fn stage(&mut self, stage: &'p Stage, span: Span) {
        if self.input_span.is_none() {
            self.diagnostics.push(
                Diagnostic::new(
                    Code::StageBeforeInput,
                    stage.keyword_span,
                    format!("`{}` before the input is declared", stage.kind.keyword()),
                )
                .label("no input to read yet")
                .help("declare `input [channels, height, width]` first"),
            );
            self.stage_before_input = true;
            self.poisoned = true;
        }
        self.stages += 1;
        if let Some(label) = &stage.label {
            if let Some(first) = self.label_spans.get(&label.name) {
                let first = *first;
                self.diagnostics.push(
                    Diagnostic::new(
                        Code::DuplicateBinding,
                        label.span,
                        format!("label `{}` is used twice", label.name),
                    )
                    .label("used again here")
                    .note(first, "first used here")
                    .help("each stage label must be unique"),
                );
            }
            self.label_spans.insert(label.name.clone(), label.span);
        }
        let result = match stage.kind {
            StageKind::Block => self.block(stage, span),
            StageKind::Stem | StageKind::Transition | StageKind::Head => {
                self.sequence_stage(stage, span)
            }
        };
        match result {
            Some(x) => {
                self.current = Some(x);
                if let Some(label) = &stage.label {
                    let c = self.graph.node(x).ty.channels;
                    self.labels.insert(label.name.clone(), Some(c));
                }
            }
            None => {
                self.poisoned = true;
                // `channels(label)` of a failed stage is unknown, not an unknown label.
                if let Some(label) = &stage.label {
                    self.labels.insert(label.name.clone(), None);
                }
            }
        }
    }

    /// Arguments by name, each allowed once; unknown names are errors with a suggestion.
    fn named_args<'a>(
        &mut self,
        what: &str,
        args: &'a [Arg],
        allowed: &[&str],
    ) -> HashMap<&'a str, &'a Arg> {
        let mut out = HashMap::new();
        for arg in args {
            let Some(name) = &arg.name else {
                self.diagnostics.push(
                    Diagnostic::new(
                        Code::UnknownArgument,
                        arg.span,
                        format!("`{what}` takes only named arguments"),
                    )
                    .label("argument without a name")
                    .help(format!(
                        "name it, e.g. `{} = ...`; `{what}` takes {}",
                        allowed[0],
                        allowed.join(", ")
                    )),
                );
                continue;
            };
            if !allowed.contains(&name.name.as_str()) {
                let help = match suggest(&name.name, allowed) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("`{what}` takes {}", allowed.join(", ")),
                };
                self.diagnostics.push(
                    Diagnostic::new(
                        Code::UnknownArgument,
                        name.span,
                        format!("`{what}` has no argument `{}`", name.name),
                    )
                    .label("unknown argument")
                    .help(help),
                );
                continue;
            }
            if let Some(first) = out.insert(name.name.as_str(), arg) {
                self.diagnostics.push(
                    Diagnostic::new(
                        Code::DuplicateArgument,
                        name.span,
                        format!("argument `{}` is given twice", name.name),
                    )
                    .label("given again here")
                    .note(first.span, "first given here")
                    .help("give each argument once"),
                );
            }
        }
        out
    }

    fn missing(&mut self, what: &str, arg: &str, span: Span, example: &str) {
        self.diagnostics.push(
            Diagnostic::new(
                Code::MissingArgument,
                span,
                format!("`{what}` needs `{arg}`"),
            )
            .label(format!("`{arg}` is missing"))
            .help(format!("add it: `{example}`")),
        );
    }

    /// The string value of a `params = "..."` argument, or the default.
    fn params_template(&mut self, arg: Option<&&Arg>, default: &str) -> String {
        let Some(arg) = arg else {
            return default.to_string();
        };
        match eval(&arg.value, &self.scope(&[])) {
            Ok(Value::Str(s)) => s,
            Ok(other) => {
                self.diagnostics
                    .push(eval::wrong_type(arg.value.span, "a string", &other));
                default.to_string()
            }
            Err(d) => {
                self.diagnostics.push(d);
                default.to_string()
            }
        }
    }

    /// Expands `{block}`, `{layer}` and `{transition}` in a parameter-name template.
    fn expand(&mut self, template: &str, vars: &[(&str, u32)], span: Span) -> String {
        let mut out = String::with_capacity(template.len() + 8);
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else {
                out.push_str(&rest[open..]);
                return out;
            };
            let key = &after[..close];
            match vars.iter().find(|(k, _)| *k == key) {
                Some((_, v)) => out.push_str(&v.to_string()),
                None => {
                    let known: Vec<String> = vars.iter().map(|(k, _)| format!("{{{k}}}")).collect();
                    self.diagnostics.push(
                        Diagnostic::new(
                            Code::UnknownName,
                            span,
                            format!("unknown placeholder `{{{key}}}` in a parameter name"),
                        )
                        .label("in this template")
                        .help(format!(
                            "placeholders here: {}",
                            if known.is_empty() {
                                "none".into()
                            } else {
                                known.join(", ")
                            }
                        )),
                    );
                }
            }
            rest = &after[close + 1..];
        }
        out.push_str(rest);
        out
    }

    fn unit_body(&mut self, arg: &Arg) -> Option<&'p [OpStmt]> {
        let ExprKind::Name(name) = &arg.value.kind else {
            self.diagnostics.push(
                Diagnostic::new(
                    Code::WrongType,
                    arg.value.span,
                    "expected the name of a unit",
                )
                .label("not a unit name")
                .help("define `unit NAME { ... }` and write `unit = NAME`"),
            );
            return None;
        };
        match self.units.get(name) {
            Some((body, _)) => Some(body),
            None => {
                let mut known: Vec<&str> = self.units.keys().map(String::as_str).collect();
                known.sort_unstable();
                let help = match suggest(name, &known) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None if known.is_empty() => "define it before use: `unit NAME { ... }`".into(),
                    None => format!("units defined so far: {}", known.join(", ")),
                };
                self.diagnostics.push(
                    Diagnostic::new(
                        Code::UnknownUnit,
                        arg.value.span,
                        format!("unknown unit `{name}`"),
                    )
                    .label("no unit of this name")
                    .help(help),
                );
                None
            }
        }
    }

    /// Stem, transition and head: one op sequence, from a `{ body }` or `unit = name`.
    fn sequence_stage(&mut self, stage: &'p Stage, span: Span) -> Option<NodeId> {
        let kind = stage.kind;
        let what = kind.keyword();
        let args = self.named_args(what, &stage.args, &["unit", "params"]);
        let (scope_name, default_prefix, vars): (String, &str, Vec<(&str, u32)>) = match kind {
            StageKind::Stem => ("stem".into(), "features", vec![]),
            StageKind::Transition => {
                let t = self.transitions;
                self.transitions += 1;
                (
                    format!("transition{t}"),
                    "features.transition-{transition}",
                    vec![("transition", t)],
                )
            }
            _ => ("head".into(), "", vec![]),
        };
        let template = self.params_template(args.get("params"), default_prefix);
        let prefix = self.expand(
            &template,
            &vars,
            args.get("params").map_or(stage.keyword_span, |a| a.span),
        );
        let body: &'p [OpStmt] = match (&stage.body, args.get("unit")) {
            (Some(body), None) => body,
            (None, Some(arg)) => self.unit_body(arg)?,
            (Some(_), Some(arg)) => {
                self.diagnostics.push(
                    Diagnostic::new(
                        Code::DuplicateArgument,
                        arg.span,
                        format!("`{what}` has both a body and a unit"),
                    )
                    .label("this unit")
                    .note(stage.keyword_span, "and a `{ ... }` body")
                    .help("keep one of the two"),
                );
                return None;
            }
            (None, None) => {
                self.missing(
                    what,
                    "unit",
                    stage.keyword_span,
                    &format!("{what}(unit = NAME)` or `{what} {{ ... }}"),
                );
                return None;
            }
        };
        let scope = self.graph.add_scope(scope_name, span);
        let x = if self.poisoned { None } else { self.current };
        // Unknown after a failed stage: a use is a follow-on error, never a check against 0.
        let in_channels = x.map_or(Value::Poison, |x| {
            Value::Int(i64::from(self.graph.node(x).ty.channels))
        });
        let ctx = Ctx {
            locals: vec![("in_channels", in_channels)],
            prefix,
            scope,
        };
        self.run_ops(body, x, &ctx)
    }

    /// Runs an op sequence on `x` (None: only check names and values). Returns the result.
    fn run_ops(&mut self, body: &[OpStmt], x: Option<NodeId>, ctx: &Ctx) -> Option<NodeId> {
        let mut cur = x;
        let mut ok = true;
        for op in body {
            match self.op(op, cur, ctx) {
                Some(y) => cur = Some(y),
                None => {
                    ok = false;
                    cur = None;
                }
            }
        }
        if ok { cur } else { None }
    }

    fn block(&mut self, stage: &'p Stage, span: Span) -> Option<NodeId> {
        let allowed = [
            "layers", "growth", "unit", "links", "combine", "order", "output", "params",
        ];
        let args = self.named_args("block", &stage.args, &allowed);
        if let Some(body) = &stage.body
            && let Some(first) = body.first()
        {
            self.diagnostics.push(
                Diagnostic::new(
                    Code::UnexpectedToken,
                    first.span,
                    "a block takes no `{ ... }` body",
                )
                .label("ops here")
                .help(
                    "define the layer as `unit NAME { ... }` and write `block(unit = NAME, ...)`",
                ),
            );
        }
        let b = self.blocks;
        self.blocks += 1;
        let example = "block(layers = 12, growth = k, unit = basic, links = sparse(2))";
        let required = |l: &mut Self, name: &str| {
            let a = args.get(name).copied();
            if a.is_none() {
                l.missing("block", name, stage.keyword_span, example);
            }
            a
        };
        let layers_arg = required(self, "layers");
        let growth_arg = required(self, "growth");
        let unit_arg = required(self, "unit");
        let links_arg = required(self, "links");
        let layers =
            layers_arg.and_then(|a| self.count(&a.value, "the number of layers", MAX_LAYERS));
        let growth =
            growth_arg.and_then(|a| self.count(&a.value, "the growth rate", i64::from(MAX_DIM)));
        let body = unit_arg.and_then(|a| self.unit_body(a));
        let links = links_arg.and_then(|a| self.links(a, layers));
        let default_combine = if matches!(links_arg.map(|a| &a.value.kind), Some(ExprKind::Name(n)) if n == "residual")
        {
            "sum"
        } else {
            "concat"
        };
        let sum = self.choice(
            args.get("combine"),
            "combine",
            &["concat", "sum"],
            default_combine,
        )? == "sum";
        let default_order = if matches!(links, Some(Links::Dense)) {
            "oldest_first"
        } else {
            "newest_first"
        };
        let order = match self.choice(
            args.get("order"),
            "order",
            &["newest_first", "oldest_first"],
            default_order,
        )? {
            "newest_first" => Order::NewestFirst,
            _ => Order::OldestFirst,
        };
        let output = match self.choice(
            args.get("output"),
            "output",
            &["next_layer", "last", "all"],
            "next_layer",
        )? {
            "next_layer" => OutputRule::NextLayer,
            "last" => OutputRule::Last,
            _ => OutputRule::All,
        };
        let template = self.params_template(
            args.get("params"),
            "features.dense-stage-{block}.block-{layer}",
        );
        let (layers, growth, body, links) = (layers?, growth?, body?, links?);
        let template_span = args.get("params").map_or(stage.keyword_span, |a| a.span);
        let scope = self.graph.add_scope(format!("block{b}"), span);
        let x0 = if self.poisoned { None } else { self.current };
        let mut ys: Vec<Option<NodeId>> = vec![x0];
        let combine_span = args
            .get("combine")
            .or(links_arg.as_ref())
            .map_or(stage.keyword_span, |a| a.span);
        for i in 1..=layers as usize {
            let sources = topology::sources(&links, order, i);
            self.edges += sources.len();
            if self.edges > MAX_EDGES {
                self.diagnostics.push(
                    Diagnostic::new(
                        Code::OutOfRange,
                        span,
                        "the network has too many aggregation links",
                    )
                    .label(format!("more than {MAX_EDGES} links in total"))
                    .help("use fewer layers or sparser links"),
                );
                return None;
            }
            let x = self.aggregate(&ys, &sources, sum, scope, combine_span, growth, i);
            let prefix = self.expand(
                &template,
                &[("block", b), ("layer", i as u32)],
                template_span,
            );
            let ctx = Ctx {
                locals: vec![
                    (
                        "in_channels",
                        x.map_or(Value::Poison, |x| {
                            Value::Int(i64::from(self.graph.node(x).ty.channels))
                        }),
                    ),
                    ("growth", Value::Int(i64::from(growth))),
                    ("layer", Value::Int(i as i64)),
                    ("block", Value::Int(i64::from(b))),
                ],
                prefix,
                scope,
            };
            let y = self.run_ops(body, x, &ctx);
            if let Some(y) = y {
                let c = self.graph.node(y).ty.channels;
                if c != growth {
                    let unit_span = unit_arg.map_or(span, |a| a.value.span);
                    self.diagnostics.push(
                        Diagnostic::new(Code::UnitWidth, unit_span, format!("the unit makes {c} channels, but the growth rate is {growth}"))
                            .label(format!("layer {i} of this unit outputs {c} channels"))
                            .note(growth_arg.map_or(span, |a| a.span), "growth rate set here")
                            .help("every layer must output `growth` channels: end the unit with `conv(growth, ...)`"),
                    );
                    return None;
                }
            }
            if x.is_some() && y.is_none() {
                return None;
            }
            ys.push(y);
            if x0.is_none() && i >= 2 {
                break; // only checking names: the unit was checked once with real values
            }
        }
        x0?;
        let out = topology::output_sources(&links, order, output, layers as usize);
        self.aggregate(
            &ys,
            &out,
            sum,
            scope,
            combine_span,
            growth,
            layers as usize + 1,
        )
    }

    /// Combines `ys[j]` for `j` in `sources` with a concat or sum node (none for one piece).
    #[allow(clippy::too_many_arguments)]
    fn aggregate(
        &mut self,
        ys: &[Option<NodeId>],
        sources: &[usize],
        sum: bool,
        scope: ScopeId,
        span: Span,
        growth: u32,
        layer: usize,
    ) -> Option<NodeId> {
        if sources.is_empty() {
            self.diagnostics.push(
                Diagnostic::new(
                    Code::OffsetBeforeStart,
                    span,
                    format!(
                        "layer {layer} reads nothing: every offset reaches before the block start"
                    ),
                )
                .label(format!(
                    "layer {layer} has no earlier output at these offsets"
                ))
                .help("include offset 1 (the previous layer) so every layer has an input"),
            );
            return None;
        }
        let pieces: Option<Vec<NodeId>> = sources.iter().map(|&j| ys[j]).collect();
        let pieces = pieces?;
        if let [one] = pieces.as_slice() {
            return Some(*one);
        }
        if sum {
            let first = self.graph.node(pieces[0]).ty;
            for (&j, &p) in sources.iter().zip(&pieces) {
                let t = self.graph.node(p).ty;
                if t != first {
                    let (a, b) = (sources[0], j);
                    self.diagnostics.push(
                        Diagnostic::new(Code::ChannelMismatch, span, format!("layer {layer} sums tensors of different shapes"))
                            .label(format!("y{a} is {first} but y{b} is {t}"))
                            .help(format!("with `combine = sum` every piece must have the same shape: make the block input {growth} channels (the growth rate), or use `combine = concat`")),
                    );
                    return None;
                }
            }
        }
        let op = if sum { Op::Add } else { Op::Concat };
        match self.graph.add(op, &pieces, span, scope) {
            Ok(n) => Some(n),
            Err(e) => {
                self.diagnostics.push(
                    Diagnostic::new(Code::Shape, span, e.to_string())
                        .label("these pieces cannot be combined")
                        .help("every piece a layer reads must have the same height and width"),
                );
                None
            }
        }
    }

    fn count(&mut self, expr: &Expr, what: &str, max: i64) -> Option<u32> {
        match eval_count(expr, &self.scope(&[]), what, 1, max) {
            Ok(v) => Some(v),
            Err(d) => {
                self.diagnostics.push(d);
                None
            }
        }
    }

    /// A symbolic argument: one of `choices`, written as a bare name.
    fn choice(
        &mut self,
        arg: Option<&&Arg>,
        what: &str,
        choices: &[&'static str],
        default: &'static str,
    ) -> Option<&'static str> {
        let Some(arg) = arg else { return Some(default) };
        let name = match &arg.value.kind {
            ExprKind::Name(n) => n.as_str(),
            _ => "",
        };
        match choices.iter().find(|c| **c == name) {
            Some(c) => Some(c),
            None => {
                let help = match suggest(name, choices) {
                    Some(s) if !name.is_empty() => format!("did you mean `{s}`?"),
                    _ => format!("`{what}` is one of: {}", choices.join(", ")),
                };
                self.diagnostics.push(
                    Diagnostic::new(
                        Code::UnknownChoice,
                        arg.value.span,
                        format!("`{what}` cannot be this"),
                    )
                    .label(format!("not one of {}", choices.join(", ")))
                    .help(help),
                );
                None
            }
        }
    }

    /// `links = sparse | sparse(b) | dense | residual | offsets(o1, o2, ...)`.
    fn links(&mut self, arg: &Arg, layers: Option<u32>) -> Option<Links> {
        let span = arg.value.span;
        let unknown = |l: &mut Self, name: &str| {
            let choices = ["sparse", "dense", "residual", "offsets"];
            let help = match suggest(name, &choices) {
                Some(s) => format!("did you mean `{s}`?"),
                None => {
                    "links are `sparse(base)`, `dense`, `residual` or `offsets(1, 2, ...)`".into()
                }
            };
            l.diagnostics.push(
                Diagnostic::new(Code::UnknownChoice, span, "unknown aggregation topology")
                    .label("not a topology")
                    .help(help),
            );
            None
        };
        match &arg.value.kind {
            ExprKind::Name(n) if n == "sparse" => Some(Links::Sparse { base: 2 }),
            ExprKind::Name(n) if n == "dense" || n == "residual" => Some(Links::Dense),
            ExprKind::Name(n) => unknown(self, n),
            ExprKind::Call(f, args) if f.name == "sparse" => {
                let [a] = args.as_slice() else {
                    self.diagnostics.push(
                        Diagnostic::new(
                            Code::WrongArity,
                            span,
                            format!("`sparse` takes 1 argument (the base), found {}", args.len()),
                        )
                        .label("wrong number of arguments")
                        .help("write `sparse(2)` for the paper's offsets 1, 2, 4, 8, ..."),
                    );
                    return None;
                };
                let v = eval(&a.value, &self.scope(&[]));
                let base = match v {
                    Ok(Value::Int(b)) => b,
                    Ok(other) => {
                        self.diagnostics.push(eval::wrong_type(
                            a.value.span,
                            "an integer base",
                            &other,
                        ));
                        return None;
                    }
                    Err(d) => {
                        self.diagnostics.push(d);
                        return None;
                    }
                };
                if base < 2 {
                    self.diagnostics.push(
                        Diagnostic::new(
                            Code::BaseTooSmall,
                            a.value.span,
                            format!("the base of sparse links must be at least 2, found {base}"),
                        )
                        .label("offsets base^m would not grow")
                        .help("the paper uses `sparse(2)`: offsets 1, 2, 4, 8, ..."),
                    );
                    return None;
                }
                Some(Links::Sparse {
                    base: base.min(i64::from(u32::MAX)) as u32,
                })
            }
            ExprKind::Call(f, args) if f.name == "offsets" => {
                if args.is_empty() {
                    self.diagnostics.push(
                        Diagnostic::new(
                            Code::WrongArity,
                            span,
                            "`offsets` needs at least one offset",
                        )
                        .label("empty list")
                        .help("write `offsets(1, 2, 4)`"),
                    );
                    return None;
                }
                let mut offsets = Vec::new();
                for a in args {
                    let v = match eval(&a.value, &self.scope(&[])) {
                        Ok(Value::Int(v)) => v,
                        Ok(other) => {
                            self.diagnostics.push(eval::wrong_type(
                                a.value.span,
                                "an integer offset",
                                &other,
                            ));
                            return None;
                        }
                        Err(d) => {
                            self.diagnostics.push(d);
                            return None;
                        }
                    };
                    if v < 1 {
                        self.diagnostics.push(
                            Diagnostic::new(Code::BadOffset, a.value.span, format!("offset {v} does not point to an earlier layer"))
                                .label("offsets count back from the current layer")
                                .help("offset 1 is the previous layer's output; use offsets of at least 1"),
                        );
                        return None;
                    }
                    if let Some(l) = layers
                        && v > i64::from(l) + 1
                    {
                        self.diagnostics.push(
                            Diagnostic::new(Code::OffsetBeforeStart, a.value.span, format!("offset {v} reaches before the start of this {l}-layer block"))
                                .label(format!("no layer of the block, nor its output (layer {}), reaches back {v}", l + 1))
                                .help(format!("the largest useful offset here is {}", l + 1)),
                        );
                        return None;
                    }
                    offsets.push(v as u32);
                }
                Some(Links::Offsets(offsets))
            }
            ExprKind::Call(f, _) => unknown(self, &f.name.clone()),
            _ => unknown(self, ""),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Focused lowering tests: shapes, aggregation, parameter names and typed errors on small
    //! inputs. (Whole models are `tests/snapshots.rs`; the topology rules `topology.rs`.)

    use super::compile_source;
    use crate::diagnostics::Code;
    use ir::{Graph, Op, TensorType};

    fn lower(source: &str) -> Graph {
        let (graph, errors) = compile_source("unnamed", source);
        assert!(errors.is_empty(), "{errors:?}");
        graph.unwrap_or_else(|| panic!("no errors but no graph"))
    }

    fn codes(source: &str) -> Vec<Code> {
        let (graph, errors) = compile_source("unnamed", source);
        assert!(graph.is_none(), "an invalid model gave a graph");
        errors.iter().map(|d| d.code).collect()
    }

    fn ops(graph: &Graph) -> Vec<&'static str> {
        graph
            .topo_order()
            .unwrap_or_default()
            .into_iter()
            .map(|n| graph.node(n).op.mnemonic())
            .collect()
    }

    fn output_type(graph: &Graph) -> TensorType {
        graph.node(graph.outputs()[0]).ty
    }

    #[test]
    fn a_stem_lowers_to_its_ops_with_inferred_shapes_and_the_file_name() {
        let g = lower(
            "input [3, 8, 8]\nstem { conv0 = conv(4, kernel = 3, stride = 2, pad = 1) relu() }",
        );
        assert_eq!(g.name, "unnamed");
        assert_eq!(ops(&g), ["input", "conv2d", "relu", "output"]);
        assert_eq!(output_type(&g), TensorType::new(4, 4, 4));
        assert!(ir::verify::verify(&g).is_ok());
    }

    #[test]
    fn a_sparse_block_concatenates_exponential_offsets() {
        // Layer 4 of sparse(2) reads y3, y2 and y0 (offsets 1, 2, 4): three pieces.
        let g = lower(
            "model \"m\"\ninput [4, 8, 8]\nunit u { bn1 = bn() relu() conv1 = conv(growth, 3, pad = 1) }\n\
             block(layers = 4, growth = 2, unit = u, links = sparse(2))",
        );
        assert_eq!(g.name, "m");
        let widths: Vec<usize> = g
            .node_ids()
            .filter(|&n| matches!(g.node(n).op, Op::Concat))
            .map(|n| g.operands(n).len())
            .collect();
        assert!(widths.contains(&3), "{widths:?}");
        // The block's output (next_layer rule) is what a fifth layer would read: y4, y3, y1.
        assert_eq!(output_type(&g).channels, 6);
    }

    #[test]
    fn a_residual_block_sums_instead_of_concatenating() {
        let g = lower(
            "input [4, 8, 8]\nunit u { bn1 = bn() relu() conv1 = conv(growth, 3, pad = 1) }\n\
             block(layers = 3, growth = 4, unit = u, links = residual)",
        );
        let all = ops(&g);
        assert!(all.contains(&"add") && !all.contains(&"concat"), "{all:?}");
        assert_eq!(output_type(&g), TensorType::new(4, 8, 8));
    }

    #[test]
    fn parameters_get_the_official_pytorch_names() {
        let g = lower(
            "input [3, 8, 8]\nunit u { bn1 = bn() relu() conv1 = conv(growth, 3, pad = 1) }\n\
             stem { conv0 = conv(4, kernel = 3, pad = 1) }\n\
             block(layers = 1, growth = 2, unit = u, links = dense)\n\
             head { global_avg_pool() classifier.linear = linear(10) }",
        );
        for name in [
            "features.conv0.weight",
            "features.dense-stage-0.block-1.bn1.running_var",
            "features.dense-stage-0.block-1.conv1.weight",
            "classifier.linear.bias",
        ] {
            assert!(g.params.by_name(name).is_some(), "no parameter {name}");
        }
    }

    #[test]
    fn shape_errors_are_typed_diagnostics() {
        // A linear layer on a 8x8 map, and a 2x2 pool on an odd map.
        assert_eq!(
            codes("input [3, 8, 8]\nhead { fc = linear(10) }"),
            [Code::NotFlat]
        );
        assert_eq!(
            codes("input [3, 7, 7]\nstem { avg_pool(2) }"),
            [Code::PoolNotDivisible]
        );
    }

    #[test]
    fn a_unit_used_by_many_layers_reports_its_error_once() {
        let errors = codes(
            "input [3, 8, 8]\nunit u { conv1 = conv(growth, kernel = 3, pad = 1) relu() bogus() }\n\
             block(layers = 3, growth = 2, unit = u, links = dense)",
        );
        assert_eq!(errors, [Code::UnknownOp]);
    }
}

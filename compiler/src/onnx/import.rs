//! ONNX graph → IR graph: the declared input, the nodes in a topological order, each mapped to
//! the plain IR ops the `.snet` lowering emits (`conv2d`, `batch_norm`, `relu`, `concat`,
//! `add`, pools, `linear`), with initializers bound as parameter data under their ONNX names
//! (PyTorch exports keep the state-dict names, so they equal the `.snet` names). Shape
//! plumbing (`Shape`, `Gather`, `Unsqueeze`, `Squeeze`, `Cast`, `Concat` of constants) is
//! folded to constants; `Flatten`/`Reshape` to `[N, C]`, `Identity` and `Dropout` make no node.
//!
//! Owns the op mapping and its checks: an op, attribute or shape it cannot honour is an error
//! naming the node. Must not optimise and must not name scopes (`scopes.rs` does, afterwards).
//! Nodes no graph output depends on are skipped, unsupported or not.

use super::OnnxError;
use super::external::ExternalData;
use super::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto,
    tensor_shape_proto::dimension, type_proto,
};
use super::scopes;
use super::tensor::{self, Const, Data, Int, MAX_FOLDED};
use ir::{
    Access, BatchNorm, Conv2d, Graph, Linear, MAX_DIM, NodeId, Op, ParamId, ParamKind, Pool,
    PoolKind, ScopeId, Span, TensorType,
};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

/// What an ONNX tensor name stands for during import.
#[derive(Clone, Debug)]
enum Value {
    /// An activation: the IR node computing it, seen as `[N, C, H, W]` (rank 4) or, after a
    /// flatten of a `[N, C, 1, 1]` tensor, as `[N, C]` (rank 2, the same IR node).
    Act { node: NodeId, rank: u8 },
    /// A constant (initializer, `Constant` node or folded shape computation).
    Const(Rc<Const>),
}

type R<T> = Result<T, String>;

/// Imports a decoded model; `file_len` (the encoded size) and the external data files read
/// bound the weight data it may derive. `dir` is the model's folder, where external data lives.
pub fn import(
    model: &ModelProto,
    default_name: &str,
    file_len: usize,
    dir: Option<&Path>,
) -> Result<Graph, OnnxError> {
    let g = model.graph.as_ref().ok_or(OnnxError::NoGraph)?;
    let mut inits: HashMap<&str, &TensorProto> = HashMap::new();
    for t in &g.initializer {
        if inits.insert(t.name(), t).is_some() {
            return Err(OnnxError::Graph {
                what: format!("defines initializer `{}` twice", t.name()),
            });
        }
    }
    if !g.sparse_initializer.is_empty() {
        return Err(OnnxError::Graph {
            what: "holds sparse initializers, which are not supported".into(),
        });
    }
    let mut graph = Graph::new(default_name);
    let scope = graph.add_scope("input", Span::default());
    let mut im = Importer {
        graph,
        scope,
        inits,
        values: HashMap::new(),
        uses: HashMap::new(),
        matmuls: HashSet::new(),
        batch: None,
        shared: HashMap::new(),
        suffixes: HashMap::new(),
        budget: file_len / 4 + (1 << 20),
        external: ExternalData::new(dir),
    };
    im.declare_input(g)?;
    let output = single_output(g)?;
    let order = topo_order(g, &im.inits)?;
    let needed = needed_nodes(g, &order, output);
    for n in &g.node {
        for i in n.input.iter().filter(|i| !i.is_empty()) {
            *im.uses.entry(i.clone()).or_insert(0) += 1;
        }
    }
    *im.uses.entry(output.to_string()).or_insert(0) += 1;
    let used = needed_names(g, &needed);
    for &i in order.iter().filter(|&&i| needed[i]) {
        let n = &g.node[i];
        im.node(n, &used).map_err(|what| OnnxError::Node {
            node: node_name(n, i),
            op_type: n.op_type().to_string(),
            what,
        })?;
    }
    let out = match im.values.get(output) {
        Some(Value::Act { node, .. }) if im.graph.inputs().contains(node) => {
            return Err(OnnxError::Output {
                name: output.into(),
                what: "is the input itself; the graph computes nothing".into(),
            });
        }
        Some(Value::Act { node, .. }) => *node,
        Some(Value::Const(_)) => {
            return Err(OnnxError::Output {
                name: output.into(),
                what: "is a constant; sparsec models compute their output from the input".into(),
            });
        }
        None => {
            return Err(OnnxError::Output {
                name: output.into(),
                what: "is not computed by any node".into(),
            });
        }
    };
    im.graph
        .add(
            Op::Output {
                name: output.to_string(),
            },
            &[out],
            Span::default(),
            im.scope,
        )
        .map_err(|e| OnnxError::Output {
            name: output.into(),
            what: e.to_string(),
        })?;
    scopes::assign(&mut im.graph);
    Ok(im.graph)
}

/// The names of every tensor some needed node reads (for "is this extra output used?").
fn needed_names<'g>(g: &'g GraphProto, needed: &[bool]) -> HashSet<&'g str> {
    let mut s: HashSet<&str> = g
        .node
        .iter()
        .zip(needed)
        .filter(|(_, k)| **k)
        .flat_map(|(n, _)| n.input.iter().map(String::as_str))
        .collect();
    s.extend(g.output.iter().map(|o| o.name()));
    s
}

fn node_name(n: &NodeProto, i: usize) -> String {
    if n.name().is_empty() {
        match n.output.first() {
            Some(o) => format!("#{i} (output `{o}`)"),
            None => format!("#{i}"),
        }
    } else {
        n.name().to_string()
    }
}

fn single_output(g: &GraphProto) -> Result<&str, OnnxError> {
    match g.output.as_slice() {
        [one] => Ok(one.name()),
        outs => Err(OnnxError::Graph {
            what: format!(
                "has {} outputs; sparsec models have exactly one (the logits or feature map)",
                outs.len()
            ),
        }),
    }
}

/// Nodes in a topological order, lowest file index first among the ready ones (so a file
/// already in order keeps its order, as the `.snet` lowering keeps program order).
fn topo_order(
    g: &GraphProto,
    inits: &HashMap<&str, &TensorProto>,
) -> Result<Vec<usize>, OnnxError> {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    let graph_inputs: HashSet<&str> = g.input.iter().map(|v| v.name()).collect();
    for (i, n) in g.node.iter().enumerate() {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            if producer.insert(o, i).is_some()
                || inits.contains_key(o.as_str())
                || graph_inputs.contains(o.as_str())
            {
                return Err(OnnxError::Node {
                    node: node_name(n, i),
                    op_type: n.op_type().to_string(),
                    what: format!("tensor `{o}` is defined more than once"),
                });
            }
        }
    }
    let mut indegree = vec![0usize; g.node.len()];
    let mut readers: Vec<Vec<usize>> = vec![Vec::new(); g.node.len()];
    for (i, n) in g.node.iter().enumerate() {
        for inp in &n.input {
            if let Some(&p) = producer.get(inp.as_str()) {
                indegree[i] += 1;
                readers[p].push(i);
            }
        }
    }
    let mut ready: BinaryHeap<Reverse<usize>> = (0..g.node.len())
        .filter(|&i| indegree[i] == 0)
        .map(Reverse)
        .collect();
    let mut order = Vec::with_capacity(g.node.len());
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for &r in &readers[i] {
            indegree[r] -= 1;
            if indegree[r] == 0 {
                ready.push(Reverse(r));
            }
        }
    }
    if order.len() != g.node.len() {
        let stuck = (0..g.node.len()).find(|&i| indegree[i] > 0).unwrap_or(0);
        let n = &g.node[stuck];
        return Err(OnnxError::Cycle {
            node: node_name(n, stuck),
            op_type: n.op_type().to_string(),
        });
    }
    Ok(order)
}

/// Which nodes the graph output depends on.
fn needed_nodes(g: &GraphProto, order: &[usize], output: &str) -> Vec<bool> {
    let mut live: HashSet<&str> = HashSet::from([output]);
    let mut needed = vec![false; g.node.len()];
    for &i in order.iter().rev() {
        let n = &g.node[i];
        if n.output.iter().any(|o| live.contains(o.as_str())) {
            needed[i] = true;
            live.extend(n.input.iter().filter(|s| !s.is_empty()).map(String::as_str));
        }
    }
    needed
}

/// A node's attributes, with typed getters that name the attribute in every error.
struct Attrs<'a>(&'a [AttributeProto]);

impl<'a> Attrs<'a> {
    fn get(&self, name: &str) -> Option<&'a AttributeProto> {
        self.0.iter().find(|a| a.name() == name)
    }

    /// Every attribute must be one the import honours.
    fn only(&self, allowed: &[&str]) -> R<()> {
        for a in self.0 {
            if !allowed.contains(&a.name()) {
                return Err(format!("attribute `{}` is not supported", a.name()));
            }
            if !a.ref_attr_name().is_empty() {
                return Err(format!(
                    "attribute `{}` refers to a function attribute",
                    a.name()
                ));
            }
        }
        Ok(())
    }

    fn int(&self, name: &str, default: i64) -> R<i64> {
        match self.get(name) {
            None => Ok(default),
            Some(a) => {
                a.i.ok_or_else(|| format!("attribute `{name}` is not an integer"))
            }
        }
    }

    fn ints(&self, name: &str) -> Option<&'a [i64]> {
        self.get(name).map(|a| a.ints.as_slice())
    }

    fn float(&self, name: &str, default: f32) -> R<f32> {
        match self.get(name) {
            None => Ok(default),
            Some(a) => {
                a.f.ok_or_else(|| format!("attribute `{name}` is not a float"))
            }
        }
    }

    fn string(&self, name: &str, default: &str) -> R<String> {
        match self.get(name) {
            None => Ok(default.to_string()),
            Some(a) => {
                let s =
                    a.s.as_deref()
                        .ok_or_else(|| format!("attribute `{name}` is not a string"))?;
                String::from_utf8(s.to_vec())
                    .map_err(|_| format!("attribute `{name}` is not UTF-8"))
            }
        }
    }
}

/// Two window values (height, width) in `[min, MAX_DIM]`.
fn pair(v: &[i64], what: &str, min: i64) -> R<[u32; 2]> {
    let [h, w] = v else {
        return Err(format!(
            "{what} {v:?}: only 2-D windows are supported (two values)"
        ));
    };
    let one = |x: i64| {
        u32::try_from(x)
            .ok()
            .filter(|&x| i64::from(x) >= min && x <= MAX_DIM)
            .ok_or_else(|| format!("{what} {v:?} out of range ({min} to {MAX_DIM})"))
    };
    Ok([one(*h)?, one(*w)?])
}

struct Importer<'g> {
    graph: Graph,
    /// The placeholder scope (`input`) every node gets until `scopes::assign`.
    scope: ScopeId,
    inits: HashMap<&'g str, &'g TensorProto>,
    values: HashMap<String, Value>,
    /// How many node inputs (and graph outputs) read each tensor name.
    uses: HashMap<String, usize>,
    /// Linear nodes made from a `MatMul`, still without a bias (an `Add` may supply it).
    matmuls: HashSet<NodeId>,
    /// The declared batch when the input fixes it (then `Reshape` may name it literally).
    batch: Option<i64>,
    /// Each constant's data (by the address of its `Rc`, alive in `values` for the whole
    /// import), shared by every parameter made from it.
    shared: HashMap<usize, Arc<[f32]>>,
    /// The last `#k` suffix given to a reused initializer name.
    suffixes: HashMap<String, u32>,
    /// Elements of derived weight data still allowed (starts at the file's float capacity,
    /// grows by each external data file's).
    budget: usize,
    external: ExternalData,
}

impl<'g> Importer<'g> {
    fn declare_input(&mut self, g: &GraphProto) -> Result<(), OnnxError> {
        let inputs: Vec<&ValueInfoProto> = g
            .input
            .iter()
            .filter(|v| !self.inits.contains_key(v.name()))
            .collect();
        let [input] = inputs.as_slice() else {
            return Err(OnnxError::Graph {
                what: format!(
                    "has {} inputs besides its initializers; sparsec models read one image batch",
                    inputs.len()
                ),
            });
        };
        let name = input.name().to_string();
        let err = |what: String| OnnxError::Input {
            name: name.clone(),
            what,
        };
        let t = match input.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(type_proto::Value::TensorType(t)) => t,
            _ => return Err(err("is not a tensor".into())),
        };
        if t.elem_type != Some(1) {
            return Err(err(format!(
                "has element type {}; only float32 (1) is supported",
                t.elem_type.unwrap_or(0)
            )));
        }
        let dims = t.shape.as_ref().map(|s| s.dim.as_slice()).unwrap_or(&[]);
        if dims.len() != 4 {
            return Err(err(format!(
                "has rank {}; sparsec needs an NCHW image batch [N, C, H, W] with C, H and W fixed",
                dims.len()
            )));
        }
        self.batch = match &dims[0].value {
            Some(dimension::Value::DimValue(v)) if *v >= 1 => Some(*v),
            Some(dimension::Value::DimValue(v)) => {
                return Err(err(format!("has batch dimension {v}")));
            }
            _ => None,
        };
        let mut chw = [0u32; 3];
        for (k, what) in ["channels", "height", "width"].iter().enumerate() {
            chw[k] = match &dims[k + 1].value {
                Some(dimension::Value::DimValue(v)) => u32::try_from(*v)
                    .ok()
                    .filter(|&v| (1..=MAX_DIM).contains(&v))
                    .ok_or_else(|| err(format!("{what} {v} out of range (1 to {MAX_DIM})")))?,
                Some(dimension::Value::DimParam(p)) => {
                    return Err(err(format!(
                        "{what} is the dynamic dimension `{p}`; sparsec compiles a fixed C, H and W (export with a fixed input size)"
                    )));
                }
                None => {
                    return Err(err(format!(
                        "{what} is not given; sparsec compiles a fixed C, H and W"
                    )));
                }
            };
        }
        let ty = TensorType::new(chw[0], chw[1], chw[2]);
        if ty.elements() > ir::op::MAX_ELEMENTS {
            return Err(err(format!("{ty} is too large")));
        }
        let id = self.graph.add_input(&name, ty, Span::default(), self.scope);
        self.values.insert(name, Value::Act { node: id, rank: 4 });
        Ok(())
    }

    fn value(&mut self, name: &str) -> R<Value> {
        if let Some(v) = self.values.get(name) {
            return Ok(v.clone());
        }
        let Some(t) = self.inits.get(name) else {
            return Err(format!(
                "reads `{name}`, which no node, initializer or graph input defines"
            ));
        };
        let err = |e: String| format!("initializer `{name}`: {e}");
        let c = if tensor::is_external(t) {
            let before = self.external.bytes_read();
            let bytes = self.external.bytes(t).map_err(err)?;
            let c = tensor::decode(t, Some(bytes)).map_err(err)?;
            let grown = self.external.bytes_read().saturating_sub(before);
            self.budget = self.budget.saturating_add(grown / 4);
            c
        } else {
            tensor::decode(t, None).map_err(err)?
        };
        let v = Value::Const(Rc::new(c));
        self.values.insert(name.to_string(), v.clone());
        Ok(v)
    }

    fn input(&mut self, n: &NodeProto, i: usize) -> R<Value> {
        match n.input.get(i).filter(|s| !s.is_empty()) {
            Some(name) => self.value(name),
            None => Err(format!("input {i} is missing")),
        }
    }

    fn opt_input(&mut self, n: &NodeProto, i: usize) -> R<Option<Value>> {
        match n.input.get(i).filter(|s| !s.is_empty()) {
            Some(name) => self.value(name).map(Some),
            None => Ok(None),
        }
    }

    fn add(&mut self, op: Op, operands: &[NodeId]) -> R<NodeId> {
        self.graph
            .add(op, operands, Span::default(), self.scope)
            .map_err(|e| e.to_string())
    }

    /// A parameter named after the tensor (`name#2`, ... when an initializer is used again),
    /// its data bound. Parameters made from the same initializer share its data.
    fn param(
        &mut self,
        name: &str,
        shape: Vec<usize>,
        kind: ParamKind,
        data: Arc<[f32]>,
    ) -> R<ParamId> {
        let mut unique = name.to_string();
        let id = loop {
            match self.graph.params.add(unique.clone(), shape.clone(), kind) {
                Ok(id) => break id,
                Err(_) => {
                    let k = self.suffixes.entry(name.to_string()).or_insert(1);
                    *k += 1;
                    unique = format!("{name}#{k}");
                }
            }
        };
        self.graph.params.get_mut(id).data = Some(data);
        Ok(id)
    }

    /// Data computed from an initializer (transposed, scaled, broadcast): finite, and within
    /// the budget of fresh elements, so a file that reuses one tensor in many nodes cannot
    /// make the import allocate far more than it holds.
    fn fresh(&mut self, name: &str, data: Vec<f32>) -> R<Arc<[f32]>> {
        finite(name, &data)?;
        Ok(data.into())
    }

    fn reserve(&mut self, elements: usize) -> R<()> {
        self.budget = self.budget.checked_sub(elements).ok_or_else(|| {
            "the weights this model derives (transposed, broadcast) exceed what the file holds"
                .to_string()
        })?;
        Ok(())
    }

    /// Sets the node's first output; any other output it has must be unused.
    fn set(&mut self, n: &NodeProto, v: Value, used: &HashSet<&str>) -> R<()> {
        for (i, o) in n.output.iter().enumerate().skip(1) {
            if !o.is_empty() && used.contains(o.as_str()) {
                return Err(format!(
                    "output {i} (`{o}`) is used, but only the first output is supported (inference form)"
                ));
            }
        }
        let Some(o) = n.output.first().filter(|o| !o.is_empty()) else {
            return Err("has no output".into());
        };
        self.values.insert(o.clone(), v);
        Ok(())
    }

    fn node(&mut self, n: &NodeProto, used: &HashSet<&str>) -> R<()> {
        if !matches!(n.domain(), "" | "ai.onnx") {
            return Err(format!(
                "operator domain `{}` is not supported (only the default ONNX domain)",
                n.domain()
            ));
        }
        let a = Attrs(&n.attribute);
        let v = match n.op_type() {
            "Conv" => self.conv(n, &a)?,
            "BatchNormalization" => self.batch_norm(n, &a)?,
            "Relu" => {
                a.only(&[])?;
                let (x, rank) = self.act(n, 0)?;
                Value::Act {
                    node: self.add(Op::Relu, &[x])?,
                    rank,
                }
            }
            "AveragePool" => self.pool(n, &a, PoolKind::Avg)?,
            "MaxPool" => self.pool(n, &a, PoolKind::Max)?,
            "GlobalAveragePool" | "GlobalMaxPool" => {
                a.only(&[])?;
                let (x, _) = self.act4(n, 0)?;
                let kind = if n.op_type() == "GlobalMaxPool" {
                    PoolKind::Max
                } else {
                    PoolKind::Avg
                };
                let op = Op::Pool(Pool {
                    kind,
                    global: true,
                    kernel: [1; 2],
                    stride: [1; 2],
                    pad: [0; 2],
                    access: Access::PLAIN,
                });
                Value::Act {
                    node: self.add(op, &[x])?,
                    rank: 4,
                }
            }
            "ReduceMean" => self.reduce_mean(n, &a)?,
            "Concat" => self.concat(n, &a)?,
            "Add" | "Sum" => self.add_op(n, &a)?,
            "Flatten" => {
                a.only(&["axis"])?;
                let axis = a.int("axis", 1)?;
                let (x, rank) = self.act(n, 0)?;
                if axis != 1 && axis != 1 - i64::from(rank) {
                    return Err(format!(
                        "flattening from axis {axis} is not supported (only axis 1: [N, C*H*W])"
                    ));
                }
                self.flat(x)?
            }
            "Reshape" => self.reshape(n, &a)?,
            "Gemm" => self.gemm(n, &a)?,
            "MatMul" => self.matmul(n, &a)?,
            "Identity" => {
                a.only(&[])?;
                self.input(n, 0)?
            }
            "Dropout" => {
                a.only(&["seed", "is_test", "ratio"])?;
                if a.int("is_test", 1)? == 0 {
                    return Err("training-mode dropout (is_test 0) is not supported".into());
                }
                if let Some(t) = self.opt_input(n, 2)? {
                    let c = self.konst(t, "training_mode")?;
                    if c.known_ints() != Some(vec![0]) {
                        return Err("training-mode dropout is not supported".into());
                    }
                }
                self.input(n, 0)?
            }
            "Constant" => Value::Const(Rc::new(constant(&a)?)),
            "Shape" => self.shape(n, &a)?,
            "Gather" => self.gather(n, &a)?,
            "Unsqueeze" | "Squeeze" => self.squeeze(n, &a)?,
            "Cast" => {
                a.only(&["to", "saturate", "round_mode"])?;
                let to = a.int("to", 0)?;
                let c = self.konst_input(n, 0)?;
                let ok = match &c.data {
                    Data::F32(_) => to == 1,
                    Data::Int(_) => to == 6 || to == 7,
                };
                if !ok {
                    return Err(format!(
                        "casting a constant to type {to} is not supported (only shape plumbing that keeps the type)"
                    ));
                }
                Value::Const(c)
            }
            op => {
                return Err(format!(
                    "op `{op}` is not supported (docs/onnx.md lists the supported ops)"
                ));
            }
        };
        self.set(n, v, used)
    }

    fn act(&mut self, n: &NodeProto, i: usize) -> R<(NodeId, u8)> {
        match self.input(n, i)? {
            Value::Act { node, rank } => Ok((node, rank)),
            Value::Const(_) => Err(format!(
                "input {i} (`{}`) is a constant; sparsec computes this op only on activations",
                n.input.get(i).map_or("", String::as_str)
            )),
        }
    }

    fn act4(&mut self, n: &NodeProto, i: usize) -> R<(NodeId, TensorType)> {
        match self.act(n, i)? {
            (x, 4) => Ok((x, self.graph.node(x).ty)),
            (_, rank) => Err(format!(
                "input {i} has rank {rank}; this op needs an [N, C, H, W] tensor"
            )),
        }
    }

    fn konst(&self, v: Value, what: &str) -> R<Rc<Const>> {
        match v {
            Value::Const(c) => Ok(c),
            Value::Act { .. } => Err(format!(
                "{what} is computed from the input; sparsec needs it constant (an initializer)"
            )),
        }
    }

    fn konst_input(&mut self, n: &NodeProto, i: usize) -> R<Rc<Const>> {
        let v = self.input(n, i)?;
        self.konst(v, &format!("input {i}"))
    }

    /// A float32 constant input with the given rank, as (dims, data).
    fn floats(
        &mut self,
        n: &NodeProto,
        i: usize,
        what: &str,
        rank: usize,
    ) -> R<(Vec<usize>, Arc<[f32]>)> {
        let v = self.input(n, i)?;
        let c = self.konst(v, what)?;
        let Data::F32(d) = &c.data else {
            return Err(format!("{what} is not float32"));
        };
        if c.dims.len() != rank {
            return Err(format!(
                "{what} has dims {:?}, expected rank {rank}",
                c.dims
            ));
        }
        // Keyed by the constant itself: every name for it (`Identity` aliases) shares one copy.
        let key = Rc::as_ptr(&c) as usize;
        if let Some(shared) = self.shared.get(&key) {
            return Ok((c.dims.clone(), shared.clone()));
        }
        finite(&Self::tensor_name(n, i), d)?;
        let shared: Arc<[f32]> = d.as_slice().into();
        self.shared.insert(key, shared.clone());
        Ok((c.dims.clone(), shared))
    }

    fn tensor_name(n: &NodeProto, i: usize) -> String {
        n.input.get(i).cloned().unwrap_or_default()
    }

    fn conv(&mut self, n: &NodeProto, a: &Attrs) -> R<Value> {
        a.only(&[
            "auto_pad",
            "dilations",
            "group",
            "kernel_shape",
            "pads",
            "strides",
        ])?;
        let (x, _) = self.act4(n, 0)?;
        let (wd, w) = self.floats(n, 1, "the weight", 4)?;
        let group = a.int("group", 1)?;
        if group != 1 {
            return Err(format!(
                "group {group} is not supported (grouped and depthwise convolutions: only group 1)"
            ));
        }
        let dims = |d: usize| {
            u32::try_from(d)
                .ok()
                .filter(|&d| (1..=MAX_DIM).contains(&d))
        };
        let (Some(out), Some(kh), Some(kw)) = (dims(wd[0]), dims(wd[2]), dims(wd[3])) else {
            return Err(format!("weight dims {wd:?} out of range"));
        };
        let kernel = [kh, kw];
        if let Some(ks) = a.ints("kernel_shape")
            && pair(ks, "kernel_shape", 1)? != kernel
        {
            return Err(format!(
                "kernel_shape {ks:?} does not match the weight's {kh}x{kw}"
            ));
        }
        if let Some(d) = a.ints("dilations")
            && d.iter().any(|&d| d != 1)
        {
            return Err(format!("dilations {d:?} are not supported (only 1)"));
        }
        let stride = pair(a.ints("strides").unwrap_or(&[1, 1]), "strides", 1)?;
        let pad = pads(a, kernel, stride)?;
        let weight = self.param(&Self::tensor_name(n, 1), wd, ParamKind::Weight, w)?;
        let bias = match self.opt_input(n, 2)? {
            None => None,
            Some(_) => {
                let (bd, b) = self.floats(n, 2, "the bias", 1)?;
                Some(self.param(&Self::tensor_name(n, 2), bd, ParamKind::Bias, b)?)
            }
        };
        let op = Op::Conv2d(Conv2d {
            out_channels: out,
            kernel,
            stride,
            pad,
            weight,
            bias,
            access: Access::PLAIN,
            relu: false,
        });
        Ok(Value::Act {
            node: self.add(op, &[x])?,
            rank: 4,
        })
    }

    fn batch_norm(&mut self, n: &NodeProto, a: &Attrs) -> R<Value> {
        a.only(&["epsilon", "momentum", "training_mode", "spatial", "is_test"])?;
        if a.int("training_mode", 0)? != 0 {
            return Err("training_mode 1 is not supported (inference form only)".into());
        }
        if a.int("spatial", 1)? != 1 {
            return Err("spatial 0 is not supported (per-channel statistics only)".into());
        }
        let eps = a.float("epsilon", 1e-5)?;
        if !eps.is_finite() || eps < 0.0 {
            return Err(format!("epsilon {eps} is not a finite non-negative number"));
        }
        // The f32 attribute read as the decimal it was written as (1e-5, not 9.99999974e-6),
        // so the graph equals the `.snet` one.
        let eps: f64 = format!("{eps}").parse().unwrap_or(f64::from(eps));
        let (x, rank) = self.act(n, 0)?;
        let kinds = [
            ParamKind::BnGamma,
            ParamKind::BnBeta,
            ParamKind::BnRunningMean,
            ParamKind::BnRunningVar,
        ];
        let what = ["the scale", "the bias", "the mean", "the variance"];
        let mut ids = Vec::with_capacity(4);
        for k in 0..4 {
            let (d, v) = self.floats(n, k + 1, what[k], 1)?;
            ids.push(self.param(&Self::tensor_name(n, k + 1), d, kinds[k], v)?);
        }
        let [gamma, beta, mean, var] = ids[..] else {
            return Err("internal: four statistics expected".into());
        };
        let op = Op::BatchNorm(BatchNorm {
            eps,
            gamma,
            beta,
            mean,
            var,
        });
        Ok(Value::Act {
            node: self.add(op, &[x])?,
            rank,
        })
    }

    fn pool(&mut self, n: &NodeProto, a: &Attrs, kind: PoolKind) -> R<Value> {
        let common = [
            "auto_pad",
            "ceil_mode",
            "dilations",
            "kernel_shape",
            "pads",
            "strides",
        ];
        match kind {
            PoolKind::Avg => a.only(&[&common[..], &["count_include_pad"]].concat())?,
            PoolKind::Max => a.only(&[&common[..], &["storage_order"]].concat())?,
        }
        let (x, ty) = self.act4(n, 0)?;
        let kernel = pair(
            a.ints("kernel_shape")
                .ok_or("attribute `kernel_shape` is missing")?,
            "kernel_shape",
            1,
        )?;
        if let Some(d) = a.ints("dilations")
            && d.iter().any(|&d| d != 1)
        {
            return Err(format!("dilations {d:?} are not supported (only 1)"));
        }
        let stride = pair(a.ints("strides").unwrap_or(&[1, 1]), "strides", 1)?;
        let pad = pads(a, kernel, stride)?;
        if kind == PoolKind::Avg && pad != [0, 0] && a.int("count_include_pad", 0)? == 0 {
            return Err(
                "count_include_pad 0 with padding is not supported (sparsec's average pool divides by the whole window)"
                    .into(),
            );
        }
        if a.int("ceil_mode", 0)? != 0 {
            let exact = |size: u32, k: u32, s: u32, p: u32| {
                (u64::from(size) + 2 * u64::from(p)).saturating_sub(u64::from(k)) % u64::from(s)
                    == 0
            };
            if !(exact(ty.height, kernel[0], stride[0], pad[0])
                && exact(ty.width, kernel[1], stride[1], pad[1]))
            {
                return Err(
                    "ceil_mode 1 rounds this window's output size up; only floor rounding is supported"
                        .into(),
                );
            }
        }
        let op = Op::Pool(Pool {
            kind,
            global: false,
            kernel,
            stride,
            pad,
            access: Access::PLAIN,
        });
        Ok(Value::Act {
            node: self.add(op, &[x])?,
            rank: 4,
        })
    }

    fn concat(&mut self, n: &NodeProto, a: &Attrs) -> R<Value> {
        a.only(&["axis"])?;
        let axis = a.int("axis", i64::MIN)?;
        if axis == i64::MIN {
            return Err("attribute `axis` is missing".into());
        }
        let mut vals = Vec::with_capacity(n.input.len().min(1 << 16));
        for i in 0..n.input.len() {
            vals.push(self.input(n, i)?);
        }
        if vals.is_empty() {
            return Err("has no inputs".into());
        }
        if vals.iter().all(|v| matches!(v, Value::Const(_))) {
            return fold_concat(&vals, axis);
        }
        let mut nodes = Vec::with_capacity(vals.len());
        let mut rank0 = None;
        for v in &vals {
            let Value::Act { node, rank } = v else {
                return Err(
                    "concatenates constants with activations, which is not supported".into(),
                );
            };
            if rank0.is_some_and(|r| r != *rank) {
                return Err("concatenates tensors of different ranks".into());
            }
            rank0 = Some(*rank);
            nodes.push(*node);
        }
        let rank = rank0.unwrap_or(4);
        if axis != 1 && axis != 1 - i64::from(rank) {
            return Err(format!(
                "concatenation along axis {axis} is not supported (only channels, axis 1)"
            ));
        }
        if let [one] = nodes.as_slice() {
            return Ok(Value::Act { node: *one, rank });
        }
        Ok(Value::Act {
            node: self.add(Op::Concat, &nodes)?,
            rank,
        })
    }

    fn add_op(&mut self, n: &NodeProto, a: &Attrs) -> R<Value> {
        a.only(&[])?;
        if n.op_type() == "Add" && n.input.len() != 2 {
            return Err(format!("has {} inputs, expected 2", n.input.len()));
        }
        let mut vals = Vec::with_capacity(n.input.len().min(1 << 16));
        for i in 0..n.input.len() {
            vals.push(self.input(n, i)?);
        }
        // MatMul + Add: a constant added to a bias-less linear layer becomes its bias.
        if let [Value::Act { node, rank: 2 }, Value::Const(c)]
        | [Value::Const(c), Value::Act { node, rank: 2 }] = vals.as_slice()
            && self.matmuls.contains(node)
        {
            let mm = n
                .input
                .iter()
                .find(|i| matches!(self.values.get(i.as_str()), Some(Value::Act { .. })))
                .cloned()
                .unwrap_or_default();
            let bias_name = n
                .input
                .iter()
                .find(|i| !matches!(self.values.get(i.as_str()), Some(Value::Act { .. })))
                .cloned()
                .unwrap_or_default();
            if self.uses.get(&mm).copied().unwrap_or(0) == 1 {
                return self.matmul_bias(*node, c, &bias_name);
            }
        }
        let mut nodes = Vec::with_capacity(vals.len());
        let mut rank0 = None;
        for v in &vals {
            let Value::Act { node, rank } = v else {
                return Err(
                    "adds a constant, which is supported only as the bias of a MatMul (MatMul + Add)"
                        .into(),
                );
            };
            if rank0.is_some_and(|r| r != *rank) {
                return Err("adds tensors of different ranks (no broadcasting)".into());
            }
            rank0 = Some(*rank);
            nodes.push(*node);
        }
        let rank = rank0.ok_or("has no inputs")?;
        if let [one] = nodes.as_slice() {
            return Ok(Value::Act { node: *one, rank });
        }
        Ok(Value::Act {
            node: self.add(Op::Add, &nodes)?,
            rank,
        })
    }

    fn matmul_bias(&mut self, node: NodeId, c: &Const, name: &str) -> R<Value> {
        let Op::Linear(l) = &self.graph.node(node).op else {
            return Err("internal: a MatMul that is not a linear layer".into());
        };
        let mut l = l.clone();
        let out = l.out_features as usize;
        self.reserve(out)?;
        let b = bias_vector(c, out)?;
        let b = self.fresh(name, b)?;
        l.bias = Some(self.param(name, vec![out], ParamKind::Bias, b)?);
        self.graph.node_mut(node).op = Op::Linear(l);
        self.graph.reinfer(node).map_err(|e| e.to_string())?;
        self.matmuls.remove(&node);
        Ok(Value::Act { node, rank: 2 })
    }

    /// `[N, C, 1, 1]` viewed as `[N, C]`.
    fn flat(&mut self, x: NodeId) -> R<Value> {
        let ty = self.graph.node(x).ty;
        if ty.height != 1 || ty.width != 1 {
            return Err(format!(
                "flattening a {ty} tensor to 2-D is not supported: sparsec's linear layer reads one value per channel (pool to 1x1 first)"
            ));
        }
        Ok(Value::Act { node: x, rank: 2 })
    }

    fn reshape(&mut self, n: &NodeProto, a: &Attrs) -> R<Value> {
        a.only(&["allowzero"])?;
        let allowzero = a.int("allowzero", 0)? != 0;
        let (x, rank) = self.act(n, 0)?;
        let shape = self.konst_input(n, 1)?;
        let target = shape
            .ints()
            .ok_or("the target shape is not an integer tensor")?
            .to_vec();
        let ty = self.graph.node(x).ty;
        let src: Vec<Int> = if rank == 4 {
            vec![
                Int::Batch,
                Int::Val(i64::from(ty.channels)),
                Int::Val(i64::from(ty.height)),
                Int::Val(i64::from(ty.width)),
            ]
        } else {
            vec![Int::Batch, Int::Val(i64::from(ty.channels))]
        };
        // Resolve 0 (copy) and a literal declared batch; -1 is inferred below.
        let mut resolved = Vec::with_capacity(target.len());
        for (k, t) in target.iter().enumerate() {
            resolved.push(match *t {
                Int::Val(0) if !allowzero => *src.get(k).ok_or_else(|| {
                    format!("target shape {target:?}: 0 copies a missing dimension")
                })?,
                Int::Val(v) if k == 0 && Some(v) == self.batch => Int::Batch,
                other => other,
            });
        }
        let per_image = ty.elements();
        let fixed = |r: &[Int]| -> Vec<i64> {
            r.iter()
                .filter_map(|i| match i {
                    Int::Val(v) => Some(*v),
                    Int::Batch => None,
                })
                .collect()
        };
        let unsupported = || {
            format!(
                "reshaping {ty} to {target:?} is not supported (only to [N, C*H*W] of a 1x1 map, or to its own shape)"
            )
        };
        match resolved.as_slice() {
            [Int::Batch, rest @ ..] => {
                let vals = fixed(rest);
                if vals.len() != rest.len() {
                    return Err(unsupported());
                }
                // Checked: the values come from the file.
                let known = vals
                    .iter()
                    .filter(|&&v| v != -1)
                    .try_fold(1i64, |acc, &v| acc.checked_mul(v))
                    .ok_or_else(unsupported)?;
                let infer = vals.iter().filter(|&&v| v == -1).count();
                let dims: Vec<i64> = match infer {
                    0 => vals.clone(),
                    1 if known > 0 && per_image as i64 % known == 0 => vals
                        .iter()
                        .map(|&v| if v == -1 { per_image as i64 / known } else { v })
                        .collect(),
                    _ => return Err(unsupported()),
                };
                if dims.iter().any(|&d| d < 0) {
                    return Err(unsupported());
                }
                let same4 = [
                    i64::from(ty.channels),
                    i64::from(ty.height),
                    i64::from(ty.width),
                ];
                if rank == 4 && dims == same4 {
                    Ok(Value::Act { node: x, rank: 4 })
                } else if dims == [per_image as i64] {
                    self.flat(x)
                } else {
                    Err(unsupported())
                }
            }
            [Int::Val(-1), Int::Val(c)] if *c as u64 == per_image => self.flat(x),
            _ => Err(unsupported()),
        }
    }

    /// The flattened `[N, in]` input of a linear layer.
    fn flat_input(&mut self, n: &NodeProto) -> R<(NodeId, usize)> {
        match self.act(n, 0)? {
            (x, 2) => Ok((x, self.graph.node(x).ty.channels as usize)),
            (_, r) => Err(format!(
                "input 0 has rank {r}; a linear layer reads an [N, C] tensor (Flatten first)"
            )),
        }
    }

    fn gemm(&mut self, n: &NodeProto, a: &Attrs) -> R<Value> {
        a.only(&["alpha", "beta", "transA", "transB"])?;
        if a.int("transA", 0)? != 0 {
            return Err("transA 1 is not supported".into());
        }
        let (alpha, beta) = (a.float("alpha", 1.0)?, a.float("beta", 1.0)?);
        let (x, _) = self.flat_input(n)?;
        let (bd, b) = self.floats(n, 1, "B", 2)?;
        let trans_b = a.int("transB", 0)? != 0;
        let (out, input_features) = if trans_b {
            (bd[0], bd[1])
        } else {
            (bd[1], bd[0])
        };
        let w = if trans_b && alpha == 1.0 {
            b
        } else {
            self.reserve(b.len())?;
            let t = if trans_b {
                b.to_vec()
            } else {
                transpose(&b, bd[0], bd[1])
            };
            let name = Self::tensor_name(n, 1);
            self.fresh(&name, t.into_iter().map(|v| v * alpha).collect())?
        };
        let weight = self.param(
            &Self::tensor_name(n, 1),
            vec![out, input_features],
            ParamKind::Weight,
            w,
        )?;
        let bias = match self.opt_input(n, 2)? {
            None => None,
            Some(v) => {
                let c = self.konst(v, "C")?;
                self.reserve(out)?;
                let b: Vec<f32> = bias_vector(&c, out)?
                    .into_iter()
                    .map(|v| v * beta)
                    .collect();
                let name = Self::tensor_name(n, 2);
                let b = self.fresh(&name, b)?;
                Some(self.param(&name, vec![out], ParamKind::Bias, b)?)
            }
        };
        self.linear(x, out, weight, bias)
    }

    fn matmul(&mut self, n: &NodeProto, a: &Attrs) -> R<Value> {
        a.only(&[])?;
        let (x, _) = self.flat_input(n)?;
        let (bd, b) = self.floats(n, 1, "B", 2)?;
        self.reserve(b.len())?;
        let w = transpose(&b, bd[0], bd[1]);
        let w = self.fresh(&Self::tensor_name(n, 1), w)?;
        let weight = self.param(
            &Self::tensor_name(n, 1),
            vec![bd[1], bd[0]],
            ParamKind::Weight,
            w,
        )?;
        let v = self.linear(x, bd[1], weight, None)?;
        if let Value::Act { node, .. } = v {
            self.matmuls.insert(node);
        }
        Ok(v)
    }

    fn linear(
        &mut self,
        x: NodeId,
        out: usize,
        weight: ParamId,
        bias: Option<ParamId>,
    ) -> R<Value> {
        let out_features = u32::try_from(out)
            .ok()
            .filter(|&o| (1..=MAX_DIM).contains(&o))
            .ok_or_else(|| format!("{out} output features out of range (1 to {MAX_DIM})"))?;
        let op = Op::Linear(Linear {
            out_features,
            weight,
            bias,
            access: Access::PLAIN,
            global_pool: false,
        });
        Ok(Value::Act {
            node: self.add(op, &[x])?,
            rank: 2,
        })
    }

    fn shape(&mut self, n: &NodeProto, a: &Attrs) -> R<Value> {
        a.only(&["start", "end"])?;
        let dims: Vec<Int> = match self.input(n, 0)? {
            Value::Act { node, rank } => {
                let ty = self.graph.node(node).ty;
                let all = [ty.channels, ty.height, ty.width].map(|d| Int::Val(i64::from(d)));
                std::iter::once(Int::Batch)
                    .chain(all.into_iter().take(usize::from(rank) - 1))
                    .collect()
            }
            Value::Const(c) => c.dims.iter().map(|&d| Int::Val(d as i64)).collect(),
        };
        let r = dims.len() as i64;
        let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
        let (s, e) = (clamp(a.int("start", 0)?), clamp(a.int("end", r)?));
        let out: Vec<Int> = dims.get(s..e.max(s)).unwrap_or(&[]).to_vec();
        Ok(Value::Const(Rc::new(Const {
            dims: vec![out.len()],
            data: Data::Int(out),
        })))
    }

    fn gather(&mut self, n: &NodeProto, a: &Attrs) -> R<Value> {
        a.only(&["axis"])?;
        let data = self.konst_input(n, 0)?;
        let idx = self.konst_input(n, 1)?;
        if a.int("axis", 0)? != 0 || data.dims.len() != 1 {
            return Err(
                "only gathering from a 1-D constant (a shape) along axis 0 is supported".into(),
            );
        }
        let idx = idx.known_ints().ok_or("the indices are not integers")?;
        let len = data.len() as i64;
        let pick = |i: i64| -> R<usize> {
            let j = if i < 0 { i + len } else { i };
            usize::try_from(j)
                .ok()
                .filter(|&j| (j as i64) < len)
                .ok_or_else(|| format!("index {i} is out of range for {len} elements"))
        };
        let positions: Vec<usize> = idx.iter().map(|&i| pick(i)).collect::<R<_>>()?;
        let dims = if self.konst_input(n, 1)?.dims.is_empty() {
            vec![]
        } else {
            vec![positions.len()]
        };
        let data = match &data.data {
            Data::F32(v) => Data::F32(positions.iter().map(|&p| v[p]).collect()),
            Data::Int(v) => Data::Int(positions.iter().map(|&p| v[p]).collect()),
        };
        Ok(Value::Const(Rc::new(Const { dims, data })))
    }

    /// `ReduceMean` over height and width (`axes` an attribute before opset 18, an input
    /// since): a global average pool, `[N, C, 1, 1]` with `keepdims` 1, `[N, C]` without.
    /// What `torch.onnx.export(..., dynamo=True)` writes for `adaptive_avg_pool2d(x, 1)`.
    fn reduce_mean(&mut self, n: &NodeProto, a: &Attrs) -> R<Value> {
        a.only(&["axes", "keepdims", "noop_with_empty_axes"])?;
        let (x, _) = self.act4(n, 0)?;
        let axes: Vec<i64> = match (a.ints("axes"), self.opt_input(n, 1)?) {
            (Some(_), Some(_)) => return Err("axes given both as attribute and input".into()),
            (Some(v), None) => v.to_vec(),
            (None, Some(v)) => self
                .konst(v, "the axes")?
                .known_ints()
                .ok_or("the axes are not integers")?,
            (None, None) => Vec::new(),
        };
        let mut norm: Vec<i64> = axes
            .iter()
            .map(|&ax| if ax < 0 { ax + 4 } else { ax })
            .collect();
        norm.sort_unstable();
        if norm != [2, 3] {
            return Err(format!(
                "reducing over axes {axes:?} is not supported (only height and width, [2, 3]: a global average pool)"
            ));
        }
        let keep = a.int("keepdims", 1)?;
        let op = Op::Pool(Pool {
            kind: PoolKind::Avg,
            global: true,
            kernel: [1; 2],
            stride: [1; 2],
            pad: [0; 2],
            access: Access::PLAIN,
        });
        let node = self.add(op, &[x])?;
        match keep {
            1 => Ok(Value::Act { node, rank: 4 }),
            0 => self.flat(node),
            k => Err(format!("keepdims {k} is not 0 or 1")),
        }
    }

    fn squeeze(&mut self, n: &NodeProto, a: &Attrs) -> R<Value> {
        a.only(&["axes"])?;
        let c = self.konst_input(n, 0)?;
        let axes: Vec<i64> = match (a.ints("axes"), self.opt_input(n, 1)?) {
            (Some(v), _) => v.to_vec(),
            (None, Some(v)) => self
                .konst(v, "the axes")?
                .known_ints()
                .ok_or("the axes are not integers")?,
            (None, None) if n.op_type() == "Squeeze" => Vec::new(),
            (None, None) => return Err("the axes are missing".into()),
        };
        let bad = || format!("axes {axes:?} out of range for dims {:?}", c.dims);
        let dims = if n.op_type() == "Unsqueeze" {
            let out_rank = c.dims.len() + axes.len();
            if out_rank > 64 {
                return Err(bad());
            }
            let mut ones = vec![false; out_rank];
            for &ax in &axes {
                let k = if ax < 0 { ax + out_rank as i64 } else { ax };
                let k = usize::try_from(k)
                    .ok()
                    .filter(|&k| k < out_rank)
                    .ok_or_else(bad)?;
                if std::mem::replace(&mut ones[k], true) {
                    return Err(bad());
                }
            }
            let mut rest = c.dims.iter();
            ones.iter()
                .map(|&one| {
                    if one {
                        1
                    } else {
                        rest.next().copied().unwrap_or(1)
                    }
                })
                .collect()
        } else {
            let r = c.dims.len() as i64;
            let mut drop = vec![axes.is_empty(); c.dims.len()];
            for &ax in &axes {
                let k = if ax < 0 { ax + r } else { ax };
                let k = usize::try_from(k)
                    .ok()
                    .filter(|&k| (k as i64) < r)
                    .ok_or_else(bad)?;
                drop[k] = true;
            }
            c.dims
                .iter()
                .zip(&drop)
                .filter(|&(&d, &x)| !(x && d == 1))
                .map(|(&d, _)| d)
                .collect()
        };
        Ok(Value::Const(Rc::new(Const {
            dims,
            data: c.data.clone(),
        })))
    }
}

/// Symmetric padding `[height, width]` from `pads` / `auto_pad`.
fn pads(a: &Attrs, kernel: [u32; 2], stride: [u32; 2]) -> R<[u32; 2]> {
    match a.string("auto_pad", "NOTSET")?.as_str() {
        "NOTSET" => {
            let p = a.ints("pads").unwrap_or(&[0, 0, 0, 0]);
            let [t, l, b, r] = p else {
                return Err(format!("pads {p:?}: expected 4 values (2-D)"));
            };
            if t != b || l != r {
                return Err(format!(
                    "asymmetric padding {p:?} is not supported (top = bottom, left = right)"
                ));
            }
            pair(&[*t, *l], "pads", 0)
        }
        "VALID" => Ok([0, 0]),
        "SAME_UPPER" | "SAME_LOWER"
            if stride == [1, 1] && kernel[0] % 2 == 1 && kernel[1] % 2 == 1 =>
        {
            Ok([(kernel[0] - 1) / 2, (kernel[1] - 1) / 2])
        }
        other => Err(format!(
            "auto_pad `{other}` is not supported here (NOTSET, VALID, or SAME_* with stride 1 and an odd kernel)"
        )),
    }
}

/// Non-finite weights are rejected, as for safetensors checkpoints.
fn finite(name: &str, data: &[f32]) -> R<()> {
    match data.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(format!(
            "`{name}` holds a non-finite value ({}) at flat index {i}",
            data[i]
        )),
        None => Ok(()),
    }
}

/// A row-major `[rows, cols]` matrix transposed.
fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = Vec::with_capacity(m.len());
    for c in 0..cols {
        for r in 0..rows {
            t.push(m[r * cols + c]);
        }
    }
    t
}

/// A bias of `out` values from a `[out]`, `[1, out]`, `[1]` or scalar constant.
fn bias_vector(c: &Const, out: usize) -> R<Vec<f32>> {
    let Data::F32(v) = &c.data else {
        return Err("the bias is not float32".into());
    };
    match (c.dims.as_slice(), v.as_slice()) {
        ([n] | [1, n], _) if *n == out => Ok(v.clone()),
        ([] | [1] | [1, 1], [x]) => Ok(vec![*x; out]),
        (d, _) => Err(format!(
            "the bias has dims {d:?}; expected [{out}] (or one value)"
        )),
    }
}

/// Concatenation of 1-D constants (shape vectors).
fn fold_concat(vals: &[Value], axis: i64) -> R<Value> {
    if axis != 0 && axis != -1 {
        return Err(format!(
            "folding a concatenation of constants along axis {axis} is not supported (only 1-D shapes)"
        ));
    }
    let mut ints = Vec::new();
    let mut floats = Vec::new();
    for v in vals {
        let Value::Const(c) = v else {
            return Err("internal: not a constant".into());
        };
        if c.dims.len() != 1 {
            return Err(
                "folding a concatenation of constants is supported only for 1-D shapes".into(),
            );
        }
        if ints.len() + floats.len() + c.len() > MAX_FOLDED {
            return Err(format!(
                "a folded shape computation exceeds {MAX_FOLDED} elements"
            ));
        }
        match &c.data {
            Data::Int(v) => ints.extend_from_slice(v),
            Data::F32(v) => floats.extend_from_slice(v),
        }
    }
    let (len, data) = match (ints.is_empty(), floats.is_empty()) {
        (_, true) => (ints.len(), Data::Int(ints)),
        (true, false) => (floats.len(), Data::F32(floats)),
        (false, false) => return Err("concatenates integer and float constants".into()),
    };
    Ok(Value::Const(Rc::new(Const {
        dims: vec![len],
        data,
    })))
}

/// The tensor a `Constant` node holds.
fn constant(a: &Attrs) -> R<Const> {
    a.only(&[
        "value",
        "value_float",
        "value_floats",
        "value_int",
        "value_ints",
    ])?;
    let [attr] = a.0 else {
        return Err("needs exactly one value attribute".into());
    };
    match attr.name() {
        "value" => {
            let t = attr.t.as_ref().ok_or("attribute `value` holds no tensor")?;
            tensor::decode(t, None)
        }
        "value_float" => Ok(Const {
            dims: vec![],
            data: Data::F32(vec![a.float("value_float", 0.0)?]),
        }),
        "value_int" => Ok(Const {
            dims: vec![],
            data: Data::Int(vec![Int::Val(a.int("value_int", 0)?)]),
        }),
        "value_floats" => Ok(Const {
            dims: vec![attr.floats.len()],
            data: Data::F32(attr.floats.clone()),
        }),
        _ => Ok(Const {
            dims: vec![attr.ints.len()],
            data: Data::Int(attr.ints.iter().map(|&v| Int::Val(v)).collect()),
        }),
    }
}

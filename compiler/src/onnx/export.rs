//! IR graph → a standard ONNX model (opset 17): `sparsec MODEL.snet --emit onnx -o model.onnx`.
//!
//! Owns the mapping of the plain (unoptimised) IR ops to ONNX nodes: `conv2d` → `Conv`,
//! `batch_norm` → `BatchNormalization`, `relu` → `Relu`, `concat` → `Concat` (axis 1), `add`
//! → `Add`/`Sum`, pools → `AveragePool`/`MaxPool`/`GlobalAveragePool`/`GlobalMaxPool`,
//! `linear` → `Flatten` + `Gemm` (`transB` 1); parameters become float32 initializers under
//! their names, so the export imports back to the same graph and plan. The batch dimension is
//! symbolic (`N`).
//!
//! Must not optimise or change the graph; fused forms (a reader's prologue or several operands,
//! a convolution's ReLU epilogue, a linear layer's global pool) appear only after the passes,
//! and are exported as the plain ops they stand for only where that is exact (epilogue ReLU,
//! global pool); a prologue or a combined read is an error: export the graph before optimising.

use super::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto, attribute_proto::AttributeType,
    tensor_proto::DataType, tensor_shape_proto, type_proto,
};
use ir::{Graph, NodeId, Op, ParamId, PoolKind};
use prost::Message;
use std::collections::HashSet;

/// The opset the export declares.
pub const OPSET: i64 = 17;

/// Why a graph could not be exported.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("parameter `{0}` has no data: pass --weights W.safetensors or --random-weights SEED")]
    Unbound(String),
    #[error("`{node}` ({op}) is a fused form the export does not write: {what}")]
    Fused {
        node: String,
        op: &'static str,
        what: &'static str,
    },
    #[error("the graph has a cycle")]
    Cycle,
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

fn ints(name: &str, v: &[u32]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.iter().map(|&x| i64::from(x)).collect(),
        ..Default::default()
    }
}

fn float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(v),
        ..Default::default()
    }
}

fn value_info(name: &str, dims: &[u32]) -> ValueInfoProto {
    let dim = std::iter::once(tensor_shape_proto::Dimension {
        value: Some(tensor_shape_proto::dimension::Value::DimParam("N".into())),
        ..Default::default()
    })
    .chain(dims.iter().map(|&d| tensor_shape_proto::Dimension {
        value: Some(tensor_shape_proto::dimension::Value::DimValue(i64::from(d))),
        ..Default::default()
    }))
    .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

struct Exporter<'g> {
    graph: &'g Graph,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    exported: HashSet<ParamId>,
    /// The ONNX tensor name of each IR node's value.
    names: Vec<String>,
}

impl Exporter<'_> {
    fn name(&self, id: NodeId) -> &str {
        &self.names[id.index()]
    }

    fn param(&mut self, id: ParamId) -> Result<String, ExportError> {
        let p = self.graph.params.get(id);
        if self.exported.insert(id) {
            let data = p
                .data
                .as_deref()
                .ok_or_else(|| ExportError::Unbound(p.name.clone()))?;
            self.initializers.push(TensorProto {
                name: Some(p.name.clone()),
                dims: p.shape.iter().map(|&d| d as i64).collect(),
                data_type: Some(DataType::Float as i32),
                raw_data: Some(data.iter().flat_map(|v| v.to_le_bytes()).collect()),
                ..Default::default()
            });
        }
        Ok(p.name.clone())
    }

    fn push(&mut self, op: &str, inputs: Vec<String>, output: String, attrs: Vec<AttributeProto>) {
        let k = self.nodes.len();
        self.nodes.push(NodeProto {
            name: Some(format!("{op}_{k}")),
            op_type: Some(op.into()),
            input: inputs,
            output: vec![output],
            attribute: attrs,
            ..Default::default()
        });
    }

    fn node(&mut self, id: NodeId, label: &str) -> Result<(), ExportError> {
        let node = self.graph.node(id);
        let operands: Vec<String> = self
            .graph
            .operands(id)
            .iter()
            .map(|&o| self.name(o).to_string())
            .collect();
        let out = self.name(id).to_string();
        let fused = |what| ExportError::Fused {
            node: label.to_string(),
            op: node.op.mnemonic(),
            what,
        };
        if let Some(a) = node.op.access()
            && (a.prologue.is_some() || operands.len() != 1)
        {
            return Err(fused(
                "a reader with a prologue or several operands (export the unoptimised graph)",
            ));
        }
        match &node.op {
            Op::Input { .. } | Op::Output { .. } => {}
            Op::Conv2d(c) => {
                let mut inputs = vec![operands[0].clone(), self.param(c.weight)?];
                if let Some(b) = c.bias {
                    inputs.push(self.param(b)?);
                }
                let [ph, pw] = c.pad;
                let attrs = vec![
                    ints("kernel_shape", &c.kernel),
                    ints("strides", &c.stride),
                    ints("pads", &[ph, pw, ph, pw]),
                    ints("dilations", &[1, 1]),
                    int("group", 1),
                ];
                if c.relu {
                    let pre = format!("{out}_conv");
                    self.push("Conv", inputs, pre.clone(), attrs);
                    self.push("Relu", vec![pre], out, vec![]);
                } else {
                    self.push("Conv", inputs, out, attrs);
                }
            }
            Op::BatchNorm(b) => {
                let mut inputs = vec![operands[0].clone()];
                for p in [b.gamma, b.beta, b.mean, b.var] {
                    inputs.push(self.param(p)?);
                }
                self.push(
                    "BatchNormalization",
                    inputs,
                    out,
                    vec![float("epsilon", b.eps as f32)],
                );
            }
            Op::Relu => self.push("Relu", operands, out, vec![]),
            Op::Concat => self.push("Concat", operands, out, vec![int("axis", 1)]),
            Op::Add => {
                let op = if operands.len() == 2 { "Add" } else { "Sum" };
                self.push(op, operands, out, vec![]);
            }
            Op::Pool(p) => {
                let op = match (p.kind, p.global) {
                    (PoolKind::Avg, true) => "GlobalAveragePool",
                    (PoolKind::Max, true) => "GlobalMaxPool",
                    (PoolKind::Avg, false) => "AveragePool",
                    (PoolKind::Max, false) => "MaxPool",
                };
                let mut attrs = Vec::new();
                if !p.global {
                    let [ph, pw] = p.pad;
                    attrs.push(ints("kernel_shape", &p.kernel));
                    attrs.push(ints("strides", &p.stride));
                    attrs.push(ints("pads", &[ph, pw, ph, pw]));
                    if p.kind == PoolKind::Avg {
                        attrs.push(int("count_include_pad", 1));
                    }
                }
                self.push(op, operands, out, attrs);
            }
            Op::Linear(l) => {
                let mut x = operands[0].clone();
                if l.global_pool {
                    let pooled = format!("{out}_pool");
                    self.push("GlobalAveragePool", vec![x], pooled.clone(), vec![]);
                    x = pooled;
                }
                let flat = format!("{out}_flat");
                self.push("Flatten", vec![x], flat.clone(), vec![int("axis", 1)]);
                let mut inputs = vec![flat, self.param(l.weight)?];
                if let Some(b) = l.bias {
                    inputs.push(self.param(b)?);
                }
                self.push("Gemm", inputs, out, vec![int("transB", 1)]);
            }
        }
        Ok(())
    }
}

/// The graph as ONNX protobuf bytes. Every parameter it reads must have data.
pub fn export(graph: &Graph) -> Result<Vec<u8>, ExportError> {
    let order = graph.topo_order().ok_or(ExportError::Cycle)?;
    let mut names = vec![String::new(); graph.index_bound()];
    for (k, &id) in order.iter().enumerate() {
        names[id.index()] = match &graph.node(id).op {
            Op::Input { name } => name.clone(),
            _ => format!("v{k}"),
        };
    }
    // The value an output reads takes the output's name (unless it is the input itself).
    let mut outputs = Vec::new();
    for &o in graph.outputs() {
        let Op::Output { name } = &graph.node(o).op else {
            continue;
        };
        let Some(&src) = graph.operands(o).first() else {
            continue;
        };
        let src_node = graph.node(src);
        let rank2 = matches!(src_node.op, Op::Linear(_));
        if !matches!(src_node.op, Op::Input { .. }) {
            names[src.index()] = name.clone();
        }
        let t = src_node.ty;
        let dims: Vec<u32> = if rank2 {
            vec![t.channels]
        } else {
            vec![t.channels, t.height, t.width]
        };
        outputs.push(value_info(&names[src.index()], &dims));
    }
    let mut ex = Exporter {
        graph,
        nodes: Vec::new(),
        initializers: Vec::new(),
        exported: HashSet::new(),
        names,
    };
    let mut inputs = Vec::new();
    for (k, &id) in order.iter().enumerate() {
        let node = graph.node(id);
        if let Op::Input { name } = &node.op {
            inputs.push(value_info(
                name,
                &[node.ty.channels, node.ty.height, node.ty.width],
            ));
        }
        ex.node(id, &format!("%{k}"))?;
    }
    let model = ModelProto {
        ir_version: Some(8),
        producer_name: Some("sparsec".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }],
        graph: Some(GraphProto {
            name: Some(graph.name.clone()),
            node: ex.nodes,
            initializer: ex.initializers,
            input: inputs,
            output: outputs,
            ..Default::default()
        }),
        ..Default::default()
    };
    Ok(model.encode_to_vec())
}

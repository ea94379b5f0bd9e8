//! The ONNX front end (`compiler/src/onnx`, docs/onnx.md) against the golden exports in
//! `../shared/golden/NAME.onnx`:
//!
//! - each compiles for the CPU (default, accuracy-guarded kernels) with the weights from its
//!   initializers and reproduces the golden output within 2e-4;
//! - its plan equals the plan of `examples/models/NAME.snet`, and its optimised IR equals the
//!   `.snet` one up to names: every parameter reference `@name` reads `@P` (PyTorch folds the
//!   BC models' `bn2` into `conv1` on export, so those parameters are `onnx::Conv_948` where
//!   the `.snet` path derives `...conv1.weight+bn2`); the graph name is the file stem in both;
//! - its generated CUDA source equals the `.snet` model's;
//! - hostile files (truncated, bit-flipped, spliced; a cycle, a missing initializer, a wrong
//!   initializer size, absurd dimensions, unsupported ops and attributes) are errors that name
//!   what is wrong, never a panic (property tests over 600 byte mutants of the smallest export
//!   and 300 structural edits of it: extreme attributes and dims, other op types, rewiring).

use anyhow::{Context, Result, bail};
use proptest::prelude::*;
use prost::Message;
use sparsec::driver::{self, CompileOptions, Target, WeightsSource};
use sparsec::kernel_select::KernelPolicy;
use sparsec::onnx::{self, OnnxError, proto};
use sparsec::plan::memory;
use std::path::PathBuf;
use std::sync::OnceLock;

const MODELS: [&str; 4] = [
    "sparsenet-40-24",
    "sparsenet-bc-100-24",
    "densenet-bc-100-12",
    "sparsenet-bc-1000-12",
];
const TOLERANCE: f64 = 2e-4;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn golden(file: &str) -> PathBuf {
    repo().join("../shared/golden").join(file)
}

/// The optimised IR with every parameter reference (`@` to the end of its word) read as `@P`.
fn without_param_names(text: &str) -> String {
    text.split(' ')
        .map(|w| match w.find('@') {
            Some(at) => format!("{}@P", &w[..at]),
            None => w.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The first line where two texts differ, for a short failure message.
fn first_difference(a: &str, b: &str) -> Option<(usize, String, String)> {
    let (mut la, mut lb) = (a.lines(), b.lines());
    for i in 1.. {
        match (la.next(), lb.next()) {
            (None, None) => return None,
            (x, y) if x != y => {
                return Some((i, x.unwrap_or("").into(), y.unwrap_or("").into()));
            }
            _ => {}
        }
    }
    None
}

fn plan_and_ir(graph: ir::Graph) -> Result<(String, String)> {
    let opt = driver::optimize(graph, &WeightsSource::None, 1, true)?;
    Ok((
        memory::print(&opt.graph, &opt.plan),
        without_param_names(&ir::print::print(&opt.graph)),
    ))
}

#[test]
fn golden_exports_give_the_snet_plan() -> Result<()> {
    for name in MODELS {
        let from_onnx = driver::load(&golden(&format!("{name}.onnx")))?;
        let from_snet = driver::load(&repo().join(format!("examples/models/{name}.snet")))?;
        assert!(from_onnx.params.all_bound(), "{name}: initializers bound");
        let (onnx_plan, onnx_ir) = plan_and_ir(from_onnx)?;
        let (snet_plan, snet_ir) = plan_and_ir(from_snet)?;
        assert_eq!(
            first_difference(&onnx_plan, &snet_plan),
            None,
            "{name}: --emit plan (line, onnx, snet)"
        );
        assert_eq!(
            first_difference(&onnx_ir, &snet_ir),
            None,
            "{name}: --emit opt-ir up to parameter names (line, onnx, snet)"
        );
    }
    Ok(())
}

/// The CUDA kernels generated for an import are those of the `.snet` model, so the CUDA shim
/// suite's golden checks (`tests/tests/cuda_shim.rs`) cover them; only the weights differ, by
/// where `bn2` was folded (by PyTorch on export, or by the passes).
#[test]
fn golden_exports_give_the_snet_cuda_source() -> Result<()> {
    for name in MODELS {
        let cuda = |graph| -> Result<String> {
            let opt = driver::optimize(graph, &WeightsSource::None, 1, true)?;
            Ok(sparsec::backend::cuda::generate(&opt.graph, &opt.plan, false)?.source)
        };
        let from_onnx = cuda(driver::load(&golden(&format!("{name}.onnx")))?)?;
        let from_snet = cuda(driver::load(
            &repo().join(format!("examples/models/{name}.snet")),
        )?)?;
        assert_eq!(first_difference(&from_onnx, &from_snet), None, "{name}");
    }
    Ok(())
}

#[test]
fn sparsenet_40_24_imports_to_the_snet_ir_exactly() -> Result<()> {
    let name = "sparsenet-40-24";
    let from_onnx = driver::load(&golden(&format!("{name}.onnx")))?;
    let from_snet = driver::load(&repo().join(format!("examples/models/{name}.snet")))?;
    assert_eq!(ir::print::print(&from_onnx), ir::print::print(&from_snet));
    Ok(())
}

fn golden_io(name: &str) -> Result<(Vec<f32>, Vec<f32>)> {
    let path = golden(&format!("{name}.io.safetensors"));
    let bytes = std::fs::read(&path).with_context(|| path.display().to_string())?;
    let io = sparsec::weights::load_tensors(&bytes)?;
    let get = |n: &str| {
        io.iter()
            .find(|t| t.0 == n)
            .map(|t| t.2.clone())
            .context("io tensor")
    };
    Ok((get("input")?, get("output")?))
}

#[test]
fn golden_exports_compile_and_match_the_golden_outputs() -> Result<()> {
    for name in MODELS {
        let graph = driver::load(&golden(&format!("{name}.onnx")))?;
        let options = CompileOptions {
            weights: WeightsSource::None,
            target: Target::Cpu(KernelPolicy::default()),
            max_batch: 2,
            verify: true,
        };
        let compiled = driver::compile(graph, &options)?;
        let model = runtime::Model::from_bytes(&compiled.bytes)?;
        let (input, want) = golden_io(name)?;
        let got = model.session().run(&input, 2)?.to_vec();
        let error = ir::interp::relative_error(&got, &want);
        eprintln!("{name}.onnx: relative error {error:.2e} against PyTorch float64");
        if error.is_nan() || error >= TOLERANCE {
            bail!("{name}.onnx: relative error {error:.3e} is not below {TOLERANCE:e}");
        }
    }
    Ok(())
}

/// The smallest golden export, read once.
fn small() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| std::fs::read(golden("sparsenet-40-24.onnx")).unwrap_or_default())
}

fn small_model() -> Result<proto::ModelProto> {
    Ok(proto::ModelProto::decode(small())?)
}

fn graph_of(m: &mut proto::ModelProto) -> Result<&mut proto::GraphProto> {
    m.graph.as_mut().context("graph")
}

fn import_err(m: &proto::ModelProto) -> Result<String> {
    match onnx::import(&m.encode_to_vec(), "m") {
        Ok(_) => bail!("the hostile model imported"),
        Err(e) => Ok(e.to_string()),
    }
}

#[test]
fn the_unmodified_small_export_imports() -> Result<()> {
    assert!(!small().is_empty(), "golden file present");
    onnx::import(small(), "m")?;
    Ok(())
}

#[test]
fn truncated_files_are_errors() {
    let bytes = small();
    // Inside the graph (it spans almost the whole file): never a complete model.
    for cut in [
        1,
        10,
        100,
        1000,
        bytes.len() / 3,
        bytes.len() / 2,
        bytes.len() - 1000,
    ] {
        assert!(onnx::import(&bytes[..cut], "m").is_err(), "cut at {cut}");
    }
}

#[test]
fn a_cycle_is_an_error_naming_a_node() -> Result<()> {
    let mut m = small_model()?;
    let g = graph_of(&mut m)?;
    // The stem convolution reads the output of the last concatenation.
    let late = g
        .node
        .iter()
        .rev()
        .find(|n| n.op_type() == "Concat")
        .map(|n| n.output[0].clone())
        .context("a concat")?;
    g.node[0].input[0] = late;
    let e = import_err(&m)?;
    assert_eq!(
        e,
        "the graph has a cycle through node `/features/conv0/Conv` (Conv)"
    );
    Ok(())
}

#[test]
fn a_missing_initializer_is_an_error_naming_the_node() -> Result<()> {
    let mut m = small_model()?;
    let g = graph_of(&mut m)?;
    g.initializer
        .retain(|t| t.name() != "features.dense-stage-1.block-3.bn1.running_var");
    let e = import_err(&m)?;
    assert_eq!(
        e,
        "node `/features/dense-stage-1/block-3/bn1/BatchNormalization` (BatchNormalization): \
         reads `features.dense-stage-1.block-3.bn1.running_var`, which no node, initializer or \
         graph input defines"
    );
    Ok(())
}

#[test]
fn a_wrong_initializer_size_is_an_error() -> Result<()> {
    let mut m = small_model()?;
    let g = graph_of(&mut m)?;
    let t = g
        .initializer
        .iter_mut()
        .find(|t| t.name() == "features.conv0.weight")
        .context("conv0")?;
    if let Some(raw) = t.raw_data.as_mut() {
        raw.truncate(raw.len() - 4);
    }
    let e = import_err(&m)?;
    assert_eq!(
        e,
        "node `/features/conv0/Conv` (Conv): initializer `features.conv0.weight`: dims \
         [48, 3, 3, 3] need 1296 elements, but the tensor holds 5180 bytes of float32"
    );
    // Right size, wrong shape for the layer: the IR's shape check names the parameter.
    let mut m = small_model()?;
    let g = graph_of(&mut m)?;
    let t = g
        .initializer
        .iter_mut()
        .find(|t| t.name() == "features.conv0.weight")
        .context("conv0")?;
    t.dims = vec![144, 1, 3, 3];
    let e = import_err(&m)?;
    assert!(
        e.contains("`features.conv0.weight` has shape [144, 1, 3, 3]"),
        "{e}"
    );
    Ok(())
}

#[test]
fn absurd_dimensions_are_errors_without_allocation() -> Result<()> {
    let mut m = small_model()?;
    let g = graph_of(&mut m)?;
    let t = g
        .initializer
        .iter_mut()
        .find(|t| t.name() == "features.conv0.weight")
        .context("conv0")?;
    t.dims = vec![1 << 40, 1 << 20, 3, 3];
    let e = import_err(&m)?;
    assert!(e.contains("overflow") || e.contains("need"), "{e}");

    let mut m = small_model()?;
    set_input_dim(
        &mut m,
        2,
        proto::tensor_shape_proto::dimension::Value::DimValue(1 << 40),
    )?;
    assert_eq!(
        import_err(&m)?,
        "graph input `input`: height 1099511627776 out of range (1 to 1048576)"
    );
    Ok(())
}

fn set_input_dim(
    m: &mut proto::ModelProto,
    k: usize,
    v: proto::tensor_shape_proto::dimension::Value,
) -> Result<()> {
    let g = graph_of(m)?;
    let Some(proto::type_proto::Value::TensorType(t)) =
        g.input[0].r#type.as_mut().and_then(|t| t.value.as_mut())
    else {
        bail!("input type");
    };
    t.shape.as_mut().context("shape")?.dim[k].value = Some(v);
    Ok(())
}

/// Three unsupported models and what they get (docs/onnx.md quotes them).
#[test]
fn unsupported_models_get_errors_naming_node_op_and_reason() -> Result<()> {
    // An op outside the supported set.
    let mut m = small_model()?;
    let g = graph_of(&mut m)?;
    let relu = g
        .node
        .iter_mut()
        .find(|n| n.op_type() == "Relu")
        .context("relu")?;
    relu.op_type = Some("LeakyRelu".into());
    assert_eq!(
        import_err(&m)?,
        "node `/features/dense-stage-0/block-1/relu1/Relu` (LeakyRelu): op `LeakyRelu` is not \
         supported (docs/onnx.md lists the supported ops)"
    );
    // A dynamic spatial size.
    let mut m = small_model()?;
    set_input_dim(
        &mut m,
        2,
        proto::tensor_shape_proto::dimension::Value::DimParam("height".into()),
    )?;
    assert_eq!(
        import_err(&m)?,
        "graph input `input`: height is the dynamic dimension `height`; sparsec compiles a \
         fixed C, H and W (export with a fixed input size)"
    );
    // An attribute it cannot honour.
    let mut m = small_model()?;
    let g = graph_of(&mut m)?;
    let conv = g
        .node
        .iter_mut()
        .find(|n| n.op_type() == "Conv")
        .context("conv")?;
    for a in &mut conv.attribute {
        if a.name() == "dilations" {
            a.ints = vec![2, 2];
        }
    }
    assert_eq!(
        import_err(&m)?,
        "node `/features/conv0/Conv` (Conv): dilations [2, 2] are not supported (only 1)"
    );
    Ok(())
}

#[test]
fn a_truncated_file_through_the_driver_names_the_path() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("sparsec-onnx-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("cut.onnx");
    std::fs::write(&path, &small()[..small().len() / 2])?;
    let e = match driver::load(&path) {
        Ok(_) => bail!("imported"),
        Err(e) => e.to_string(),
    };
    std::fs::remove_dir_all(&dir)?;
    assert!(
        e.starts_with("cannot import `") && e.contains("cut.onnx`: not a valid ONNX protobuf"),
        "{e}"
    );
    Ok(())
}

/// A mutation of the file's bytes.
#[derive(Clone, Debug)]
enum Mutation {
    Flip {
        at: usize,
        bit: u8,
    },
    Truncate {
        at: usize,
    },
    /// Copies `len` bytes from `from` over `to` (a splice of the file with itself).
    Splice {
        from: usize,
        to: usize,
        len: usize,
    },
    /// A byte set to a value, a header byte (the first 4 KiB hold the graph's first nodes).
    Set {
        at: usize,
        value: u8,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    // Positions as fractions of the file, so every region is reached.
    let pos = 0.0f64..1.0;
    prop_oneof![
        (pos.clone(), 0u8..8).prop_map(|(p, bit)| Mutation::Flip {
            at: (p * 1e9) as usize,
            bit
        }),
        pos.clone().prop_map(|p| Mutation::Truncate {
            at: (p * 1e9) as usize
        }),
        (pos.clone(), pos.clone(), 1usize..64).prop_map(|(a, b, len)| Mutation::Splice {
            from: (a * 1e9) as usize,
            to: (b * 1e9) as usize,
            len
        }),
        (0usize..4096, any::<u8>()).prop_map(|(at, value)| Mutation::Set { at, value }),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    let n = bytes.len();
    let scale = |x: usize| x * n / 1_000_000_000;
    match *m {
        Mutation::Flip { at, bit } => {
            let at = scale(at).min(n - 1);
            bytes[at] ^= 1 << bit;
        }
        Mutation::Truncate { at } => bytes.truncate(scale(at)),
        Mutation::Splice { from, to, len } => {
            let (from, to) = (scale(from), scale(to));
            let len = len.min(n - from).min(n - to);
            let piece = bytes[from..from + len].to_vec();
            bytes[to..to + len].copy_from_slice(&piece);
        }
        Mutation::Set { at, value } => {
            let at = at.min(n - 1);
            bytes[at] = value;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    /// Decoding and importing a mutant ends in a graph that verifies or in an error; never a
    /// panic (proptest fails on one) and never an allocation beyond the file's size.
    #[test]
    fn mutants_import_or_fail_cleanly(ms in proptest::collection::vec(mutation(), 1..4)) {
        let mut bytes = small().to_vec();
        for m in &ms {
            apply(&mut bytes, m);
        }
        match onnx::import(&bytes, "m") {
            Ok(graph) => prop_assert!(ir::verify::verify(&graph).is_ok()),
            Err(e) => {
                let text = e.to_string();
                prop_assert!(!text.is_empty());
                if let OnnxError::Node { node, op_type, .. } = &e {
                    prop_assert!(!node.is_empty() || !op_type.is_empty());
                }
            }
        }
    }
}

fn int_const(name: &str, dims: Vec<i64>, values: Vec<i64>) -> proto::NodeProto {
    proto::NodeProto {
        op_type: Some("Constant".into()),
        output: vec![name.into()],
        attribute: vec![proto::AttributeProto {
            name: Some("value".into()),
            r#type: Some(proto::attribute_proto::AttributeType::Tensor as i32),
            t: Some(proto::TensorProto {
                dims,
                data_type: Some(proto::tensor_proto::DataType::Int64 as i32),
                int64_data: values,
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn node(
    op: &str,
    inputs: &[&str],
    output: &str,
    attrs: Vec<proto::AttributeProto>,
) -> proto::NodeProto {
    proto::NodeProto {
        op_type: Some(op.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute: attrs,
        ..Default::default()
    }
}

fn int_attr(name: &str, v: i64) -> proto::AttributeProto {
    proto::AttributeProto {
        name: Some(name.into()),
        r#type: Some(proto::attribute_proto::AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

/// The small export with its `Flatten` written as `x.view(x.size(0), *tail)`.
fn with_view(tail: Vec<i64>) -> Result<proto::ModelProto> {
    let mut m = small_model()?;
    let g = graph_of(&mut m)?;
    let at = g
        .node
        .iter()
        .position(|n| n.op_type() == "Flatten")
        .context("flatten")?;
    let flatten = g.node.remove(at);
    let (x, y) = (flatten.input[0].as_str(), flatten.output[0].as_str());
    let plumbing = vec![
        node("Shape", &[x], "s", vec![]),
        int_const("zero", vec![], vec![0]),
        node("Gather", &["s", "zero"], "b", vec![int_attr("axis", 0)]),
        int_const("axes", vec![1], vec![0]),
        node("Unsqueeze", &["b", "axes"], "b1", vec![]),
        int_const("tail", vec![tail.len() as i64], tail),
        node(
            "Concat",
            &["b1", "tail"],
            "target",
            vec![int_attr("axis", 0)],
        ),
        node("Reshape", &[x, "target"], y, vec![]),
    ];
    g.node.splice(at..at, plumbing);
    Ok(m)
}

#[test]
fn hostile_reshape_targets_are_errors() -> Result<()> {
    for tail in [
        vec![i64::MAX, 4, -1],
        vec![i64::MAX, i64::MAX],
        vec![-1, -1],
        vec![7],
    ] {
        let e = import_err(&with_view(tail.clone())?)?;
        assert!(
            e.starts_with("node `#") && e.contains("(Reshape): reshaping [N,96,1,1] to"),
            "{tail:?}: {e}"
        );
    }
    Ok(())
}

/// `x.view(x.size(0), -1)` as PyTorch exports it (Shape, Gather, Unsqueeze, Concat, Reshape)
/// instead of `Flatten`, and `MatMul` + `Add` instead of `Gemm`: the same IR.
#[test]
fn shape_plumbing_and_matmul_add_fold_to_the_same_graph() -> Result<()> {
    let want = ir::print::print(&onnx::import(small(), "m")?);
    let mut m = with_view(vec![-1])?;
    let g = graph_of(&mut m)?;
    // Gemm(y, W, B, transB=1) → MatMul(y, Wᵀ) + B, with Wᵀ under W's name.
    let gemm = g
        .node
        .iter()
        .position(|n| n.op_type() == "Gemm")
        .context("gemm")?;
    let gemm = g.node.remove(gemm);
    let (w, b) = (gemm.input[1].clone(), gemm.input[2].clone());
    let t = g
        .initializer
        .iter_mut()
        .find(|t| t.name() == w)
        .context("W")?;
    let (rows, cols) = (t.dims[0] as usize, t.dims[1] as usize);
    let raw = t.raw_data.clone().context("raw")?;
    let mut transposed = Vec::with_capacity(raw.len());
    for c in 0..cols {
        for r in 0..rows {
            let k = 4 * (r * cols + c);
            transposed.extend_from_slice(&raw[k..k + 4]);
        }
    }
    t.raw_data = Some(transposed);
    t.dims = vec![cols as i64, rows as i64];
    g.node
        .push(node("MatMul", &[&gemm.input[0], &w], "mm", vec![]));
    g.node
        .push(node("Add", &["mm", &b], &gemm.output[0], vec![]));
    let got = ir::print::print(&onnx::import(&m.encode_to_vec(), "m")?);
    assert_eq!(first_difference(&got, &want), None);
    Ok(())
}

/// An initializer read by several nodes becomes one parameter per use (`name#2`, ...), all
/// sharing one copy of the data: a file that reuses a tensor many times cannot make the import
/// allocate many times its size.
#[test]
fn a_reused_initializer_shares_its_data() -> Result<()> {
    let mut m = small_model()?;
    let g = graph_of(&mut m)?;
    let w1 = "features.dense-stage-0.block-1.conv1.weight";
    let conv3 = g
        .node
        .iter_mut()
        .find(|n| n.name() == "/features/dense-stage-0/block-3/conv1/Conv")
        .context("block-3 conv")?;
    conv3.input[1] = w1.into();
    let graph = onnx::import(&m.encode_to_vec(), "m")?;
    let first = graph.params.by_name(w1).context("first use")?;
    let second = graph
        .params
        .by_name(&format!("{w1}#2"))
        .context("second use")?;
    let (a, b) = (graph.params.get(first), graph.params.get(second));
    assert_eq!(a.shape, b.shape);
    match (&a.data, &b.data) {
        (Some(x), Some(y)) => assert!(std::sync::Arc::ptr_eq(x, y), "one shared copy"),
        _ => bail!("data not bound"),
    }
    Ok(())
}

/// A structural edit of the decoded model (what byte mutations rarely reach).
#[derive(Clone, Debug)]
enum Edit {
    /// Sets attribute `attr` (modulo the node's count) of node `node` to an extreme value.
    Attribute {
        node: usize,
        attr: usize,
        value: i64,
    },
    /// Sets a dimension of initializer `init`.
    Dims { init: usize, dim: usize, value: i64 },
    /// Gives node `node` another supported op type.
    OpType { node: usize, op: usize },
    /// Makes input `input` of node `node` read the output of node `from`, or an initializer.
    Rewire {
        node: usize,
        input: usize,
        from: usize,
        init: bool,
    },
    /// Sets a dimension of the graph input.
    InputDim { dim: usize, value: i64 },
}

const EXTREMES: [i64; 9] = [i64::MIN, -3, -1, 0, 1, 2, 7, 1 << 40, i64::MAX];
const OPS: [&str; 23] = [
    "Conv",
    "ReduceMean",
    "BatchNormalization",
    "Relu",
    "Concat",
    "Add",
    "Sum",
    "AveragePool",
    "MaxPool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Flatten",
    "Reshape",
    "Gemm",
    "MatMul",
    "Identity",
    "Dropout",
    "Constant",
    "Shape",
    "Gather",
    "Unsqueeze",
    "Squeeze",
    "Cast",
];

fn edit() -> impl Strategy<Value = Edit> {
    let big = 0usize..10_000;
    let extreme = proptest::sample::select(EXTREMES.to_vec());
    prop_oneof![
        (big.clone(), 0usize..8, extreme.clone()).prop_map(|(node, attr, value)| Edit::Attribute {
            node,
            attr,
            value
        }),
        (big.clone(), 0usize..4, extreme.clone()).prop_map(|(init, dim, value)| Edit::Dims {
            init,
            dim,
            value
        }),
        (big.clone(), 0..OPS.len()).prop_map(|(node, op)| Edit::OpType { node, op }),
        (big.clone(), 0usize..5, big, any::<bool>()).prop_map(|(node, input, from, init)| {
            Edit::Rewire {
                node,
                input,
                from,
                init,
            }
        }),
        (0usize..4, extreme).prop_map(|(dim, value)| Edit::InputDim { dim, value }),
    ]
}

fn apply_edit(m: &mut proto::ModelProto, e: &Edit) -> Result<()> {
    let g = graph_of(m)?;
    let (nodes, inits) = (g.node.len().max(1), g.initializer.len().max(1));
    match *e {
        Edit::Attribute { node, attr, value } => {
            if let Some(n) = g.node.get_mut(node % nodes)
                && !n.attribute.is_empty()
            {
                let k = attr % n.attribute.len();
                let a = &mut n.attribute[k];
                if a.i.is_some() {
                    a.i = Some(value);
                } else if let Some(x) = a.ints.first_mut() {
                    *x = value;
                }
            }
        }
        Edit::Dims { init, dim, value } => {
            if let Some(t) = g.initializer.get_mut(init % inits)
                && !t.dims.is_empty()
            {
                let k = dim % t.dims.len();
                t.dims[k] = value;
            }
        }
        Edit::OpType { node, op } => {
            if let Some(n) = g.node.get_mut(node % nodes) {
                n.op_type = Some(OPS[op].into());
            }
        }
        Edit::Rewire {
            node,
            input,
            from,
            init,
        } => {
            let name = if init {
                g.initializer
                    .get(from % inits)
                    .map(|t| t.name().to_string())
            } else {
                g.node
                    .get(from % nodes)
                    .and_then(|n| n.output.first().cloned())
            };
            if let (Some(name), Some(n)) = (name, g.node.get_mut(node % nodes))
                && !n.input.is_empty()
            {
                let k = input % n.input.len();
                n.input[k] = name;
            }
        }
        Edit::InputDim { dim, value } => {
            set_input_dim(
                m,
                dim,
                proto::tensor_shape_proto::dimension::Value::DimValue(value),
            )?;
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Structural edits (extreme attributes and dims, other op types, rewired inputs) import
    /// to a graph that verifies or to an error; never a panic.
    #[test]
    fn structural_edits_import_or_fail_cleanly(edits in proptest::collection::vec(edit(), 1..4)) {
        let mut m = small_model().map_err(|e| TestCaseError::fail(e.to_string()))?;
        for e in &edits {
            apply_edit(&mut m, e).map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        if let Ok(graph) = onnx::import(&m.encode_to_vec(), "m") {
            prop_assert!(ir::verify::verify(&graph).is_ok());
        }
    }
}

/// The small export's pool + `Flatten` head (an 8x8 `AveragePool` of the 8x8 map) replaced by
/// the nodes `head(x, y, c)` makes from the pool's input `x`, the flatten's output `y` and the
/// channel count `c`.
fn with_head(
    head: impl FnOnce(&str, &str, i64) -> Vec<proto::NodeProto>,
) -> Result<proto::ModelProto> {
    let mut m = small_model()?;
    let g = graph_of(&mut m)?;
    let flat = g
        .node
        .iter()
        .position(|n| n.op_type() == "Flatten")
        .context("flatten")?;
    let flatten = g.node.remove(flat);
    let gap = g
        .node
        .iter()
        .position(|n| n.output.first() == flatten.input.first())
        .context("pool")?;
    let pool = g.node.remove(gap);
    let gemm = g
        .node
        .iter()
        .find(|n| n.op_type() == "Gemm")
        .context("gemm")?;
    let w = g
        .initializer
        .iter()
        .find(|t| t.name() == gemm.input[1])
        .context("W")?;
    let c = w.dims[1];
    let nodes = head(&pool.input[0], &flatten.output[0], c);
    g.node.splice(gap..gap, nodes);
    Ok(m)
}

fn ints_attr(name: &str, v: Vec<i64>) -> proto::AttributeProto {
    proto::AttributeProto {
        name: Some(name.into()),
        r#type: Some(proto::attribute_proto::AttributeType::Ints as i32),
        ints: v,
        ..Default::default()
    }
}

/// `torch.onnx.export(..., dynamo=True)` writes `adaptive_avg_pool2d(x, 1)` + `flatten` as
/// `ReduceMean(x, axes=[-1, -2])` (axes an input since opset 18, `keepdims` 1) +
/// `Reshape(allowzero=1, [-1, C])`; opset 13 has the axes as an attribute, and `keepdims` 0
/// needs no reshape. Each imports as the legacy exporter's `GlobalAveragePool` + `Flatten`.
#[test]
fn reduce_mean_heads_import_as_global_average_pools() -> Result<()> {
    // The legacy exporter's form of the same head.
    let global = with_head(|x, y, _| {
        vec![
            node("GlobalAveragePool", &[x], "pooled", vec![]),
            node("Flatten", &["pooled"], y, vec![int_attr("axis", 1)]),
        ]
    })?;
    let want = ir::print::print(&onnx::import(&global.encode_to_vec(), "m")?);
    let dynamo = with_head(|x, y, c| {
        vec![
            int_const("axes", vec![2], vec![-1, -2]),
            node(
                "ReduceMean",
                &[x, "axes"],
                "mean",
                vec![int_attr("keepdims", 1)],
            ),
            int_const("target", vec![2], vec![-1, c]),
            node(
                "Reshape",
                &["mean", "target"],
                y,
                vec![int_attr("allowzero", 1)],
            ),
        ]
    })?;
    let opset13 = with_head(|x, y, _| {
        vec![node(
            "ReduceMean",
            &[x],
            y,
            vec![ints_attr("axes", vec![2, 3]), int_attr("keepdims", 0)],
        )]
    })?;
    for m in [dynamo, opset13] {
        let got = ir::print::print(&onnx::import(&m.encode_to_vec(), "m")?);
        assert_eq!(first_difference(&got, &want), None);
    }
    let channels = with_head(|x, y, _| {
        vec![node(
            "ReduceMean",
            &[x],
            y,
            vec![ints_attr("axes", vec![1]), int_attr("keepdims", 0)],
        )]
    })?;
    let e = import_err(&channels)?;
    assert!(
        e.ends_with(
            "(ReduceMean): reducing over axes [1] is not supported (only height and width, \
             [2, 3]: a global average pool)"
        ),
        "{e}"
    );
    Ok(())
}

/// The small export with every float initializer moved to the external file `data` (the
/// layout `torch.onnx.export(..., dynamo=True)` writes: `location`, `offset`, `length`), the
/// location of the first one replaced by `first_location` when given.
fn with_external_data(data: &str, first_location: Option<&str>) -> Result<(Vec<u8>, Vec<u8>)> {
    let mut m = small_model()?;
    let g = graph_of(&mut m)?;
    let mut bytes = Vec::new();
    let entry = |k: &str, v: String| proto::StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v),
    };
    for (i, t) in g.initializer.iter_mut().enumerate() {
        let Some(raw) = t.raw_data.take() else {
            continue;
        };
        while bytes.len() % 64 != 0 {
            bytes.push(0);
        }
        let location = match (i, first_location) {
            (0, Some(l)) => l.to_string(),
            _ => data.to_string(),
        };
        t.data_location = Some(proto::tensor_proto::DataLocation::External as i32);
        t.external_data = vec![
            entry("location", location),
            entry("offset", bytes.len().to_string()),
            entry("length", raw.len().to_string()),
        ];
        bytes.extend_from_slice(&raw);
    }
    Ok((m.encode_to_vec(), bytes))
}

/// A folder of its own under cargo's scratch space for integration tests.
fn scratch(name: &str) -> Result<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[test]
fn external_data_beside_the_model_imports_like_inline_data() -> Result<()> {
    let want = onnx::import(small(), "m")?;
    let dir = scratch("onnx-external-data")?;
    let (model, data) = with_external_data("m.onnx.data", None)?;
    std::fs::write(dir.join("m.onnx"), &model)?;
    std::fs::write(dir.join("m.onnx.data"), &data)?;
    let got = driver::load(&dir.join("m.onnx"))?;
    assert_eq!(
        first_difference(&ir::print::print(&got), &ir::print::print(&want)),
        None
    );
    for (_, p) in want.params.iter() {
        let q = got.params.by_name(&p.name).context("same names")?;
        assert_eq!(p.data, got.params.get(q).data, "{}", p.name);
    }
    // The bytes alone do not say where the data is.
    let e = onnx::import(&model, "m")
        .err()
        .context("no folder")?
        .to_string();
    assert!(
        e.contains("its data is in the external file `m.onnx.data`, and the model was not read from a folder"),
        "{e}"
    );
    Ok(())
}

#[test]
fn external_data_outside_the_folder_or_the_file_is_an_error() -> Result<()> {
    let dir = scratch("onnx-external-hostile")?;
    let cases = [
        (
            Some("../m.onnx.data"),
            "is not a plain relative path inside the model's folder",
        ),
        (
            Some("/etc/hostname"),
            "is not a plain relative path inside the model's folder",
        ),
        (Some("missing.data"), "external data file"),
        (Some("."), "is not a regular file"),
        (None, "lies outside `m.onnx.data`"),
    ];
    for (location, want) in cases {
        let (model, mut data) = with_external_data("m.onnx.data", location)?;
        if location.is_none() {
            data.truncate(data.len() - 1);
        }
        std::fs::write(dir.join("m.onnx"), &model)?;
        std::fs::write(dir.join("m.onnx.data"), &data)?;
        let e = match driver::load(&dir.join("m.onnx")) {
            Ok(_) => bail!("{location:?} imported"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains(want) && e.contains("initializer `"),
            "{location:?}: {e}"
        );
    }
    Ok(())
}

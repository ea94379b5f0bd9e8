//! Weights: binding tensor data to a graph's parameter table.
//!
//! Owns reading safetensors checkpoints ([`bind_safetensors`], [`load_tensors`]), binding
//! tensors already in memory ([`bind_tensors`], for the Python binding) and the
//! deterministic "trained-looking" random weights used when no checkpoint is at hand
//! ([`bind_random`]). Binding is by name: every parameter the model declares (all but
//! [`ParamKind::Derived`] ones, which passes compute) must be in the file with the exact shape
//! and dtype F32, and the file may hold nothing else (except PyTorch's `num_batches_tracked`
//! counters). A file that does not fit binds nothing.
//!
//! Must not change the graph's structure or any parameter's name, shape or kind, and must not
//! touch derived parameters: it only fills in `data`. Runs after lowering, before any pass that
//! derives parameters from bound ones.

use ir::{Graph, ParamKind};
use safetensors::{Dtype, SafeTensors};
use std::collections::HashSet;
use std::fmt;

/// Tensor names with their shapes, as listed in an error (the first few, then a count).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorList(pub Vec<(String, Vec<usize>)>);

impl TensorList {
    /// How many names an error message spells out.
    const SHOWN: usize = 5;
}

impl fmt::Display for TensorList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, shape)) in self.0.iter().take(Self::SHOWN).enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "`{name}` {shape:?}")?;
        }
        if self.0.len() > Self::SHOWN {
            write!(f, " and {} more", self.0.len() - Self::SHOWN)?;
        }
        Ok(())
    }
}

/// Why weights could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("not a valid safetensors file: {0}")]
    Parse(#[from] safetensors::SafeTensorError),
    #[error(
        "{} tensor(s) the model needs are missing from the weights: {missing}{}",
        missing.0.len(),
        unused_note(unexpected)
    )]
    Missing {
        /// Names and the shapes the model expects.
        missing: TensorList,
        /// Tensors in the file the model does not use (often the same tensors under other
        /// names).
        unexpected: TensorList,
    },
    #[error(
        "the weights hold {} tensor(s) the model does not use: {unexpected}",
        unexpected.0.len()
    )]
    Unexpected { unexpected: TensorList },
    #[error("tensor `{name}` has shape {found:?}, but the model expects {expected:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor `{name}` has shape {shape:?} but holds {len} values")]
    Length {
        name: String,
        shape: Vec<usize>,
        len: usize,
    },
    #[error("tensor `{name}` has dtype {found}, but only F32 is supported")]
    Dtype { name: String, found: String },
    #[error("tensor `{name}` holds a non-finite value ({value}) at flat index {index}")]
    NotFinite {
        name: String,
        index: usize,
        value: f32,
    },
    /// A batch norm's variance below zero: `1 / sqrt(var + eps)` would be NaN in every logit.
    #[error(
        "tensor `{name}` is a batch-norm running variance, but holds {value} (negative) at flat \
         index {index}: a variance is at least 0"
    )]
    NegativeVariance {
        name: String,
        index: usize,
        value: f32,
    },
}

fn unused_note(unexpected: &TensorList) -> String {
    if unexpected.0.is_empty() {
        String::new()
    } else {
        format!(
            "; the file also holds {} tensor(s) the model does not use: {unexpected}",
            unexpected.0.len()
        )
    }
}

/// Binds every non-derived parameter of `graph` from a safetensors file. Checks everything
/// before binding anything: on error the graph is unchanged.
pub fn bind_safetensors(graph: &mut Graph, bytes: &[u8]) -> Result<(), WeightsError> {
    let file = SafeTensors::deserialize(bytes)?;
    bind_checked(
        graph,
        |name| {
            let view = file.tensor(name).ok()?;
            let data = if view.dtype() == Dtype::F32 {
                Ok(f32s(view.data()))
            } else {
                Err(view.dtype().to_string())
            };
            Some((view.shape().to_vec(), data))
        },
        file.iter()
            .map(|(name, view)| (name.to_string(), view.shape().to_vec())),
    )
}

/// Binds every non-derived parameter of `graph` from tensors already in memory (`(name, shape,
/// row-major data)`, e.g. a PyTorch `state_dict` or a dict of numpy arrays handed over by the
/// Python binding), with the same checks as [`bind_safetensors`]: every parameter present
/// with its exact shape, finite, nothing unexpected (but `num_batches_tracked`); on error the
/// graph is unchanged. A tensor whose data length does not match its shape is a shape error.
pub fn bind_tensors(graph: &mut Graph, tensors: &[NamedTensor]) -> Result<(), WeightsError> {
    let by_name: std::collections::HashMap<&str, &NamedTensor> =
        tensors.iter().map(|t| (t.0.as_str(), t)).collect();
    for (name, shape, data) in tensors {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(WeightsError::Length {
                name: name.clone(),
                shape: shape.clone(),
                len: data.len(),
            });
        }
    }
    bind_checked(
        graph,
        |name| {
            by_name
                .get(name)
                .map(|(_, shape, data)| (shape.clone(), Ok(data.clone())))
        },
        tensors
            .iter()
            .map(|(name, shape, _)| (name.clone(), shape.clone())),
    )
}

/// The checks shared by every source: `get(name)` gives a tensor's shape and its F32 data (or
/// the name of its other dtype); `all` lists every tensor of the source.
fn bind_checked(
    graph: &mut Graph,
    get: impl Fn(&str) -> Option<(Vec<usize>, Result<Vec<f32>, String>)>,
    all: impl Iterator<Item = (String, Vec<usize>)>,
) -> Result<(), WeightsError> {
    let mut missing = Vec::new();
    let mut bound = Vec::new();
    let mut wanted = HashSet::new();
    for (id, p) in graph.params.iter() {
        if p.kind == ParamKind::Derived {
            continue;
        }
        wanted.insert(p.name.as_str());
        let Some((shape, data)) = get(&p.name) else {
            missing.push((p.name.clone(), p.shape.clone()));
            continue;
        };
        let data = data.map_err(|found| WeightsError::Dtype {
            name: p.name.clone(),
            found,
        })?;
        if shape != p.shape {
            return Err(WeightsError::Shape {
                name: p.name.clone(),
                expected: p.shape.clone(),
                found: shape,
            });
        }
        if let Some((index, &value)) = data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(WeightsError::NotFinite {
                name: p.name.clone(),
                index,
                value,
            });
        }
        if p.kind == ParamKind::BnRunningVar
            && let Some((index, &value)) = data.iter().enumerate().find(|(_, v)| **v < 0.0)
        {
            return Err(WeightsError::NegativeVariance {
                name: p.name.clone(),
                index,
                value,
            });
        }
        bound.push((id, data));
    }
    let mut unexpected: Vec<(String, Vec<usize>)> = all
        .filter(|(name, _)| {
            !wanted.contains(name.as_str()) && !name.ends_with("num_batches_tracked")
        })
        .collect();
    unexpected.sort();
    if !missing.is_empty() {
        return Err(WeightsError::Missing {
            missing: TensorList(missing),
            unexpected: TensorList(unexpected),
        });
    }
    if !unexpected.is_empty() {
        return Err(WeightsError::Unexpected {
            unexpected: TensorList(unexpected),
        });
    }
    for (id, data) in bound {
        graph.params.get_mut(id).data = Some(data.into());
    }
    Ok(())
}

/// A tensor read from a file: `(name, shape, row-major data)`.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// Every tensor of a safetensors file as `(name, shape, data)`, sorted by name. All must be F32.
/// For reading inputs and reference outputs (e.g. the golden `NAME.io.safetensors`).
pub fn load_tensors(bytes: &[u8]) -> Result<Vec<NamedTensor>, WeightsError> {
    let file = SafeTensors::deserialize(bytes)?;
    let mut out = Vec::with_capacity(file.len());
    for (name, view) in file.iter() {
        if view.dtype() != Dtype::F32 {
            return Err(WeightsError::Dtype {
                name: name.to_string(),
                found: view.dtype().to_string(),
            });
        }
        out.push((name.to_string(), view.shape().to_vec(), f32s(view.data())));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Little-endian float32 bytes to values (the data may be unaligned, so no casting in place).
/// The caller checked the dtype; safetensors checked that the length matches the shape.
fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Binds deterministic random "trained-looking" weights to every non-derived parameter:
/// weights Kaiming-normal (`std = sqrt(2 / fan_in)`, fan-in = all dimensions but the first),
/// biases U(-0.05, 0.05), BN gamma U(0.5, 1.5), beta U(-0.2, 0.2), running mean U(-0.2, 0.2),
/// running var U(0.5, 1.5). Each parameter's stream is seeded from `seed` and its name, so a
/// parameter gets the same values in any graph that has it.
pub fn bind_random(graph: &mut Graph, seed: u64) {
    let ids: Vec<_> = graph
        .params
        .iter()
        .filter(|(_, p)| p.kind != ParamKind::Derived)
        .map(|(id, _)| id)
        .collect();
    for id in ids {
        let p = graph.params.get_mut(id);
        let mut rng = Rng::new(seed ^ fnv1a(p.name.as_bytes()));
        let n = p.shape.iter().product::<usize>();
        let uniform = |rng: &mut Rng, lo: f64, hi: f64| -> Vec<f32> {
            (0..n)
                .map(|_| (lo + (hi - lo) * rng.unit()) as f32)
                .collect()
        };
        let data = match p.kind {
            ParamKind::Weight => {
                let fan_in = p.shape.iter().skip(1).product::<usize>().max(1);
                let std = (2.0 / fan_in as f64).sqrt();
                (0..n).map(|_| (std * rng.normal()) as f32).collect()
            }
            ParamKind::Bias => uniform(&mut rng, -0.05, 0.05),
            ParamKind::BnGamma | ParamKind::BnRunningVar => uniform(&mut rng, 0.5, 1.5),
            ParamKind::BnBeta | ParamKind::BnRunningMean => uniform(&mut rng, -0.2, 0.2),
            // Filtered out above: derived parameters are computed by passes.
            ParamKind::Derived => continue,
        };
        p.data = Some(data.into());
    }
}

/// 64-bit FNV-1a, to give each parameter name its own stream.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// splitmix64 with Box-Muller normals: tiny, deterministic on every platform.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), 53 random bits.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller; `1 - unit()` lies in (0, 1], so the log is finite).
    fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.unit();
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const MODEL: &str = "model \"tiny\"\ninput [3, 4, 4]\n\
        stem { conv0 = conv(2, kernel = 3, pad = 1) }\n\
        head { norm = batch_norm()\n relu()\n global_avg_pool()\n fc = linear(5) }\n";

    fn graph() -> Result<Graph, String> {
        let (graph, diagnostics) = crate::compile_source("tiny", MODEL);
        graph.ok_or_else(|| format!("{diagnostics:?}"))
    }

    /// The tensors the tiny model needs, with deterministic contents.
    fn tensors() -> Vec<(String, Vec<usize>)> {
        [
            ("features.conv0.weight", vec![2, 3, 3, 3]),
            ("norm.weight", vec![2]),
            ("norm.bias", vec![2]),
            ("norm.running_mean", vec![2]),
            ("norm.running_var", vec![2]),
            ("fc.weight", vec![5, 2]),
            ("fc.bias", vec![5]),
        ]
        .into_iter()
        .map(|(n, s)| (n.to_string(), s))
        .collect()
    }

    fn file(tensors: &[(String, Vec<usize>)]) -> Result<Vec<u8>, safetensors::SafeTensorError> {
        let bytes: Vec<Vec<u8>> = tensors
            .iter()
            .map(|(_, shape)| {
                let n: usize = shape.iter().product();
                (0..n)
                    .flat_map(|i| (i as f32 * 0.25).to_le_bytes())
                    .collect()
            })
            .collect();
        let views = tensors
            .iter()
            .zip(&bytes)
            .map(|((name, shape), b)| {
                Ok((name.clone(), TensorView::new(Dtype::F32, shape.clone(), b)?))
            })
            .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
        safetensors::serialize(views, None)
    }

    #[test]
    fn binds_a_complete_file() -> TestResult {
        let mut g = graph()?;
        let mut all = tensors();
        all.push(("norm.num_batches_tracked".into(), vec![]));
        bind_safetensors(&mut g, &file(&all)?)?;
        assert!(g.params.all_bound());
        let id = g.params.by_name("fc.bias").ok_or("no fc.bias")?;
        assert_eq!(g.params.data(id), Some(&[0.0, 0.25, 0.5, 0.75, 1.0][..]));
        Ok(())
    }

    #[test]
    fn reports_every_missing_tensor_and_binds_nothing() -> TestResult {
        let mut g = graph()?;
        let mut some = tensors();
        some.retain(|(n, _)| !n.starts_with("norm.running"));
        some.push(("norm.mean".into(), vec![2]));
        match bind_safetensors(&mut g, &file(&some)?) {
            Err(WeightsError::Missing {
                missing,
                unexpected,
            }) => {
                let names: Vec<&str> = missing.0.iter().map(|(n, _)| n.as_str()).collect();
                assert_eq!(names, ["norm.running_mean", "norm.running_var"]);
                assert_eq!(unexpected.0, [("norm.mean".to_string(), vec![2])]);
            }
            other => return Err(format!("expected Missing, got {other:?}").into()),
        }
        assert!(g.params.iter().all(|(_, p)| p.data.is_none()));
        Ok(())
    }

    #[test]
    fn rejects_an_extra_tensor() -> TestResult {
        let mut g = graph()?;
        let mut all = tensors();
        all.push(("fc2.weight".into(), vec![3, 5]));
        let err = bind_safetensors(&mut g, &file(&all)?).err();
        let Some(WeightsError::Unexpected { unexpected }) = &err else {
            return Err(format!("expected Unexpected, got {err:?}").into());
        };
        assert_eq!(unexpected.0, [("fc2.weight".to_string(), vec![3, 5])]);
        let message = err.map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(
            message,
            "the weights hold 1 tensor(s) the model does not use: `fc2.weight` [3, 5]"
        );
        Ok(())
    }

    #[test]
    fn rejects_a_wrong_shape_naming_both() -> TestResult {
        let mut g = graph()?;
        let mut all = tensors();
        all[0].1 = vec![4, 3, 3, 3];
        let err = bind_safetensors(&mut g, &file(&all)?).err();
        let message = err.as_ref().map(|e| e.to_string()).unwrap_or_default();
        assert!(matches!(err, Some(WeightsError::Shape { .. })), "{err:?}");
        assert_eq!(
            message,
            "tensor `features.conv0.weight` has shape [4, 3, 3, 3], but the model expects [2, 3, 3, 3]"
        );
        Ok(())
    }

    #[test]
    fn rejects_another_dtype_and_non_finite_values() -> TestResult {
        let mut g = graph()?;
        let bytes = [0u8; 16];
        let wrong = vec![(
            "x".to_string(),
            TensorView::new(Dtype::F64, vec![2], &bytes)?,
        )];
        assert!(matches!(
            load_tensors(&safetensors::serialize(wrong, None)?),
            Err(WeightsError::Dtype { .. })
        ));
        let mut all = tensors();
        all.retain(|(n, _)| n != "fc.bias");
        let mut bytes = file(&all)?;
        let nan = f32::NAN.to_le_bytes();
        let extra: Vec<u8> = [0.0f32, 1.0, 2.0, 3.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .chain(nan)
            .collect();
        let mut views = Vec::new();
        let st = SafeTensors::deserialize(&bytes)?;
        for (name, view) in st.iter() {
            views.push((
                name.to_string(),
                TensorView::new(view.dtype(), view.shape().to_vec(), view.data())?,
            ));
        }
        views.push((
            "fc.bias".into(),
            TensorView::new(Dtype::F32, vec![5], &extra)?,
        ));
        bytes = safetensors::serialize(views, None)?;
        assert!(matches!(
            bind_safetensors(&mut g, &bytes),
            Err(WeightsError::NotFinite { index: 4, .. })
        ));
        assert!(matches!(
            bind_safetensors(&mut g, b"junk"),
            Err(WeightsError::Parse(_))
        ));
        Ok(())
    }

    /// The file of [`tensors`] with `name` replaced by `values`.
    fn file_with(name: &str, values: &[f32]) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
        let base = file(&tensors())?;
        let st = SafeTensors::deserialize(&base)?;
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut views = Vec::new();
        for (n, view) in st.iter() {
            let v = if n == name {
                TensorView::new(Dtype::F32, vec![values.len()], &data)?
            } else {
                TensorView::new(view.dtype(), view.shape().to_vec(), view.data())?
            };
            views.push((n.to_string(), v));
        }
        Ok(safetensors::serialize(views, None)?)
    }

    #[test]
    fn rejects_a_negative_or_non_finite_running_variance_naming_it() -> TestResult {
        let mut g = graph()?;
        let e = bind_safetensors(&mut g, &file_with("norm.running_var", &[1.0, -0.5])?);
        match e {
            Err(e @ WeightsError::NegativeVariance { .. }) => assert_eq!(
                e.to_string(),
                "tensor `norm.running_var` is a batch-norm running variance, but holds -0.5 \
                 (negative) at flat index 1: a variance is at least 0"
            ),
            other => panic!("expected NegativeVariance, got {other:?}"),
        }
        for bad in [f32::INFINITY, f32::NAN] {
            for name in ["norm.running_var", "norm.running_mean"] {
                assert!(matches!(
                    bind_safetensors(&mut g, &file_with(name, &[bad, 1.0])?),
                    Err(WeightsError::NotFinite { name: n, index: 0, .. }) if n == name
                ));
            }
        }
        // Zero is a valid variance (eps keeps the square root positive); nothing was bound
        // by the failures above.
        bind_safetensors(&mut g, &file_with("norm.running_var", &[0.0, 2.0])?)?;
        Ok(())
    }

    #[test]
    fn load_tensors_reads_names_shapes_and_values() -> TestResult {
        let all = tensors();
        let loaded = load_tensors(&file(&all)?)?;
        let names: Vec<&str> = loaded.iter().map(|(n, _, _)| n.as_str()).collect();
        let mut sorted: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
        let (_, shape, data) = &loaded[2];
        assert_eq!(
            (names[2], shape.as_slice()),
            ("features.conv0.weight", &[2, 3, 3, 3][..])
        );
        assert_eq!(data[..3], [0.0, 0.25, 0.5]);
        Ok(())
    }

    #[test]
    fn random_weights_are_deterministic_and_plausible() -> TestResult {
        let (mut a, mut b, mut c) = (graph()?, graph()?, graph()?);
        bind_random(&mut a, 7);
        bind_random(&mut b, 7);
        bind_random(&mut c, 8);
        assert!(a.params.all_bound());
        for ((_, pa), (_, pb)) in a.params.iter().zip(b.params.iter()) {
            assert_eq!(pa.data, pb.data, "{}", pa.name);
        }
        let w = |g: &Graph, name: &str| -> Result<Vec<f32>, String> {
            let id = g.params.by_name(name).ok_or(format!("no {name}"))?;
            Ok(g.params.data(id).unwrap_or_default().to_vec())
        };
        assert_ne!(
            w(&a, "features.conv0.weight")?,
            w(&c, "features.conv0.weight")?
        );
        assert!(
            w(&a, "norm.running_var")?
                .iter()
                .all(|v| (0.5..1.5).contains(v))
        );
        assert!(w(&a, "norm.bias")?.iter().all(|v| (-0.2..0.2).contains(v)));
        // Kaiming: std sqrt(2/27) ~ 0.27 over 54 values; a loose bound on the sample std.
        let conv = w(&a, "features.conv0.weight")?;
        let var = conv.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / conv.len() as f64;
        assert!((0.1..0.5).contains(&var.sqrt()), "{}", var.sqrt());
        Ok(())
    }

    /// `tensors()` as in-memory tensors with the same contents as `file`.
    fn in_memory(tensors: &[(String, Vec<usize>)]) -> Vec<NamedTensor> {
        tensors
            .iter()
            .map(|(name, shape)| {
                let n: usize = shape.iter().product();
                let data = (0..n).map(|i| i as f32 * 0.25).collect();
                (name.clone(), shape.clone(), data)
            })
            .collect()
    }

    #[test]
    fn binds_tensors_in_memory_like_a_file() -> TestResult {
        let mut from_file = graph()?;
        bind_safetensors(&mut from_file, &file(&tensors())?)?;
        let mut from_memory = graph()?;
        let mut all = in_memory(&tensors());
        all.push(("norm.num_batches_tracked".into(), vec![], vec![0.0]));
        bind_tensors(&mut from_memory, &all)?;
        assert!(from_memory.params.all_bound());
        for (id, p) in from_file.params.iter() {
            assert_eq!(
                from_memory.params.data(id),
                from_file.params.data(id),
                "{}",
                p.name
            );
        }
        Ok(())
    }

    #[test]
    fn in_memory_tensors_get_the_same_checks() -> TestResult {
        let mut g = graph()?;
        let mut some = in_memory(&tensors());
        some.retain(|(n, _, _)| n != "fc.bias");
        let err = bind_tensors(&mut g, &some).err();
        assert!(
            matches!(&err, Some(WeightsError::Missing { .. })),
            "{err:?}"
        );
        let mut extra = in_memory(&tensors());
        extra.push(("fc2.weight".into(), vec![1], vec![0.0]));
        let err = bind_tensors(&mut g, &extra).err();
        assert!(
            matches!(&err, Some(WeightsError::Unexpected { .. })),
            "{err:?}"
        );
        let mut shaped = in_memory(&tensors());
        shaped[0].1 = vec![2, 3, 9];
        let message = bind_tensors(&mut g, &shaped).err().map(|e| e.to_string());
        assert_eq!(
            message.as_deref(),
            Some(
                "tensor `features.conv0.weight` has shape [2, 3, 9], but the model expects [2, 3, 3, 3]"
            )
        );
        let mut short = in_memory(&tensors());
        short[6].2.pop();
        let message = bind_tensors(&mut g, &short).err().map(|e| e.to_string());
        assert_eq!(
            message.as_deref(),
            Some("tensor `fc.bias` has shape [5] but holds 4 values")
        );
        let mut nan = in_memory(&tensors());
        nan[6].2[2] = f32::INFINITY;
        assert!(matches!(
            bind_tensors(&mut g, &nan),
            Err(WeightsError::NotFinite { index: 2, .. })
        ));
        assert!(g.params.iter().all(|(_, p)| p.data.is_none()));
        Ok(())
    }
}

//! Constant tensors of an ONNX graph: initializers, `Constant` nodes and the small integer
//! vectors that shape plumbing (`Shape`, `Gather`, `Unsqueeze`, `Concat`) computes, folded at
//! import time.
//!
//! Owns decoding a `TensorProto`'s data (float32 and the integer types, raw or typed fields),
//! with every size checked against the bytes the file really holds before anything is
//! allocated. Must not build IR nodes.

use super::proto::TensorProto;
use super::proto::tensor_proto::{DataLocation, DataType};

/// Most elements a folded shape computation may produce: shape vectors have a handful of
/// entries, and the bound keeps a hostile chain of self-concatenations from doubling without
/// end.
pub const MAX_FOLDED: usize = 4096;

/// One integer of a folded shape vector: a known value, or the symbolic batch dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Int {
    Batch,
    Val(i64),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    Int(Vec<Int>),
}

/// A constant: its dims (row-major) and data, `dims.product() == data.len()`.
#[derive(Clone, Debug, PartialEq)]
pub struct Const {
    pub dims: Vec<usize>,
    pub data: Data,
}

impl Const {
    pub fn len(&self) -> usize {
        match &self.data {
            Data::F32(v) => v.len(),
            Data::Int(v) => v.len(),
        }
    }

    /// The integer entries (a float tensor is not a shape).
    pub fn ints(&self) -> Option<&[Int]> {
        match &self.data {
            Data::Int(v) => Some(v),
            Data::F32(_) => None,
        }
    }

    /// Known integer entries, `None` when one is the symbolic batch or the data is float.
    pub fn known_ints(&self) -> Option<Vec<i64>> {
        self.ints()?
            .iter()
            .map(|i| match i {
                Int::Val(v) => Some(*v),
                Int::Batch => None,
            })
            .collect()
    }
}

/// The element count `dims` describe, when every dim is non-negative and the product fits.
pub fn element_count(dims: &[i64]) -> Result<(Vec<usize>, usize), String> {
    let mut out = Vec::with_capacity(dims.len().min(64));
    let mut n: usize = 1;
    if dims.len() > 64 {
        return Err(format!("{} dimensions (at most 64)", dims.len()));
    }
    for &d in dims {
        let d = usize::try_from(d).map_err(|_| format!("negative dimension {d}"))?;
        n = n
            .checked_mul(d)
            .ok_or_else(|| format!("dims {dims:?} overflow"))?;
        out.push(d);
    }
    Ok((out, n))
}

/// Whether the tensor's data lives in a separate file (`external_data`, see `external.rs`).
pub fn is_external(t: &TensorProto) -> bool {
    t.data_location == Some(DataLocation::External as i32) || !t.external_data.is_empty()
}

/// Decodes a tensor's data; `external` is the raw little-endian data of a tensor stored in a
/// separate file (`external.rs` reads it), `None` for a tensor held in the model. Sizes are
/// checked against the data actually present before any allocation, so the result is never
/// larger than the files.
pub fn decode(t: &TensorProto, external: Option<&[u8]>) -> Result<Const, String> {
    if is_external(t) != external.is_some() {
        return Err(if external.is_some() {
            "is not stored externally, but external data was given".into()
        } else {
            "external data (a separate weights file) needs the model's folder: import the file by its path".into()
        });
    }
    if t.segment.is_some() {
        return Err("segmented tensors are not supported".into());
    }
    if external.is_some()
        && (t.raw_data.is_some()
            || !t.float_data.is_empty()
            || !t.int64_data.is_empty()
            || !t.int32_data.is_empty())
    {
        return Err("stores its data both externally and in the model".into());
    }
    let (dims, n) = element_count(&t.dims)?;
    let raw = external.or(t.raw_data.as_deref()).unwrap_or(&[]);
    let dtype = t.data_type.unwrap_or(0);
    let has_raw = t.raw_data.is_some() || external.is_some();
    let size_err = |held: usize, unit: &str| {
        format!("dims {dims:?} need {n} elements, but the tensor holds {held} {unit}")
    };
    let data = if dtype == DataType::Float as i32 {
        if has_raw {
            if raw.len() / 4 != n || !raw.len().is_multiple_of(4) {
                return Err(size_err(raw.len(), "bytes of float32"));
            }
            Data::F32(
                raw.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            )
        } else {
            if t.float_data.len() != n {
                return Err(size_err(t.float_data.len(), "floats"));
            }
            Data::F32(t.float_data.clone())
        }
    } else if dtype == DataType::Int64 as i32 {
        if has_raw {
            if raw.len() / 8 != n || !raw.len().is_multiple_of(8) {
                return Err(size_err(raw.len(), "bytes of int64"));
            }
            Data::Int(
                raw.chunks_exact(8)
                    .map(|c| {
                        Int::Val(i64::from_le_bytes([
                            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7],
                        ]))
                    })
                    .collect(),
            )
        } else {
            if t.int64_data.len() != n {
                return Err(size_err(t.int64_data.len(), "int64 values"));
            }
            Data::Int(t.int64_data.iter().map(|&v| Int::Val(v)).collect())
        }
    } else if dtype == DataType::Int32 as i32 {
        if has_raw {
            if raw.len() / 4 != n || !raw.len().is_multiple_of(4) {
                return Err(size_err(raw.len(), "bytes of int32"));
            }
            Data::Int(
                raw.chunks_exact(4)
                    .map(|c| Int::Val(i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]]))))
                    .collect(),
            )
        } else {
            if t.int32_data.len() != n {
                return Err(size_err(t.int32_data.len(), "int32 values"));
            }
            Data::Int(
                t.int32_data
                    .iter()
                    .map(|&v| Int::Val(i64::from(v)))
                    .collect(),
            )
        }
    } else {
        let name = DataType::try_from(dtype).map_or("unknown", |d| d.as_str_name());
        return Err(format!(
            "data type {name} ({dtype}) is not supported (float32 weights, int64 or int32 shapes)"
        ));
    };
    Ok(Const { dims, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_float_data_must_match_the_dims() {
        let t = TensorProto {
            dims: vec![1_000_000_000_000],
            data_type: Some(DataType::Float as i32),
            raw_data: Some(vec![0; 8]),
            ..Default::default()
        };
        let e = decode(&t, None).err().unwrap_or_default();
        assert!(e.contains("need 1000000000000 elements"), "{e}");
        let t = TensorProto {
            dims: vec![2],
            data_type: Some(DataType::Float as i32),
            raw_data: Some(1f32.to_le_bytes().repeat(2)),
            ..Default::default()
        };
        assert_eq!(
            decode(&t, None).ok().map(|c| c.data),
            Some(Data::F32(vec![1.0, 1.0]))
        );
    }

    #[test]
    fn negative_and_overflowing_dims_are_errors() {
        assert!(element_count(&[-1]).is_err());
        assert!(element_count(&[i64::MAX, i64::MAX]).is_err());
    }
}

//! Reading and writing tensors for `sparsec run`: safetensors (the tensor named `input`, or the
//! only tensor of the file) and NumPy `.npy` (float32, little-endian, C order), chosen by the
//! file extension; any other extension is an error naming the file, before it is read.
//!
//! Must not run models: it only moves arrays between files and memory.

use std::path::Path;

/// Why a tensor file could not be read or written. The I/O cause is the error's `source`, not
/// part of its message (a caller printing the chain shows it once).
#[derive(Debug, thiserror::Error)]
pub enum TensorIoError {
    #[error("cannot read `{path}`")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write `{path}`")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{path}`: unknown tensor file type: the name must end in `.safetensors` or `.npy`")]
    Extension { path: String },
    #[error("`{path}`: {reason}")]
    Format { path: String, reason: String },
}

/// The file formats [`read`] and [`write`] know, by extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Safetensors,
    Npy,
}

/// The format a path names by its extension (case-insensitive), or an error naming the file.
pub fn kind(path: &Path) -> Result<FileKind, TensorIoError> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext.eq_ignore_ascii_case("npy") {
        Ok(FileKind::Npy)
    } else if ext.eq_ignore_ascii_case("safetensors") {
        Ok(FileKind::Safetensors)
    } else {
        Err(TensorIoError::Extension {
            path: path.display().to_string(),
        })
    }
}

/// A float32 array with its shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

pub fn read(path: &Path) -> Result<Array, TensorIoError> {
    let p = path.display().to_string();
    let kind = kind(path)?;
    let bytes = std::fs::read(path).map_err(|source| TensorIoError::Read {
        path: p.clone(),
        source,
    })?;
    let fail = |reason: String| TensorIoError::Format {
        path: p.clone(),
        reason,
    };
    if kind == FileKind::Npy {
        return read_npy(&bytes).map_err(fail);
    }
    let tensors = crate::weights::load_tensors(&bytes).map_err(|e| fail(e.to_string()))?;
    let chosen = match tensors.iter().find(|t| t.0 == "input") {
        Some(t) => t,
        None if tensors.len() == 1 => &tensors[0],
        None => {
            let names: Vec<&str> = tensors.iter().map(|t| t.0.as_str()).collect();
            return Err(fail(format!("no tensor named `input` among {names:?}")));
        }
    };
    Ok(Array {
        shape: chosen.1.clone(),
        data: chosen.2.clone(),
    })
}

pub fn write(path: &Path, name: &str, array: &Array) -> Result<(), TensorIoError> {
    let p = path.display().to_string();
    let bytes = if kind(path)? == FileKind::Npy {
        write_npy(array)
    } else {
        let raw: Vec<u8> = array.data.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = safetensors::tensor::TensorView::new(
            safetensors::Dtype::F32,
            array.shape.clone(),
            &raw,
        )
        .map_err(|e| TensorIoError::Format {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        safetensors::serialize([(name, view)], None).map_err(|e| TensorIoError::Format {
            path: p.clone(),
            reason: e.to_string(),
        })?
    };
    std::fs::write(path, bytes).map_err(|source| TensorIoError::Write { path: p, source })
}

fn read_npy(bytes: &[u8]) -> Result<Array, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy file (bad magic)".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = bytes
        .get(start..start + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or("truncated or non-UTF-8 .npy header")?;
    let descr = header
        .split("'descr':")
        .nth(1)
        .and_then(|s| s.split('\'').nth(1))
        .ok_or("no 'descr' (dtype) in the .npy header")?;
    if descr != "<f4" {
        let dtype = match descr.trim_start_matches(['<', '>', '=', '|']) {
            "f8" => "float64".to_string(),
            "f2" => "float16".to_string(),
            "f4" => "big-endian float32".to_string(),
            other => format!("dtype '{}'", other.escape_debug()),
        };
        return Err(format!(
            "the array is {dtype}; sparsec reads little-endian float32 only: convert it with `x.astype(np.float32)`"
        ));
    }
    if header.contains("'fortran_order': True") {
        return Err("Fortran-order arrays are not supported".into());
    }
    let shape_text = header
        .split("'shape':")
        .nth(1)
        .and_then(|s| s.split('(').nth(1))
        .and_then(|s| s.split(')').next())
        .ok_or("no shape in the .npy header")?;
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|e| format!("bad shape `{shape_text}`: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or("shape overflows")?;
    let body = &bytes[start + header_len..];
    if body.len() != count * 4 {
        return Err(format!(
            "shape {shape:?} needs {} bytes of data, found {}",
            count * 4,
            body.len()
        ));
    }
    let data = body
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(Array { shape, data })
}

fn write_npy(array: &Array) -> Vec<u8> {
    let dims: Vec<String> = array.shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad so that the data starts on a multiple of 64 bytes, ending the header with '\n'.
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend(array.data.iter().flat_map(|v| v.to_le_bytes()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_round_trip() {
        let a = Array {
            shape: vec![2, 3],
            data: vec![1.0, -2.5, 3.0, 0.0, 5.5, f32::NAN],
        };
        let b = read_npy(&write_npy(&a)).expect("round trip");
        assert_eq!(b.shape, a.shape);
        assert_eq!(b.data[..5], a.data[..5]);
        assert!(b.data[5].is_nan());
    }

    #[test]
    fn npy_rejects_other_dtypes_and_truncation() {
        let mut bytes = write_npy(&Array {
            shape: vec![4],
            data: vec![0.0; 4],
        });
        bytes.truncate(bytes.len() - 1);
        assert!(read_npy(&bytes).is_err());
        let mut f8 = write_npy(&Array {
            shape: vec![1],
            data: vec![0.0, 0.0],
        });
        let at = f8
            .windows(3)
            .position(|w| w == b"<f4")
            .expect("the header names its dtype");
        f8[at + 2] = b'8';
        let e = read_npy(&f8).expect_err("float64 is rejected");
        assert!(
            e.contains("float64") && e.contains("x.astype(np.float32)"),
            "{e}"
        );
        assert!(read_npy(b"hello").is_err());
    }

    #[test]
    fn the_extension_chooses_the_format() {
        assert_eq!(kind(Path::new("x.NPY")).ok(), Some(FileKind::Npy));
        assert_eq!(
            kind(Path::new("a/x.safetensors")).ok(),
            Some(FileKind::Safetensors)
        );
        let e = kind(Path::new("y.txt")).expect_err("unknown extension");
        assert_eq!(
            e.to_string(),
            "`y.txt`: unknown tensor file type: the name must end in `.safetensors` or `.npy`"
        );
        assert!(kind(Path::new("noext")).is_err());
    }
}

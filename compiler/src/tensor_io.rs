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
    parse(kind, &bytes).map_err(fail)
}

/// The array a tensor file's bytes hold (`kind` as [`read`] picks it): the reason it cannot be
/// read otherwise. Untrusted bytes (fuzzed: `tests/src/fuzz_entry.rs`) give an error, never a
/// panic or an allocation beyond what they hold.
pub fn parse(kind: FileKind, bytes: &[u8]) -> Result<Array, String> {
    if kind == FileKind::Npy {
        return read_npy(bytes);
    }
    let tensors = crate::weights::load_tensors(bytes).map_err(|e| e.to_string())?;
    let chosen = match tensors.iter().find(|t| t.0 == "input") {
        Some(t) => t,
        None if tensors.len() == 1 => &tensors[0],
        None => {
            let names: Vec<&str> = tensors.iter().map(|t| t.0.as_str()).collect();
            return Err(format!("no tensor named `input` among {names:?}"));
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
    let dict = parse_header_dict(header)?;
    let descr = match dict.get("descr") {
        Some(PyValue::Str(d)) => d.as_str(),
        Some(_) => return Err("the .npy header's 'descr' is not a string".into()),
        None => return Err("no 'descr' (dtype) in the .npy header".into()),
    };
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
    match dict.get("fortran_order") {
        Some(PyValue::Bool(false)) => {}
        Some(PyValue::Bool(true)) => {
            return Err(
                "Fortran-order arrays are not supported: save it with `np.save(path, np.ascontiguousarray(x))`"
                    .into(),
            );
        }
        Some(_) => return Err("the .npy header's 'fortran_order' is not True or False".into()),
        None => return Err("no 'fortran_order' in the .npy header".into()),
    }
    let shape = match dict.get("shape") {
        Some(PyValue::Tuple(dims)) => dims.clone(),
        Some(_) => return Err("the .npy header's 'shape' is not a tuple of integers".into()),
        None => return Err("no shape in the .npy header".into()),
    };
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or("shape overflows")?;
    let body = bytes.get(start + header_len..).unwrap_or_default();
    let need = count.checked_mul(4).ok_or("shape overflows")?;
    if body.len() != need {
        return Err(format!(
            "shape {shape:?} needs {need} bytes of data, found {}",
            body.len()
        ));
    }
    let data = body
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(Array { shape, data })
}

/// A value of a `.npy` header dict: a string, `True`/`False`, or a tuple of integers.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PyValue {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
}

/// Parses the header's Python dict literal (`{'descr': '<f4', 'fortran_order': False,
/// 'shape': (2, 3), }`) token by token, whatever the spacing or quotes: exactly the keys
/// `descr`, `fortran_order` and `shape`, each once (as numpy requires).
fn parse_header_dict(header: &str) -> Result<std::collections::BTreeMap<String, PyValue>, String> {
    let bad = |what: &str| format!("malformed .npy header ({what}): `{}`", header.trim_end());
    let mut p = Cursor {
        s: header.as_bytes(),
        at: 0,
    };
    let mut dict = std::collections::BTreeMap::new();
    p.skip_ws();
    if !p.eat(b'{') {
        return Err(bad("it does not start with `{`"));
    }
    loop {
        p.skip_ws();
        if p.eat(b'}') {
            break;
        }
        let key = p
            .string()
            .ok_or_else(|| bad("a key is not a quoted string"))?;
        p.skip_ws();
        if !p.eat(b':') {
            return Err(bad("no `:` after a key"));
        }
        p.skip_ws();
        let value = p
            .value()
            .ok_or_else(|| bad("a value is not a string, bool or tuple"))?;
        if !["descr", "fortran_order", "shape"].contains(&key.as_str()) {
            return Err(bad(&format!("unknown key '{}'", key.escape_debug())));
        }
        if dict.insert(key.clone(), value).is_some() {
            return Err(bad(&format!("key '{key}' twice")));
        }
        p.skip_ws();
        if !p.eat(b',') {
            p.skip_ws();
            if p.eat(b'}') {
                break;
            }
            return Err(bad("no `,` or `}` after a value"));
        }
    }
    p.skip_ws();
    if p.at != p.s.len() {
        return Err(bad("text after the dict"));
    }
    Ok(dict)
}

/// A byte cursor over the header text (ASCII syntax; strings may hold any UTF-8).
struct Cursor<'a> {
    s: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        let hit = self.peek() == Some(c);
        self.at += usize::from(hit);
        hit
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.at += 1;
        }
    }

    fn word(&mut self, w: &str) -> bool {
        let hit = self.s.get(self.at..self.at + w.len()) == Some(w.as_bytes());
        if hit {
            self.at += w.len();
        }
        hit
    }

    /// `'...'` or `"..."`, without escapes (numpy writes none in these keys and values).
    fn string(&mut self) -> Option<String> {
        let quote = self.peek().filter(|&q| q == b'\'' || q == b'"')?;
        let start = self.at + 1;
        let len = self.s.get(start..)?.iter().position(|&c| c == quote)?;
        self.at = start + len + 1;
        String::from_utf8(self.s.get(start..start + len)?.to_vec()).ok()
    }

    fn int(&mut self) -> Option<usize> {
        let start = self.at;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.at += 1;
        }
        let n = std::str::from_utf8(self.s.get(start..self.at)?)
            .ok()?
            .parse()
            .ok()?;
        self.eat(b'L'); // Python 2's long suffix, in files from old numpy
        Some(n)
    }

    fn value(&mut self) -> Option<PyValue> {
        if self.word("True") {
            return Some(PyValue::Bool(true));
        }
        if self.word("False") {
            return Some(PyValue::Bool(false));
        }
        if let Some(s) = self.string() {
            return Some(PyValue::Str(s));
        }
        if !self.eat(b'(') {
            return None;
        }
        let mut dims = Vec::new();
        loop {
            self.skip_ws();
            if self.eat(b')') {
                return Some(PyValue::Tuple(dims));
            }
            dims.push(self.int()?);
            self.skip_ws();
            if !self.eat(b',') {
                self.skip_ws();
                return self.eat(b')').then_some(PyValue::Tuple(dims));
            }
        }
    }
}

/// An array as `.npy` bytes (version 1.0, little-endian float32, C order).
pub fn write_npy(array: &Array) -> Vec<u8> {
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

    /// A `.npy` file with `header` (a dict literal) and `data`.
    fn npy_with(header: &str, data: &[f32]) -> Vec<u8> {
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend(data.iter().flat_map(|v| v.to_le_bytes()));
        out
    }

    #[test]
    fn npy_header_is_parsed_whatever_its_spacing() {
        let data = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        // Fortran order, written without spaces or with double quotes: refused, never read
        // as C order.
        for h in [
            "{'descr':'<f4','fortran_order':True,'shape':(2,3)}",
            "{\"descr\": \"<f4\", \"fortran_order\": True, \"shape\": (2, 3), }\n",
            "{ 'shape' : (2,3) , 'fortran_order' :  True,'descr':'<f4' }",
        ] {
            let e = read_npy(&npy_with(h, &data)).expect_err(h);
            assert!(e.contains("Fortran-order"), "{h}: {e}");
        }
        // C order in the same spellings reads; Python 2's `3L` too.
        for h in [
            "{'descr':'<f4','fortran_order':False,'shape':(2,3)}",
            "{\"shape\": (2L, 3L), \"descr\": \"<f4\", \"fortran_order\": False}\n",
        ] {
            let a = read_npy(&npy_with(h, &data)).expect(h);
            assert_eq!((a.shape, a.data), (vec![2, 3], data.to_vec()));
        }
        let scalar = read_npy(&npy_with(
            "{'descr':'<f4','fortran_order':False,'shape':()}",
            &[7.0],
        ))
        .expect("a scalar");
        assert_eq!((scalar.shape, scalar.data), (vec![], vec![7.0]));
        // Malformed or incomplete dicts are errors naming what is wrong.
        for (h, want) in [
            ("{'descr':'<f4','shape':(6,)}", "no 'fortran_order'"),
            (
                "{'descr':'<f4','fortran_order':0,'shape':(6,)}",
                "not a string, bool",
            ),
            (
                "{'descr':'<f4','fortran_order':False,'shape':(6,),'x':1}",
                "not a string, bool",
            ),
            (
                "{'descr':'<f4','fortran_order':False,'shape':(6,),'x':'y'}",
                "unknown key 'x'",
            ),
            (
                "{'descr':'<f4','descr':'<f4','fortran_order':False,'shape':(6,)}",
                "twice",
            ),
            (
                "{'descr':'<f4','fortran_order':False,'shape':(6,)",
                "no `,` or `}`",
            ),
            (
                "{'descr':'<f4','fortran_order':False,'shape':(-6,)}",
                "not a string, bool",
            ),
            (
                "{'descr':'<f4','fortran_order':False,'shape':(99999999999999999999,)}",
                "not a string",
            ),
        ] {
            let e = read_npy(&npy_with(h, &data)).expect_err(h);
            assert!(e.contains(want), "{h}: {e}");
        }
        let huge = "{'descr':'<f4','fortran_order':False,'shape':(4611686018427387904,)}";
        let e = read_npy(&npy_with(huge, &data)).expect_err("overflow");
        assert!(e.contains("overflows"), "{e}");
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

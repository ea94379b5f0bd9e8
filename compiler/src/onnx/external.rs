//! External tensor data: initializers whose bytes live in a separate file beside the model
//! (`data_location: EXTERNAL`, keys `location`, `offset`, `length`), the form
//! `torch.onnx.export(..., dynamo=True)` writes by default (`model.onnx` + `model.onnx.data`).
//!
//! Owns resolving a `location` inside the model's folder and reading each file once. The model
//! is untrusted: a location must be a plain relative path below the folder (no `..`, no root,
//! no drive), must name a regular file, and `offset` + `length` must lie inside it; nothing is
//! read beyond what the file holds. Must not decode tensor data (`tensor.rs` does).

use super::proto::TensorProto;
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

/// The external files of one import, each read at most once.
pub struct ExternalData {
    /// The model's folder; `None` when the model came as bytes without a path.
    dir: Option<PathBuf>,
    files: HashMap<String, Vec<u8>>,
}

/// Where an external tensor's bytes are, from its `external_data` entries.
struct Location<'t> {
    file: &'t str,
    offset: usize,
    length: Option<usize>,
}

fn location(t: &TensorProto) -> Result<Location<'_>, String> {
    let mut file = None;
    let mut offset = 0;
    let mut length = None;
    for e in &t.external_data {
        let number = || {
            e.value().parse::<usize>().map_err(|_| {
                format!(
                    "external data `{}` is `{}`, not a byte count",
                    e.key(),
                    e.value()
                )
            })
        };
        match e.key() {
            "location" => file = Some(e.value()),
            "offset" => offset = number()?,
            "length" => length = Some(number()?),
            "checksum" => {}
            k => return Err(format!("external data key `{k}` is not supported")),
        }
    }
    let file = file.ok_or("external data without a `location`")?;
    Ok(Location {
        file,
        offset,
        length,
    })
}

/// A location as a path below the model's folder: relative, no `..`, not empty.
fn checked_relative(file: &str) -> Result<&Path, String> {
    let path = Path::new(file);
    let plain = path
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if file.is_empty() || !plain || file.contains('\0') {
        return Err(format!(
            "external data location `{file}` is not a plain relative path inside the model's folder"
        ));
    }
    Ok(path)
}

impl ExternalData {
    pub fn new(dir: Option<&Path>) -> Self {
        Self {
            dir: dir.map(Path::to_path_buf),
            files: HashMap::new(),
        }
    }

    /// Bytes of every external file read so far (they bound the weights the import derives).
    pub fn bytes_read(&self) -> usize {
        self.files.values().map(Vec::len).sum()
    }

    /// The raw bytes of an external tensor (`tensor::is_external`), read from its file.
    pub fn bytes(&mut self, t: &TensorProto) -> Result<&[u8], String> {
        let loc = location(t)?;
        let Some(dir) = &self.dir else {
            return Err(format!(
                "its data is in the external file `{}`, and the model was not read from a folder",
                loc.file
            ));
        };
        let rel = checked_relative(loc.file)?;
        if !self.files.contains_key(loc.file) {
            let path = dir.join(rel);
            let meta = std::fs::metadata(&path)
                .map_err(|e| format!("external data file `{}`: {e}", path.display()))?;
            if !meta.is_file() {
                return Err(format!(
                    "external data file `{}` is not a regular file",
                    path.display()
                ));
            }
            let data = std::fs::read(&path)
                .map_err(|e| format!("external data file `{}`: {e}", path.display()))?;
            self.files.insert(loc.file.to_string(), data);
        }
        let data = self.files.get(loc.file).map_or(&[][..], Vec::as_slice);
        let end = match loc.length {
            Some(len) => loc.offset.checked_add(len),
            None => Some(data.len()),
        };
        match end {
            Some(end) if loc.offset <= end && end <= data.len() => Ok(&data[loc.offset..end]),
            _ => Err(format!(
                "external data at offset {} length {} lies outside `{}` ({} bytes)",
                loc.offset,
                loc.length
                    .map_or_else(|| "(rest)".to_string(), |l| l.to_string()),
                loc.file,
                data.len()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_must_stay_inside_the_folder() {
        for bad in [
            "../w.bin",
            "/etc/passwd",
            "",
            "a/../../b",
            "./x/../..",
            "x/..",
        ] {
            assert!(checked_relative(bad).is_err(), "{bad}");
        }
        assert!(checked_relative("model.onnx.data").is_ok());
        assert!(checked_relative("weights/w.bin").is_ok());
        assert!(checked_relative("./model.onnx.data").is_ok());
    }
}

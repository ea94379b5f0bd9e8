//! The runtime's errors: [`LoadError`] for everything that can be wrong with a `model.bin` or
//! with the machine it is loaded on, [`RunError`] for everything that can be wrong with one
//! inference call. Every message says what was found and what was expected, so that a user who
//! sees only the message knows which side (the file, the machine, or the call) to fix.

use std::path::PathBuf;

use crate::format::Backend;

/// Why a `model.bin` could not be loaded. The variants from [`LoadError::TooShort`] to
/// [`LoadError::Arena`] are produced by [`crate::format::ModelFile::parse`], in the order they
/// are declared here (which is the order of the checks); the remaining ones by
/// [`crate::format::check_target`] and the executors.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Fewer bytes than the fixed header.
    #[error(
        "not a sparsec model.bin: {len} bytes is shorter than the {} byte header",
        crate::format::HEADER_BYTES
    )]
    TooShort { len: usize },

    /// The first 8 bytes are not `SPARSEC\0`.
    #[error(
        "not a sparsec model.bin: the file starts with {} ({:?}), expected {:?}",
        hex_bytes(found),
        String::from_utf8_lossy(found),
        "SPARSEC\\0"
    )]
    BadMagic { found: [u8; 8] },

    /// A format version this runtime does not read.
    #[error(
        "model.bin format version {found} is not supported: this runtime reads version \
         {supported} only; recompile the model with a sparsec of the same release"
    )]
    Version { found: u32, supported: u32 },

    /// The header-length field disagrees with this version's header size.
    #[error("model.bin header length field is {found}, expected {expected}")]
    HeaderLength { found: u32, expected: u32 },

    /// A reserved header byte is not zero (a file from a newer writer, or corruption).
    #[error("model.bin reserved header byte at offset {offset} is {value:#04x}, expected 0")]
    Reserved { offset: usize, value: u8 },

    /// The file-length field disagrees with the number of bytes actually present.
    #[error(
        "model.bin is {actual} bytes but its header declares {declared} bytes ({})",
        if actual < declared { "truncated" } else { "extra bytes at the end" }
    )]
    Length { declared: u64, actual: u64 },

    /// The header's trailer length, or the signature trailer it declares, is malformed.
    #[error("model.bin signature trailer: {0}")]
    Trailer(String),

    /// The checksum does not match the contents.
    #[error(
        "model.bin is corrupt: stored checksum {stored:#018x}, computed {computed:#018x} \
         (xxh3-64 of the file with the checksum field zeroed)"
    )]
    Checksum { stored: u64, computed: u64 },

    /// The manifest (plus its padding) does not fit in the file.
    #[error(
        "model.bin manifest of {manifest_len} bytes (padded to offset {data_base}) does not \
         fit in the {file_len} byte file"
    )]
    ManifestLength {
        manifest_len: u64,
        data_base: u64,
        file_len: u64,
    },

    /// The manifest bytes do not decode.
    #[error("model.bin manifest does not decode: {0}")]
    Manifest(String),

    /// A section is out of bounds or misaligned.
    #[error(
        "model.bin section {name} at data offset {offset} with {len} bytes {reason} (the data \
         area starts at file offset {data_base}; the file has {file_len} bytes)"
    )]
    Section {
        name: String,
        offset: u64,
        len: u64,
        data_base: u64,
        file_len: u64,
        reason: String,
    },

    /// The CPU entry point lies outside the CPU code section.
    #[error("model.bin CPU entry offset {offset} is outside the {code_len} byte code section")]
    Entry { offset: u64, code_len: u64 },

    /// A buffer does not fit in the per-image arena or is malformed.
    #[error("model.bin buffer {index}: {reason}")]
    Buffer { index: usize, reason: String },

    /// An input or output tensor refers to a missing buffer or disagrees with its size.
    #[error("model.bin {role} {index} ({name:?}): {reason}")]
    Tensor {
        /// `"input"` or `"output"`.
        role: &'static str,
        index: usize,
        name: String,
        reason: String,
    },

    /// A step refers to a missing buffer.
    #[error("model.bin step {index}: {reason}")]
    Step { index: usize, reason: String },

    /// A step's descriptor is not inside the constant section, misaligned, or (when checked by
    /// an executor) has inconsistent contents.
    #[error("model.bin step {step} descriptor: {reason}")]
    Descriptor { step: usize, reason: String },

    /// `max_batch` is zero.
    #[error("model.bin max_batch is 0, expected at least 1")]
    MaxBatch,

    /// The arena for the largest batch does not fit in the address space.
    #[error(
        "model.bin arena of {arena_bytes_per_image} bytes per image times max_batch \
         {max_batch} overflows"
    )]
    Arena {
        arena_bytes_per_image: u64,
        max_batch: u32,
    },

    /// The code does not match the backend, or the CUDA code is malformed (blobs, launches).
    #[error("model.bin code: {reason}")]
    Code { reason: String },

    /// The file's CPU code was compiled for another architecture (an x86-64 model.bin on an
    /// aarch64 machine, or the reverse). Refused whether or not its native code would run: the
    /// file was built for another machine, and its author should rebuild it for this one.
    #[error(
        "model.bin was compiled for {file}, but this machine is {machine}; recompile it with \
         `sparsec --target {}`",
        cpu_target_name(machine)
    )]
    Architecture { file: String, machine: &'static str },

    /// The file names a CPU feature this runtime does not know.
    #[error("model.bin target mismatch: {reason}")]
    Target { reason: String },

    /// The code needs a CPU feature this machine lacks.
    #[error(
        "this CPU lacks the feature {feature:?} that the model's code was compiled for; \
         recompile the model for this machine"
    )]
    UnsupportedCpu { feature: String },

    /// The file has no code for the backend asked for.
    #[error("model.bin has no code for the {backend} backend")]
    NoCode { backend: Backend },

    /// The model needs a backend this runtime was built without.
    #[error(
        "model.bin is compiled for the {backend} backend, but this runtime was built without it \
         (build the `runtime` crate with `--features {feature}`)"
    )]
    BackendNotBuilt {
        backend: Backend,
        feature: &'static str,
    },

    /// No usable device: no driver library, no GPU, or a GPU the code cannot run on.
    #[error("cannot run the {backend} model on this machine: {reason}")]
    Device { backend: Backend, reason: String },

    /// The manifest promises less than its kernels need (scratch), or more than can exist.
    #[error("model.bin manifest: {0}")]
    Inconsistent(String),

    /// The model's kernels are native code from the file (CUDA), and the caller did not allow
    /// unsigned native code to run.
    #[error(
        "model.bin for the {backend} backend runs native code from the file, and it is not \
         signed by a trusted key: sign it (`sparsec ... --sign KEY`) and trust the key \
         (`LoadOptions::trusted_keys`, `sparsec run --trust KEY.pub`), or load it with \
         `LoadOptions {{ allow_unsigned_code: true, .. }}` (`sparsec run --allow-unsigned-code`) \
         only if you trust where it came from"
    )]
    UnsignedCode { backend: Backend },

    /// The caller requires a signature by a trusted key ([`crate::LoadOptions`]'s
    /// `require_signature`), and the file has none that verifies with a trusted key.
    #[error("model.bin must be signed by a trusted key, and it is not: {signature}")]
    NotTrusted {
        signature: crate::signature::SignatureState,
    },

    /// Mapping or preparing the code failed (mmap, mprotect, driver load, ...).
    #[error("cannot prepare the model's code: {0}")]
    Executable(String),
}

/// Why a signing key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read (or written).
    #[error("cannot read key file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The file is not a sparsec key file of the expected kind.
    #[error("{} is not a sparsec key file: {reason}", path.display())]
    Format { path: PathBuf, reason: String },
}

/// Why one inference call failed. The model itself loaded fine; the call's arguments or a kernel
/// were at fault.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The number of input tensors passed differs from the model's.
    #[error("expected {expected} input tensor(s), got {found}")]
    InputCount { expected: usize, found: usize },

    /// An input tensor's shape differs from the model's.
    #[error("input {name:?} has shape {found:?}, expected {expected:?}")]
    InputShape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    /// An input or output slice has the wrong number of elements for the batch.
    #[error("{name:?} has {found} elements, expected {expected} for this batch")]
    InputLength {
        name: String,
        expected: usize,
        found: usize,
    },

    /// The batch is larger than the model (or session) was prepared for.
    #[error("batch {batch} is larger than the maximum batch {max}")]
    Batch { batch: usize, max: usize },

    /// A batch of zero images.
    #[error("batch of 0 images: expected at least 1")]
    ZeroBatch,

    /// A kernel returned a non-zero status.
    #[error("kernel of step {step} ({label}) failed with status {status}{}", status_hint(*status))]
    Kernel {
        step: usize,
        label: String,
        status: i32,
    },

    /// A backend-specific failure (driver, allocation, ...).
    #[error("backend error: {0}")]
    Backend(String),

    /// Memory the model needs could not be allocated (its manifest asks for more than this
    /// machine gives).
    #[error("out of memory: {what} needs {bytes} bytes")]
    OutOfMemory { what: &'static str, bytes: u128 },
}

fn hex_bytes(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn status_hint(status: i32) -> &'static str {
    match status {
        crate::abi::STATUS_BAD_DESCRIPTOR => " (bad descriptor)",
        _ => "",
    }
}

/// The `sparsec --target` value that compiles for the machine architecture `arch`
/// (`std::env::consts::ARCH`).
fn cpu_target_name(arch: &str) -> String {
    match arch {
        "x86_64" => "cpu-x86_64".into(),
        "aarch64" => "cpu-aarch64".into(),
        other => format!("cpu (no sparsec target exists for {other})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_and_what_was_expected() {
        let e = LoadError::BadMagic {
            found: *b"\x7fELF\x02\x01\x01\0",
        };
        let msg = e.to_string();
        assert!(msg.contains("not a sparsec model.bin"), "{msg}");
        assert!(msg.contains("7f 45 4c 46"), "{msg}");

        let e = LoadError::Length {
            declared: 100,
            actual: 90,
        };
        assert!(e.to_string().contains("truncated"));
        let e = LoadError::Checksum {
            stored: 1,
            computed: 0xabc,
        };
        assert!(e.to_string().contains("0x0000000000000abc"), "{e}");

        let e = RunError::Kernel {
            step: 3,
            label: "conv1".into(),
            status: 1,
        };
        assert_eq!(
            e.to_string(),
            "kernel of step 3 (conv1) failed with status 1 (bad descriptor)"
        );
        let e = LoadError::NoCode {
            backend: Backend::Cuda,
        };
        assert_eq!(e.to_string(), "model.bin has no code for the CUDA backend");
    }
}

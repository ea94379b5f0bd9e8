//! The byte layout of `model.bin`: its types, the [`Writer`] the compiler uses, and
//! [`ModelFile::parse`], which validates a file completely before handing it out. This module
//! only reads and writes bytes: it never executes, maps or allocates executable memory, and it
//! does not judge descriptor contents (the executors do, with `cpu::kernels::validate_*`).
//!
//! Layout (all integers little-endian; `docs/model-bin.md` is the full description):
//!
//! ```text
//! 0        header (64 bytes): magic, version, header length, manifest length,
//!          file length, checksum, trailer length, 20 reserved zero bytes
//! 64       manifest (postcard), then zero padding up to the next multiple of 64
//! data_base  the data area: every section starts at a multiple of 64 from here
//! sealed   end of the sealed bytes (what the checksum and a signature cover)
//!          optional signature trailer (128 bytes: magic, ed25519 key, signature)
//! ```
//!
//! [`Header::parse`] reads only the 64 header bytes and the trailer's position, so that a
//! signature (`crate::signature`) can be checked before anything beyond the header is
//! interpreted; this module stores the trailer but never judges a signature.
//!
//! Section offsets in the manifest are **relative to `data_base`**, the first multiple of 64 at
//! or after the end of the manifest. This keeps the manifest independent of its own length (no
//! fix-point when writing), and because `data_base` is itself a multiple of 64, a section whose
//! relative offset is a multiple of 64 is also 64-byte aligned in the file (and in any copy of
//! the file placed at a 64-aligned address).

use std::fmt;
use std::mem::{offset_of, size_of};
use std::path::Path;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3Default;

use crate::abi::{self, ConvDesc, LinearDesc, PoolDesc};
use crate::error::LoadError;

/// The first 8 bytes of every `model.bin`.
pub const MAGIC: [u8; 8] = *b"SPARSEC\0";
/// The layout version this runtime reads and writes. Any change to the layout, the manifest
/// types or the descriptor structs in `abi.rs` bumps it, and so does a change to what a launch
/// means (version 5: CUDA kernels take the step's record, `cuda::table`, as a fourth argument;
/// version 6: every buffer names its element type, [`Element`]).
pub const FORMAT_VERSION: u32 = 6;
/// Size of the fixed header.
pub const HEADER_BYTES: usize = 64;
/// Alignment of the data area and of every section (relative and absolute), and of every
/// buffer's `offset_per_image`.
pub const SECTION_ALIGN: u64 = 64;
/// Alignment of a descriptor inside the constant section.
pub const DESC_ALIGN: u64 = 8;

// Header field offsets.
const AT_VERSION: usize = 8;
const AT_HEADER_LEN: usize = 12;
const AT_MANIFEST_LEN: usize = 16;
const AT_FILE_LEN: usize = 24;
const AT_CHECKSUM: usize = 32;
const AT_TRAILER_LEN: usize = 40;
const AT_RESERVED: usize = 44;

/// Size of the signature trailer of a signed file (the header's trailer length: 0 or this).
pub const SIGNATURE_TRAILER_BYTES: usize = 128;
/// The first 8 bytes of a signature trailer.
pub const SIGNATURE_MAGIC: [u8; 8] = *b"SPSIGN1\0";
/// ed25519 public key and signature sizes, and where they sit in the trailer.
pub const PUBLIC_KEY_BYTES: usize = 32;
pub const SIGNATURE_BYTES: usize = 64;
const TRAILER_AT_KEY: usize = 8;
const TRAILER_AT_SIGNATURE: usize = TRAILER_AT_KEY + PUBLIC_KEY_BYTES;
const TRAILER_AT_RESERVED: usize = TRAILER_AT_SIGNATURE + SIGNATURE_BYTES;

/// Everything about a compiled model except the bulk bytes, which live in sections.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The sparsec version that wrote the file (informational).
    pub compiler_version: String,
    /// The model's name (informational).
    pub model_name: String,
    /// What the code was compiled for.
    pub target: Target,
    /// The model's inputs, in call order.
    pub inputs: Vec<TensorSpec>,
    /// The model's outputs, in result order.
    pub outputs: Vec<TensorSpec>,
    /// The largest batch the code was compiled and checked for (at least 1).
    pub max_batch: u32,
    /// The arena for batch `B` is `arena_bytes_per_image * B` bytes: every buffer's offset and
    /// size scale with `B`.
    pub arena_bytes_per_image: u64,
    /// Scratch memory per session, independent of the batch.
    pub scratch_bytes: u64,
    /// Every activation buffer in the arena.
    pub buffers: Vec<BufferSpec>,
    /// The kernel calls, in execution order.
    pub steps: Vec<Step>,
    /// Packed weights (read by kernels through each descriptor's `*_off` fields).
    pub weights: Section,
    /// Constants: the `abi` descriptors, found by each step's `desc_offset`.
    pub consts: Section,
    /// Generated CPU code, when compiled for [`Backend::Cpu`].
    pub cpu_code: Option<CpuCode>,
    /// CUDA code, when compiled for [`Backend::Cuda`].
    pub cuda: Option<CudaCode>,
}

/// The machine the code needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// Which executor runs the model.
    pub backend: Backend,
    /// `std::env::consts::ARCH` of the machine: `"x86_64"` or `"aarch64"` for a CPU model.
    pub arch: String,
    /// The CPU features the code needs, e.g. `["sse4.1", "avx2", "fma"]`; see
    /// [`KNOWN_X86_FEATURES`].
    pub features: Vec<String>,
}

/// Which executor runs the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Backend {
    /// Generated native code calling the runtime's CPU kernels.
    Cpu,
    /// CUDA kernels.
    Cuda,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Cpu => "CPU",
            Backend::Cuda => "CUDA",
        })
    }
}

/// A model input or output: one f32 tensor of `shape` per image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    /// The name from the source model.
    pub name: String,
    /// Per image `[C, H, W]`.
    pub shape: [u32; 3],
    /// Index into [`Manifest::buffers`]; that buffer's `bytes_per_image` is `C * H * W * 4`.
    pub buffer: u32,
}

/// The element type of an activation buffer. Model inputs and outputs, and every buffer of a
/// CPU model, are [`Element::F32`]; a CUDA model compiled with `--precision bf16` keeps a
/// buffer in BF16 when every reader of it rounds it to BF16 anyway (the compiler's
/// `backend/cuda/storage.rs` decides).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Element {
    /// IEEE binary32.
    #[default]
    F32,
    /// bfloat16: the upper half of a binary32, rounded to nearest even when written.
    Bf16,
}

impl Element {
    /// Bytes per element.
    pub fn bytes(self) -> u64 {
        match self {
            Element::F32 => 4,
            Element::Bf16 => 2,
        }
    }
}

impl fmt::Display for Element {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Element::F32 => "f32",
            Element::Bf16 => "bf16",
        })
    }
}

/// One activation buffer. For batch `B` it lives at `arena + offset_per_image * B` and holds
/// `bytes_per_image * B` bytes laid out `[B, C, H, W]`, each value one `element`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BufferSpec {
    /// A multiple of [`SECTION_ALIGN`], so the buffer is 64-byte aligned for every batch.
    pub offset_per_image: u64,
    /// A multiple of the element's size; `offset_per_image + bytes_per_image` is at most
    /// [`Manifest::arena_bytes_per_image`].
    pub bytes_per_image: u64,
    pub element: Element,
}

impl BufferSpec {
    /// Elements per image (`bytes_per_image` is a whole number of them in a parsed file).
    pub fn elements_per_image(&self) -> u64 {
        self.bytes_per_image / self.element.bytes()
    }

    /// The buffer's byte offset in the arena for `batch` images (`None` on overflow).
    pub fn offset(&self, batch: u64) -> Option<u64> {
        self.offset_per_image.checked_mul(batch)
    }

    /// The buffer's size in bytes for `batch` images (`None` on overflow).
    pub fn bytes(&self, batch: u64) -> Option<u64> {
        self.bytes_per_image.checked_mul(batch)
    }
}

/// One kernel call (made for every image of the batch by the generated code).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Which kernel, and so which descriptor type is at `desc_offset`.
    pub kind: StepKind,
    /// The source layer's name, for errors and profiles.
    pub label: String,
    /// Byte offset into the constant section of the `abi` descriptor ([`ConvDesc`],
    /// [`PoolDesc`] or [`LinearDesc`] by `kind`), a multiple of [`DESC_ALIGN`].
    pub desc_offset: u64,
    /// The buffer written.
    pub output: u32,
    /// The buffers read, in piece order (at least one).
    pub pieces: Vec<u32>,
    /// Floating-point operations per image (for reports).
    pub flops_per_image: u64,
}

/// The kernel a [`Step`] calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StepKind {
    /// [`ConvDesc`].
    Conv,
    /// [`PoolDesc`].
    Pool,
    /// [`LinearDesc`].
    Linear,
}

impl StepKind {
    /// The size in bytes of this kind's descriptor.
    pub const fn descriptor_bytes(self) -> u64 {
        match self {
            StepKind::Conv => size_of::<ConvDesc>() as u64,
            StepKind::Pool => size_of::<PoolDesc>() as u64,
            StepKind::Linear => size_of::<LinearDesc>() as u64,
        }
    }
}

/// A byte range of the data area.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    /// Offset **relative to the start of the data area** (see the module docs), a multiple of
    /// [`SECTION_ALIGN`]. [`ModelFile::section`] adds the base.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Generated CPU code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuCode {
    /// Position-independent machine code (no relocations).
    pub code: Section,
    /// Offset of the `abi::Forward` entry point within `code`.
    pub entry_offset: u64,
}

/// CUDA code: one blob per architecture and, per step, its launch variants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CudaCode {
    /// The NVRTC version that compiled the blobs, `"major.minor"`.
    pub nvrtc_version: String,
    /// `(arch, bytes)`: arch like `"sm_90"` for a cubin or `"ptx"` for PTX text.
    pub blobs: Vec<(String, Section)>,
    /// Per step, in step order, its launch variants ordered by `up_to_batch`: a batch runs
    /// the first variant that serves it (a convolution has a latency variant for small
    /// batches and a throughput variant; other steps have one).
    pub launches: Vec<Vec<CudaLaunch>>,
}

impl CudaCode {
    /// Which launch variant of step `step` runs `batch` images: the first whose
    /// `up_to_batch` is at least `batch`, else the last (`validate` checks the last serves
    /// `max_batch`). `None` when the step has no launch (rejected by `validate`).
    pub fn variant(&self, step: usize, batch: u32) -> Option<usize> {
        let variants = self.launches.get(step)?;
        let last = variants.len().checked_sub(1)?;
        Some(
            variants
                .iter()
                .position(|l| batch <= l.up_to_batch)
                .unwrap_or(last),
        )
    }
}

/// How a step's kernel is launched for a batch `B`: `kernel<<<(ceil(B * x_per_image /
/// x_per_block), grid_y, 1), block, shared_bytes>>>(arena, weights, B)`. The kernel walks the
/// `B * x_per_image` work items of grid x (pixels, pooled values, images) across the whole
/// batch, so small maps still fill the GPU at large batches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CudaLaunch {
    /// The `extern "C"` kernel name in every blob.
    pub kernel: String,
    /// The largest batch this variant serves.
    pub up_to_batch: u32,
    /// Work items per image along grid x.
    pub x_per_image: u32,
    /// Work items per block along grid x.
    pub x_per_block: u32,
    /// Grid y (output-channel tiles of a convolution, else 1).
    pub grid_y: u32,
    /// Threads per block (x only).
    pub block: u32,
    /// Dynamic shared memory in bytes.
    pub shared_bytes: u32,
}

/// The largest batch of a CUDA model.
pub const CUDA_MAX_BATCH: u32 = 65_535;

impl CudaLaunch {
    /// The grid `[x, y, z]` for `batch` images; `None` when the work items of the batch pass
    /// 2^32 - 1 (kernels index them in 32 bits) or grid x passes 2^31 - 1.
    pub fn grid(&self, batch: u32) -> Option<[u32; 3]> {
        let items = u64::from(batch) * u64::from(self.x_per_image);
        if items > u64::from(u32::MAX) || self.x_per_block == 0 {
            return None;
        }
        let x = items.div_ceil(u64::from(self.x_per_block));
        (1..=i32::MAX as u64)
            .contains(&x)
            .then_some([x as u32, self.grid_y, 1])
    }

    /// Checks the launch against CUDA's limits for every batch up to `max_batch`; the reason
    /// when it breaks one.
    pub fn check(&self, max_batch: u32) -> Result<(), String> {
        let name_ok = !self.kernel.is_empty()
            && self.kernel.len() <= 256
            && self
                .kernel
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !self.kernel.as_bytes()[0].is_ascii_digit();
        if !name_ok {
            return Err(format!(
                "kernel name {:?} is not a C identifier",
                self.kernel
            ));
        }
        if !(1..=1024).contains(&self.block) {
            return Err(format!("block of {} threads (1 to 1024)", self.block));
        }
        if self.x_per_image == 0 || self.x_per_block == 0 {
            return Err(format!(
                "{} work items per image, {} per block (both at least 1)",
                self.x_per_image, self.x_per_block
            ));
        }
        let batch = max_batch.clamp(1, self.up_to_batch.max(1));
        if self.grid(batch).is_none() {
            return Err(format!(
                "{} work items per image at batch {batch} pass the grid's limits",
                self.x_per_image
            ));
        }
        if self.grid_y == 0 || self.grid_y > 65_535 {
            return Err(format!("grid y {} (1 to 65535)", self.grid_y));
        }
        if self.shared_bytes > 48 * 1024 {
            return Err(format!(
                "{} bytes of dynamic shared memory (at most 49152)",
                self.shared_bytes
            ));
        }
        Ok(())
    }
}

impl Manifest {
    /// The arena size in bytes for `batch` images (`None` on overflow).
    pub fn arena_bytes(&self, batch: u64) -> Option<u64> {
        self.arena_bytes_per_image.checked_mul(batch)
    }
}

// ---------------------------------------------------------------------------------------------
// Descriptors

/// An `abi` descriptor struct, decoded from and encoded to its little-endian file bytes field by
/// field at the field offsets of its `#[repr(C)]` layout (taken with `offset_of!`, so the bytes
/// in the file are exactly the in-memory struct on a little-endian machine). No `unsafe`.
///
/// Every descriptor's size is a multiple of [`DESC_ALIGN`] (96, 80 and 64 bytes), so a
/// compiler that encodes descriptors back to back into the constant section, starting at 0,
/// keeps every `desc_offset` aligned.
pub trait Descriptor: Copy + Sized {
    /// The step kind that uses this descriptor.
    const KIND: StepKind;
    /// `size_of::<Self>()`: the number of bytes in the file.
    const SIZE: usize;
    /// Decodes the first [`Self::SIZE`] bytes; `None` if there are fewer.
    fn decode(bytes: &[u8]) -> Option<Self>;
    /// Appends the [`Self::SIZE`] bytes of `self`.
    fn encode(&self, out: &mut Vec<u8>);
}

/// A step's descriptor, by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepDesc {
    Conv(ConvDesc),
    Pool(PoolDesc),
    Linear(LinearDesc),
}

impl StepDesc {
    /// `(pieces, output floats, input plane, combine, input channels)` per image: what the
    /// descriptor says its kernel reads and writes.
    fn io(&self) -> (u32, u64, u64, u32, u32) {
        match self {
            StepDesc::Conv(d) => (
                d.n_pieces,
                u64::from(d.out_channels) * u64::from(d.out_h) * u64::from(d.out_w),
                u64::from(d.in_h) * u64::from(d.in_w),
                d.combine,
                d.in_channels,
            ),
            StepDesc::Pool(d) => (
                d.n_pieces,
                u64::from(d.channels) * u64::from(d.out_h) * u64::from(d.out_w),
                u64::from(d.in_h) * u64::from(d.in_w),
                d.combine,
                d.channels,
            ),
            StepDesc::Linear(d) => (
                d.n_pieces,
                u64::from(d.out_features),
                u64::from(d.in_h) * u64::from(d.in_w),
                d.combine,
                d.in_channels,
            ),
        }
    }
}

impl Manifest {
    /// The executors (CPU and CUDA) run models with exactly one input and one output.
    pub fn check_one_input_one_output(&self) -> Result<(), LoadError> {
        if self.inputs.len() != 1 || self.outputs.len() != 1 {
            return Err(LoadError::Tensor {
                role: "input",
                index: 0,
                name: self.model_name.clone(),
                reason: format!(
                    "this runtime runs models with one input and one output; this one has {} and {}",
                    self.inputs.len(),
                    self.outputs.len()
                ),
            });
        }
        Ok(())
    }

    /// Checks a run's input (`input_len` floats for `batch` images) against the model, for
    /// every executor; returns the floats per image.
    pub fn check_input(&self, input_len: usize, batch: usize) -> Result<usize, crate::RunError> {
        use crate::RunError;
        if batch == 0 {
            return Err(RunError::ZeroBatch);
        }
        if batch > self.max_batch as usize {
            return Err(RunError::Batch {
                batch,
                max: self.max_batch as usize,
            });
        }
        let spec = self.inputs.first().ok_or(RunError::InputCount {
            expected: 1,
            found: 0,
        })?;
        let per_image: usize = spec.shape.iter().map(|&d| d as usize).product();
        let expected = per_image.saturating_mul(batch);
        if input_len != expected {
            return Err(RunError::InputLength {
                name: spec.name.clone(),
                expected,
                found: input_len,
            });
        }
        Ok(per_image)
    }
}

/// Checks step `index`'s descriptor against the buffers the manifest gives it: as many pieces
/// as the descriptor says, an output buffer of exactly the size the kernel writes, and pieces
/// that make up the kernel's input (a concatenation: whole planes adding up to it; a sum: each
/// the whole input). Every executor runs this before anything runs, beside its own geometry
/// and weights checks; the kernels rely on it for every pointer they derive from a piece.
pub fn check_step_buffers(m: &Manifest, index: usize, desc: &StepDesc) -> Result<(), String> {
    let step = m.steps.get(index).ok_or("step out of range")?;
    // Per buffer: its elements per image (a whole number: checked by `parse`).
    let elements = |b: u32| {
        m.buffers
            .get(b as usize)
            .map(BufferSpec::elements_per_image)
    };
    let out = elements(step.output).ok_or("output buffer out of range")?;
    let pieces: Vec<u64> = step
        .pieces
        .iter()
        .map(|&p| elements(p).ok_or("piece buffer out of range"))
        .collect::<Result<_, _>>()?;
    let (n_pieces, out_elems, plane, combine, channels) = desc.io();
    if n_pieces as usize != step.pieces.len() {
        return Err(format!(
            "descriptor has {n_pieces} pieces, the step lists {}",
            step.pieces.len()
        ));
    }
    if out_elems != out {
        return Err(format!(
            "output buffer holds {out} values per image, the kernel writes {out_elems}"
        ));
    }
    let total = pieces.iter().try_fold(0u64, |a, &p| a.checked_add(p));
    let input = u64::from(channels).checked_mul(plane);
    let fits = match (combine, input) {
        (abi::COMBINE_CONCAT, Some(input)) => {
            total == Some(input) && pieces.iter().all(|p| plane > 0 && p % plane == 0)
        }
        (abi::COMBINE_SUM, Some(input)) => pieces.iter().all(|&p| p == input),
        _ => false,
    };
    if !fits {
        return Err(format!(
            "input pieces ({pieces:?} values per image) do not match the kernel's input \
             ({input:?} values)"
        ));
    }
    Ok(())
}

fn read_array<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..at.checked_add(N)?)?.try_into().ok()
}

macro_rules! descriptor {
    ($ty:ident, $kind:expr, { $($field:ident: $fty:ty),* $(,)? }) => {
        // Every field is listed (the struct literal below would not compile otherwise) and the
        // fields cover the struct without padding, so `encode` writes every byte.
        const _: () = assert!(0 $(+ size_of::<$fty>())* == size_of::<$ty>());
        const _: () = assert!(size_of::<$ty>().is_multiple_of(DESC_ALIGN as usize));

        impl Descriptor for $ty {
            const KIND: StepKind = $kind;
            const SIZE: usize = size_of::<$ty>();

            fn decode(bytes: &[u8]) -> Option<Self> {
                let bytes = bytes.get(..Self::SIZE)?;
                Some($ty {
                    $($field: <$fty>::from_le_bytes(read_array(bytes, offset_of!($ty, $field))?),)*
                })
            }

            fn encode(&self, out: &mut Vec<u8>) {
                let start = out.len();
                out.resize(start + Self::SIZE, 0);
                $(
                    let at = start + offset_of!($ty, $field);
                    // In bounds: offset_of + size_of <= SIZE for every field of the struct.
                    out[at..at + size_of::<$fty>()].copy_from_slice(&self.$field.to_le_bytes());
                )*
            }
        }
    };
}

descriptor!(ConvDesc, StepKind::Conv, {
    in_channels: u32, in_h: u32, in_w: u32, out_channels: u32, out_h: u32, out_w: u32,
    kernel_h: u32, kernel_w: u32, stride_h: u32, stride_w: u32, pad_h: u32, pad_w: u32,
    combine: u32, flags: u32, n_pieces: u32, reserved: u32,
    weight_off: u64, bias_off: u64, scale_off: u64, shift_off: u64,
});
descriptor!(PoolDesc, StepKind::Pool, {
    channels: u32, in_h: u32, in_w: u32, out_h: u32, out_w: u32, kernel_h: u32, kernel_w: u32,
    stride_h: u32, stride_w: u32, pad_h: u32, pad_w: u32, kind: u32, combine: u32, flags: u32,
    n_pieces: u32, reserved: u32, scale_off: u64, shift_off: u64,
});
descriptor!(LinearDesc, StepKind::Linear, {
    in_channels: u32, in_h: u32, in_w: u32, out_features: u32, combine: u32, flags: u32,
    n_pieces: u32, reserved: u32, weight_off: u64, bias_off: u64, scale_off: u64, shift_off: u64,
});

// ---------------------------------------------------------------------------------------------
// Writing

/// Builds a `model.bin`: add the section bytes, put the returned [`Section`]s into the
/// [`Manifest`], then [`Writer::finish`].
///
/// ```
/// use runtime::format::{Backend, Manifest, ModelFile, Target, Writer};
///
/// let mut w = Writer::new();
/// let weights = w.add_section(&[1, 2, 3]);
/// let consts = w.add_section(&[]);
/// let manifest = Manifest {
///     compiler_version: "0.1.0".into(),
///     model_name: "empty".into(),
///     target: Target { backend: Backend::Cpu, arch: "x86_64".into(), features: vec![] },
///     inputs: vec![],
///     outputs: vec![],
///     max_batch: 1,
///     arena_bytes_per_image: 0,
///     scratch_bytes: 0,
///     buffers: vec![],
///     steps: vec![],
///     weights,
///     consts,
///     cpu_code: None,
///     cuda: None,
/// };
/// let bytes = w.finish(&manifest)?; // checked by `ModelFile::parse` already
/// let file = ModelFile::parse(&bytes)?;
/// assert_eq!(file.weights(), &[1, 2, 3]);
/// assert_eq!(file.manifest, manifest);
/// # Ok::<(), runtime::error::LoadError>(())
/// ```
#[derive(Debug, Default, Clone)]
pub struct Writer {
    data: Vec<u8>,
}

impl Writer {
    /// An empty data area.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `bytes` to the data area at the next multiple of [`SECTION_ALIGN`] and returns
    /// where they went (offset relative to the data area, as the manifest stores it).
    pub fn add_section(&mut self, bytes: &[u8]) -> Section {
        pad_to_align(&mut self.data);
        let offset = self.data.len() as u64;
        self.data.extend_from_slice(bytes);
        Section {
            offset,
            len: bytes.len() as u64,
        }
    }

    /// Lays out header, manifest, padding and the data area, computes the checksum, and then
    /// checks the result with [`ModelFile::parse`]: the writer never produces a file the reader
    /// would reject (target and descriptor contents aside), and says why in the same terms.
    pub fn finish(self, manifest: &Manifest) -> Result<Vec<u8>, LoadError> {
        let manifest_bytes =
            postcard::to_allocvec(manifest).map_err(|e| LoadError::Manifest(e.to_string()))?;
        let bytes = assemble(&manifest_bytes, &self.data);
        ModelFile::parse(&bytes)?;
        Ok(bytes)
    }
}

fn pad_to_align(v: &mut Vec<u8>) {
    let align = SECTION_ALIGN as usize;
    v.resize(v.len().div_ceil(align) * align, 0);
}

/// Header + manifest bytes + padding + data area, with a correct checksum. No validation.
fn assemble(manifest: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + manifest.len() + data.len() + 64);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(HEADER_BYTES as u32).to_le_bytes());
    out.extend_from_slice(&(manifest.len() as u64).to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes()); // file length, below
    out.extend_from_slice(&0u64.to_le_bytes()); // checksum, below
    out.extend_from_slice(&0u32.to_le_bytes()); // trailer length: unsigned
    out.resize(HEADER_BYTES, 0); // reserved
    out.extend_from_slice(manifest);
    pad_to_align(&mut out);
    out.extend_from_slice(data);
    let file_len = out.len() as u64;
    out[AT_FILE_LEN..AT_FILE_LEN + 8].copy_from_slice(&file_len.to_le_bytes());
    seal(&mut out);
    out
}

/// Recomputes and stores the checksum of a buffer of at least [`HEADER_BYTES`] bytes (does
/// nothing to a shorter one): over the sealed bytes, i.e. all but the trailer its header
/// declares (all of it if that length is larger than the buffer). Public because the checksum
/// is no secret: anyone can reseal an edited file (the fuzz targets and the trust tests do),
/// so it catches accidents, never attacks.
pub fn seal(bytes: &mut [u8]) {
    let trailer = bytes
        .first_chunk::<HEADER_BYTES>()
        .map_or(0, |h| le_u32(h, AT_TRAILER_LEN) as usize);
    let sealed = bytes.len().checked_sub(trailer).unwrap_or(bytes.len());
    if let Some((header, body)) = bytes[..sealed].split_first_chunk::<HEADER_BYTES>() {
        let sum = checksum(header, body);
        bytes[AT_CHECKSUM..AT_CHECKSUM + 8].copy_from_slice(&sum.to_le_bytes());
    }
}

/// Turns the sealed bytes of a valid file (`Header::sealed_len` bytes, no trailer) into the
/// sealed part of a signed file: trailer length and file length set in the header, checksum
/// recomputed. What a signer then signs; [`append_trailer`] completes the file.
pub(crate) fn prepare_signed(sealed: &mut [u8]) {
    let trailer = SIGNATURE_TRAILER_BYTES as u32;
    let file_len = (sealed.len() + SIGNATURE_TRAILER_BYTES) as u64;
    if sealed.len() >= HEADER_BYTES {
        sealed[AT_TRAILER_LEN..AT_TRAILER_LEN + 4].copy_from_slice(&trailer.to_le_bytes());
        sealed[AT_FILE_LEN..AT_FILE_LEN + 8].copy_from_slice(&file_len.to_le_bytes());
        let (header, body) = sealed.split_at(HEADER_BYTES);
        if let Ok(header) = <&[u8; HEADER_BYTES]>::try_from(header) {
            let sum = checksum(header, body);
            sealed[AT_CHECKSUM..AT_CHECKSUM + 8].copy_from_slice(&sum.to_le_bytes());
        }
    }
}

/// Appends the signature trailer to bytes made by [`prepare_signed`].
pub(crate) fn append_trailer(
    out: &mut Vec<u8>,
    key: &[u8; PUBLIC_KEY_BYTES],
    signature: &[u8; SIGNATURE_BYTES],
) {
    out.extend_from_slice(&SIGNATURE_MAGIC);
    out.extend_from_slice(key);
    out.extend_from_slice(signature);
    out.resize(
        out.len() + (SIGNATURE_TRAILER_BYTES - TRAILER_AT_RESERVED),
        0,
    );
}

/// xxh3-64 of the whole file with the 8 checksum bytes taken as zero.
fn checksum(header: &[u8; HEADER_BYTES], body: &[u8]) -> u64 {
    let mut h = Xxh3Default::new();
    h.update(&header[..AT_CHECKSUM]);
    h.update(&[0u8; 8]);
    h.update(&header[AT_CHECKSUM + 8..]);
    h.update(body);
    h.digest()
}

// ---------------------------------------------------------------------------------------------
// Reading

/// Reads a file into memory (no validation: pass the bytes to [`ModelFile::parse`]).
pub fn read(path: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A validated `model.bin`: every index, offset and length in `manifest` has been checked
/// against the file and against each other (see [`ModelFile::parse`]).
#[derive(Clone)]
pub struct ModelFile<'a> {
    /// The decoded, validated manifest.
    pub manifest: Manifest,
    /// The whole file, signature trailer included.
    pub bytes: &'a [u8],
    /// The signature trailer, if the file has one (not verified here: `crate::signature`).
    pub signature: Option<SignatureTrailer>,
    data_base: usize,
    sealed_len: usize,
}

/// A signed file's trailer: the signer's ed25519 public key and its signature over the sealed
/// bytes (`bytes[..Header::sealed_len]`, the header included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignatureTrailer {
    pub key: [u8; PUBLIC_KEY_BYTES],
    pub signature: [u8; SIGNATURE_BYTES],
}

/// What the 64 header bytes say, checked on their own (see [`Header::parse`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The declared manifest length.
    pub manifest_len: u64,
    /// Bytes covered by the checksum and by a signature: the file without its trailer.
    pub sealed_len: usize,
    /// The signature trailer, if the header declares one.
    pub trailer: Option<SignatureTrailer>,
}

impl Header {
    /// Checks the header alone, and finds the trailer: length at least the header; magic;
    /// format version; header length; reserved bytes zero; file-length field equals the
    /// actual length; trailer length 0 or [`SIGNATURE_TRAILER_BYTES`]; a declared trailer has
    /// its magic and zero reserved bytes. Reads nothing else of the file (no checksum, no
    /// manifest): what a signature check needs before anything else is interpreted.
    pub fn parse(bytes: &[u8]) -> Result<Header, LoadError> {
        let file_len = bytes.len() as u64;
        let header = bytes
            .first_chunk::<HEADER_BYTES>()
            .ok_or(LoadError::TooShort { len: bytes.len() })?;
        let found: [u8; 8] = *header.first_chunk::<8>().unwrap_or(&[0; 8]);
        if found != MAGIC {
            return Err(LoadError::BadMagic { found });
        }
        let version = le_u32(header, AT_VERSION);
        if version != FORMAT_VERSION {
            return Err(LoadError::Version {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let header_len = le_u32(header, AT_HEADER_LEN);
        if header_len != HEADER_BYTES as u32 {
            return Err(LoadError::HeaderLength {
                found: header_len,
                expected: HEADER_BYTES as u32,
            });
        }
        if let Some((i, &value)) = header[AT_RESERVED..]
            .iter()
            .enumerate()
            .find(|(_, b)| **b != 0)
        {
            return Err(LoadError::Reserved {
                offset: AT_RESERVED + i,
                value,
            });
        }
        let declared = le_u64(header, AT_FILE_LEN);
        if declared != file_len {
            return Err(LoadError::Length {
                declared,
                actual: file_len,
            });
        }
        let trailer_len = le_u32(header, AT_TRAILER_LEN);
        if trailer_len != 0 && trailer_len != SIGNATURE_TRAILER_BYTES as u32 {
            return Err(LoadError::Trailer(format!(
                "the header declares a trailer of {trailer_len} bytes; a signature trailer \
                 has {SIGNATURE_TRAILER_BYTES} (0: unsigned)"
            )));
        }
        let sealed_len = bytes
            .len()
            .checked_sub(trailer_len as usize)
            .filter(|&s| s >= HEADER_BYTES)
            .ok_or_else(|| {
                LoadError::Trailer(format!(
                    "a {trailer_len} byte trailer does not fit a {file_len} byte file"
                ))
            })?;
        let trailer = match bytes.get(sealed_len..) {
            Some(t) if trailer_len > 0 => Some(parse_trailer(t)?),
            _ => None,
        };
        Ok(Header {
            manifest_len: le_u64(header, AT_MANIFEST_LEN),
            sealed_len,
            trailer,
        })
    }
}

fn parse_trailer(t: &[u8]) -> Result<SignatureTrailer, LoadError> {
    let (Some(magic), Some(key), Some(signature), Some(reserved)) = (
        t.first_chunk::<8>(),
        t.get(TRAILER_AT_KEY..)
            .and_then(|k| k.first_chunk::<PUBLIC_KEY_BYTES>()),
        t.get(TRAILER_AT_SIGNATURE..)
            .and_then(|k| k.first_chunk::<SIGNATURE_BYTES>()),
        t.get(TRAILER_AT_RESERVED..SIGNATURE_TRAILER_BYTES),
    ) else {
        return Err(LoadError::Trailer(format!(
            "the trailer is {} bytes, not {SIGNATURE_TRAILER_BYTES}",
            t.len()
        )));
    };
    if *magic != SIGNATURE_MAGIC {
        return Err(LoadError::Trailer(format!(
            "the trailer starts with {magic:02x?}, not the signature magic {SIGNATURE_MAGIC:02x?}"
        )));
    }
    if let Some(i) = reserved.iter().position(|&b| b != 0) {
        return Err(LoadError::Trailer(format!(
            "reserved trailer byte {} is not zero",
            TRAILER_AT_RESERVED + i
        )));
    }
    Ok(SignatureTrailer {
        key: *key,
        signature: *signature,
    })
}

/// Shows the manifest and the sizes, not the (possibly many megabytes of) file bytes.
impl fmt::Debug for ModelFile<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelFile")
            .field("manifest", &self.manifest)
            .field("file_len", &self.bytes.len())
            .field("data_base", &self.data_base)
            .field("signed", &self.signature.is_some())
            .finish()
    }
}

fn le_u32(h: &[u8; HEADER_BYTES], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&h[at..at + 4]); // `at` is one of the constant field offsets above.
    u32::from_le_bytes(a)
}

fn le_u64(h: &[u8; HEADER_BYTES], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&h[at..at + 8]); // `at` is one of the constant field offsets above.
    u64::from_le_bytes(a)
}

impl<'a> ModelFile<'a> {
    /// Validates `bytes` completely and decodes the manifest. The checks, in order, each with
    /// its own [`LoadError`] variant: length at least the header; magic; format version; header
    /// length; reserved bytes zero; file-length field equals the actual length; checksum;
    /// manifest inside the file; manifest decodes (and fills its declared length exactly);
    /// every section in the data area and 64-aligned, the CPU entry inside its code; every
    /// buffer 64-aligned, a whole number of f32 and inside the per-image arena; every input and
    /// output names a buffer of exactly its size; every step names existing buffers (at least
    /// one piece, the output overlapping none of them) and a descriptor that lies inside the
    /// constant section, 8-aligned; `max_batch >= 1`; the arena for `max_batch` fits in memory.
    pub fn parse(bytes: &'a [u8]) -> Result<ModelFile<'a>, LoadError> {
        let head = Header::parse(bytes)?;
        // `Header::parse` checked HEADER_BYTES <= sealed_len <= bytes.len().
        let sealed = bytes.get(..head.sealed_len).unwrap_or_default();
        let file_len = sealed.len() as u64;
        let (header, body) = sealed
            .split_first_chunk::<HEADER_BYTES>()
            .ok_or(LoadError::TooShort { len: sealed.len() })?;
        let stored = le_u64(header, AT_CHECKSUM);
        let computed = checksum(header, body);
        if stored != computed {
            return Err(LoadError::Checksum { stored, computed });
        }

        let manifest_len = le_u64(header, AT_MANIFEST_LEN);
        let manifest_end = (HEADER_BYTES as u64).checked_add(manifest_len);
        let data_base = manifest_end
            .and_then(|end| end.checked_next_multiple_of(SECTION_ALIGN))
            .filter(|&base| base <= file_len);
        let (Some(manifest_end), Some(data_base)) = (manifest_end, data_base) else {
            return Err(LoadError::ManifestLength {
                manifest_len,
                data_base: manifest_end
                    .and_then(|e| e.checked_next_multiple_of(SECTION_ALIGN))
                    .unwrap_or(u64::MAX),
                file_len,
            });
        };
        // Both are <= file_len = sealed.len(), so they fit in usize and the ranges are in
        // bounds.
        let (manifest_end, data_base) = (manifest_end as usize, data_base as usize);
        let manifest_bytes = sealed.get(HEADER_BYTES..manifest_end).unwrap_or_default();
        let data = sealed.get(data_base..).unwrap_or_default();

        let (manifest, rest) = postcard::take_from_bytes::<Manifest>(manifest_bytes)
            .map_err(|e| LoadError::Manifest(e.to_string()))?;
        if !rest.is_empty() {
            return Err(LoadError::Manifest(format!(
                "the manifest ends {} bytes before its declared length of {manifest_len}",
                rest.len()
            )));
        }

        validate(&manifest, data.len() as u64, data_base as u64, file_len)?;
        Ok(ModelFile {
            manifest,
            bytes,
            signature: head.trailer,
            data_base,
            sealed_len: head.sealed_len,
        })
    }

    /// The sealed bytes: the file without its signature trailer.
    pub fn sealed(&self) -> &'a [u8] {
        self.bytes.get(..self.sealed_len).unwrap_or_default()
    }

    /// File offset of the data area (section offsets are relative to it); a multiple of 64.
    pub fn data_base(&self) -> usize {
        self.data_base
    }

    /// The bytes of a section of this file's manifest (all in bounds, checked by `parse`). A
    /// `Section` that is not from this manifest and lies outside the file gives an empty slice.
    pub fn section(&self, s: &Section) -> &'a [u8] {
        self.try_section(s).unwrap_or_default()
    }

    /// The bytes of `s`, or `None` if it lies outside the data area.
    pub fn try_section(&self, s: &Section) -> Option<&'a [u8]> {
        let start = self
            .data_base
            .checked_add(usize::try_from(s.offset).ok()?)?;
        let end = start.checked_add(usize::try_from(s.len).ok()?)?;
        self.sealed().get(start..end)
    }

    /// The weights section.
    pub fn weights(&self) -> &'a [u8] {
        self.section(&self.manifest.weights)
    }

    /// The constant section (descriptors).
    pub fn consts(&self) -> &'a [u8] {
        self.section(&self.manifest.consts)
    }

    /// The CPU code section and the entry offset within it, if the file has CPU code.
    pub fn cpu_code(&self) -> Option<(&'a [u8], u64)> {
        let c = self.manifest.cpu_code.as_ref()?;
        Some((self.section(&c.code), c.entry_offset))
    }

    /// The descriptor of type `T` at byte `offset` of the constant section, or `None` if it
    /// does not fit there. Contents are not validated.
    pub fn descriptor<T: Descriptor>(&self, offset: u64) -> Option<T> {
        T::decode(self.consts().get(usize::try_from(offset).ok()?..)?)
    }

    /// The descriptor of step `index`, of the type its kind calls for (`None` only for an
    /// index past the steps: `parse` checked that every step's descriptor fits).
    pub fn step_descriptor(&self, index: usize) -> Option<StepDesc> {
        let step = self.manifest.steps.get(index)?;
        let at = step.desc_offset;
        Some(match step.kind {
            StepKind::Conv => StepDesc::Conv(self.descriptor(at)?),
            StepKind::Pool => StepDesc::Pool(self.descriptor(at)?),
            StepKind::Linear => StepDesc::Linear(self.descriptor(at)?),
        })
    }
}

/// The structural checks behind the checksum (everything after the manifest decodes).
fn validate(m: &Manifest, data_len: u64, data_base: u64, file_len: u64) -> Result<(), LoadError> {
    // Sections.
    let mut sections: Vec<(String, Section)> =
        vec![("weights".into(), m.weights), ("consts".into(), m.consts)];
    if let Some(c) = &m.cpu_code {
        sections.push(("cpu_code".into(), c.code));
    }
    if let Some(c) = &m.cuda {
        for (i, (arch, s)) in c.blobs.iter().enumerate() {
            sections.push((format!("cuda blob {i} ({arch:?})"), *s));
        }
    }
    for (name, s) in sections {
        let reason = if !s.offset.is_multiple_of(SECTION_ALIGN) {
            Some(format!("is not {SECTION_ALIGN}-byte aligned"))
        } else if s.offset.checked_add(s.len).is_none_or(|end| end > data_len) {
            Some(format!("ends past the {data_len} byte data area"))
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(LoadError::Section {
                name,
                offset: s.offset,
                len: s.len,
                data_base,
                file_len,
                reason,
            });
        }
    }
    if let Some(c) = &m.cpu_code
        && c.entry_offset >= c.code.len
    {
        return Err(LoadError::Entry {
            offset: c.entry_offset,
            code_len: c.code.len,
        });
    }

    // Buffers.
    for (index, b) in m.buffers.iter().enumerate() {
        let fail = |reason: String| Err(LoadError::Buffer { index, reason });
        if !b.offset_per_image.is_multiple_of(SECTION_ALIGN) {
            return fail(format!(
                "offset_per_image {} is not a multiple of {SECTION_ALIGN}",
                b.offset_per_image
            ));
        }
        if !b.bytes_per_image.is_multiple_of(b.element.bytes()) {
            return fail(format!(
                "bytes_per_image {} is not a whole number of {}",
                b.bytes_per_image, b.element
            ));
        }
        if b.element != Element::F32 && m.target.backend == Backend::Cpu {
            return fail(format!(
                "a {} buffer in a CPU model (its kernels read f32 only)",
                b.element
            ));
        }
        match b.offset_per_image.checked_add(b.bytes_per_image) {
            Some(end) if end <= m.arena_bytes_per_image => {}
            end => {
                let end = end.map_or("overflows".into(), |e| e.to_string());
                return fail(format!(
                    "offset_per_image {} + bytes_per_image {} = {end}, past \
                     arena_bytes_per_image {}",
                    b.offset_per_image, b.bytes_per_image, m.arena_bytes_per_image
                ));
            }
        }
    }

    // Inputs and outputs.
    for (role, specs) in [("input", &m.inputs), ("output", &m.outputs)] {
        for (index, t) in specs.iter().enumerate() {
            let fail = |reason: String| {
                Err(LoadError::Tensor {
                    role,
                    index,
                    name: t.name.clone(),
                    reason,
                })
            };
            let Some(b) = m.buffers.get(t.buffer as usize) else {
                return fail(format!(
                    "buffer {} does not exist ({} buffers)",
                    t.buffer,
                    m.buffers.len()
                ));
            };
            if b.element != Element::F32 {
                return fail(format!(
                    "buffer {} holds {}; a model's inputs and outputs are f32",
                    t.buffer, b.element
                ));
            }
            let bytes = t
                .shape
                .iter()
                .try_fold(4u64, |acc, &d| acc.checked_mul(u64::from(d)));
            if bytes != Some(b.bytes_per_image) {
                let bytes = bytes.map_or("overflowing".into(), |n| n.to_string());
                return fail(format!(
                    "shape {:?} needs {bytes} bytes per image but buffer {} has {}",
                    t.shape, t.buffer, b.bytes_per_image
                ));
            }
        }
    }

    // Steps.
    let consts_len = m.consts.len;
    for (index, s) in m.steps.iter().enumerate() {
        let fail = |reason: String| Err(LoadError::Step { index, reason });
        let Some(out) = m.buffers.get(s.output as usize) else {
            return fail(format!(
                "output buffer {} does not exist ({} buffers)",
                s.output,
                m.buffers.len()
            ));
        };
        if s.pieces.is_empty() {
            return fail("has no input pieces".into());
        }
        for &p in &s.pieces {
            let Some(inp) = m.buffers.get(p as usize) else {
                return fail(format!(
                    "input buffer {p} does not exist ({} buffers)",
                    m.buffers.len()
                ));
            };
            // Both ranges are inside the arena (checked above), so the sums do not overflow.
            let overlaps = inp.offset_per_image < out.offset_per_image + out.bytes_per_image
                && out.offset_per_image < inp.offset_per_image + inp.bytes_per_image;
            if overlaps {
                return fail(format!(
                    "output buffer {} overlaps input buffer {p}",
                    s.output
                ));
            }
        }
        let size = s.kind.descriptor_bytes();
        let reason = if !s.desc_offset.is_multiple_of(DESC_ALIGN) {
            Some(format!(
                "offset {} is not {DESC_ALIGN}-byte aligned",
                s.desc_offset
            ))
        } else if s
            .desc_offset
            .checked_add(size)
            .is_none_or(|end| end > consts_len)
        {
            Some(format!(
                "{:?} descriptor of {size} bytes at offset {} ends past the {consts_len} byte \
                 constant section",
                s.kind, s.desc_offset
            ))
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(LoadError::Descriptor {
                step: index,
                reason,
            });
        }
    }

    // Batch.
    if m.max_batch == 0 {
        return Err(LoadError::MaxBatch);
    }
    if m.arena_bytes(u64::from(m.max_batch))
        .and_then(|n| usize::try_from(n).ok())
        .is_none()
    {
        return Err(LoadError::Arena {
            arena_bytes_per_image: m.arena_bytes_per_image,
            max_batch: m.max_batch,
        });
    }
    validate_code(m)
}

/// The code matches the backend: a CUDA model has CUDA code and `max_batch` within the grid's
/// batch limit; CUDA code, wherever present, has at least one blob, each named `sm_XY` or `ptx`
/// once, and one valid launch per step.
fn validate_code(m: &Manifest) -> Result<(), LoadError> {
    let fail = |reason: String| Err(LoadError::Code { reason });
    if m.target.backend == Backend::Cuda {
        if m.cuda.is_none() {
            return fail("a CUDA model without CUDA code".into());
        }
        if m.max_batch > CUDA_MAX_BATCH {
            return fail(format!(
                "max_batch {} of a CUDA model is above {CUDA_MAX_BATCH} (the CUDA backend's batch limit)",
                m.max_batch
            ));
        }
    }
    let Some(c) = &m.cuda else {
        return Ok(());
    };
    if c.blobs.is_empty() {
        return fail("CUDA code without any cubin or PTX".into());
    }
    for (i, (arch, _)) in c.blobs.iter().enumerate() {
        let known = arch == "ptx"
            || arch.strip_prefix("sm_").is_some_and(|v| {
                (2..=4).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit())
            });
        if !known {
            return fail(format!(
                "CUDA blob {i} has an unknown architecture {arch:?}"
            ));
        }
        if c.blobs[..i].iter().any(|(a, _)| a == arch) {
            return fail(format!("CUDA blob {i}: a second blob for {arch:?}"));
        }
    }
    if c.launches.len() != m.steps.len() {
        return fail(format!(
            "{} CUDA launches for {} steps",
            c.launches.len(),
            m.steps.len()
        ));
    }
    for (i, variants) in c.launches.iter().enumerate() {
        let Some(last) = variants.last() else {
            return fail(format!("no CUDA launch for step {i}"));
        };
        if last.up_to_batch < m.max_batch {
            return fail(format!(
                "the CUDA launches of step {i} serve batches up to {}, below max_batch {}",
                last.up_to_batch, m.max_batch
            ));
        }
        if variants
            .windows(2)
            .any(|w| w[0].up_to_batch >= w[1].up_to_batch)
        {
            return fail(format!(
                "the CUDA launch variants of step {i} are not ordered by batch"
            ));
        }
        for l in variants {
            l.check(m.max_batch)
                .or_else(|reason| fail(format!("CUDA launch of step {i}: {reason}")))?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Target

/// The aarch64 feature names [`check_target`] understands (the names of
/// `is_aarch64_feature_detected!`).
pub const KNOWN_AARCH64_FEATURES: &[&str] = &["neon", "fp16", "dotprod"];

/// The x86-64 feature names [`check_target`] understands (the names of
/// `is_x86_feature_detected!`).
pub const KNOWN_X86_FEATURES: &[&str] = &[
    "sse2", "sse3", "ssse3", "sse4.1", "sse4.2", "popcnt", "avx", "avx2", "fma", "bmi1", "bmi2",
    "lzcnt",
];

/// Checks that this machine can run code compiled for `target`: for [`Backend::Cpu`], the
/// architecture equals `std::env::consts::ARCH` ([`LoadError::Architecture`] names both
/// otherwise) and every feature is detected at run time (a feature name not in
/// [`KNOWN_X86_FEATURES`] or [`KNOWN_AARCH64_FEATURES`] for this architecture is an error, not a
/// pass). The check applies to data-only loads too: a file built for another machine is refused
/// rather than half-trusted (its descriptors would run, its code never could). [`Backend::Cuda`] is
/// accepted here; the CUDA executor checks its device itself.
pub fn check_target(target: &Target) -> Result<(), LoadError> {
    if target.backend == Backend::Cuda {
        return Ok(());
    }
    if target.arch != std::env::consts::ARCH {
        return Err(LoadError::Architecture {
            file: target.arch.clone(),
            machine: std::env::consts::ARCH,
        });
    }
    for feature in &target.features {
        match cpu_has(feature) {
            Some(true) => {}
            Some(false) => {
                return Err(LoadError::UnsupportedCpu {
                    feature: feature.clone(),
                });
            }
            None => {
                return Err(LoadError::Target {
                    reason: format!(
                        "unknown CPU feature {feature:?} for {}; this runtime knows {:?}",
                        target.arch,
                        known_features()
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Whether this CPU has `feature`; `None` for a name this runtime does not know.
#[cfg(target_arch = "x86_64")]
fn cpu_has(feature: &str) -> Option<bool> {
    Some(match feature {
        "sse2" => is_x86_feature_detected!("sse2"),
        "sse3" => is_x86_feature_detected!("sse3"),
        "ssse3" => is_x86_feature_detected!("ssse3"),
        "sse4.1" => is_x86_feature_detected!("sse4.1"),
        "sse4.2" => is_x86_feature_detected!("sse4.2"),
        "popcnt" => is_x86_feature_detected!("popcnt"),
        "avx" => is_x86_feature_detected!("avx"),
        "avx2" => is_x86_feature_detected!("avx2"),
        "fma" => is_x86_feature_detected!("fma"),
        "bmi1" => is_x86_feature_detected!("bmi1"),
        "bmi2" => is_x86_feature_detected!("bmi2"),
        "lzcnt" => is_x86_feature_detected!("lzcnt"),
        _ => return None,
    })
}

/// Whether this CPU has `feature`; `None` for a name this runtime does not know.
#[cfg(target_arch = "aarch64")]
fn cpu_has(feature: &str) -> Option<bool> {
    Some(match feature {
        "neon" => std::arch::is_aarch64_feature_detected!("neon"),
        "fp16" => std::arch::is_aarch64_feature_detected!("fp16"),
        "dotprod" => std::arch::is_aarch64_feature_detected!("dotprod"),
        _ => return None,
    })
}

/// No CPU feature names are known off x86-64 and aarch64.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn cpu_has(_feature: &str) -> Option<bool> {
    None
}

/// The feature names this runtime knows for its own architecture.
fn known_features() -> &'static [&'static str] {
    match std::env::consts::ARCH {
        "x86_64" => KNOWN_X86_FEATURES,
        "aarch64" => KNOWN_AARCH64_FEATURES,
        _ => &[],
    }
}

#[cfg(test)]
pub(crate) mod tests;

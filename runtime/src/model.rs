//! The public runtime API: [`Model`] (a validated, mapped model.bin, shared by threads) and
//! [`Session`] (one thread's arena and scratch; `run` allocates nothing once its arena has
//! grown to the batch size it is asked for).
//!
//! Loading validates everything before any code is made executable: magic, version, checksum
//! and structure (`format`), the target's architecture and CPU features, and every step's
//! descriptor against its buffers and the weights section (`cpu::kernels::validate_*`).
//! Must not contain kernels or format parsing.

use crate::abi;
use crate::cpu::code::ExecutableCode;
use crate::cpu::kernels;
use crate::error::{LoadError, RunError};
use crate::format::{self, Backend, Manifest, ModelFile, StepDesc, TensorSpec};
use std::path::Path;

/// 64-byte aligned, zero-initialised bytes (weights, constants, arena, scratch).
struct AlignedBytes {
    blocks: Vec<Block>,
    len: usize,
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Block([u8; 64]);

impl AlignedBytes {
    fn zeroed(len: usize) -> AlignedBytes {
        AlignedBytes {
            blocks: vec![Block([0; 64]); len.div_ceil(64).max(1)],
            len,
        }
    }

    fn from_slice(bytes: &[u8]) -> AlignedBytes {
        let mut a = AlignedBytes::zeroed(bytes.len());
        a.as_mut_slice()[..bytes.len()].copy_from_slice(bytes);
        a
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        let len = self.len;
        self.blocks.as_flattened_mut_bytes(len)
    }

    fn as_ptr(&self) -> *const u8 {
        self.blocks.as_ptr().cast()
    }

    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.blocks.as_mut_ptr().cast()
    }
}

trait Flatten {
    fn as_flattened_mut_bytes(&mut self, len: usize) -> &mut [u8];
}

impl Flatten for Vec<Block> {
    fn as_flattened_mut_bytes(&mut self, len: usize) -> &mut [u8] {
        let flat: &mut [[u8; 64]] =
            // SAFETY: `Block` is `repr(C)` around `[u8; 64]` (alignment only adds no padding to
            // a 64-byte array), so a slice of blocks is a slice of byte arrays.
            unsafe { std::slice::from_raw_parts_mut(self.as_mut_ptr().cast(), self.len()) };
        &mut flat.as_flattened_mut()[..len]
    }
}

/// A loaded model: validated manifest, weights and constants in aligned memory, generated
/// code mapped read+execute. `Send + Sync`: every field is immutable after `load`.
pub struct Model {
    manifest: Manifest,
    weights: AlignedBytes,
    consts: AlignedBytes,
    code: ExecutableCode,
    entry: usize,
    kernels: [usize; abi::KERNEL_COUNT],
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.manifest.model_name)
            .field("inputs", &self.manifest.inputs)
            .field("outputs", &self.manifest.outputs)
            .field("max_batch", &self.manifest.max_batch)
            .finish_non_exhaustive()
    }
}

impl Model {
    /// Reads and loads a model.bin file.
    pub fn load(path: impl AsRef<Path>) -> Result<Model, LoadError> {
        let bytes = format::read(path.as_ref())?;
        Model::from_bytes(&bytes)
    }

    /// Validates and loads model.bin bytes. Nothing is mapped executable unless every check
    /// passes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Model, LoadError> {
        let file = ModelFile::parse(bytes)?;
        let m = &file.manifest;
        if m.target.backend != Backend::Cpu {
            return Err(LoadError::NoCode {
                backend: m.target.backend,
            });
        }
        format::check_target(&m.target)?;
        let Some((code, entry)) = file.cpu_code() else {
            return Err(LoadError::NoCode {
                backend: Backend::Cpu,
            });
        };
        let entry = usize::try_from(entry)
            .ok()
            .filter(|&e| e < code.len())
            .ok_or_else(|| {
                LoadError::Executable(format!(
                    "entry offset {entry} outside the {} code bytes",
                    code.len()
                ))
            })?;
        let weights_len = file.weights().len() as u64;
        for (i, step) in m.steps.iter().enumerate() {
            let desc = file
                .step_descriptor(i)
                .ok_or_else(|| LoadError::Descriptor {
                    step: i,
                    reason: "the descriptor does not fit the constant section".into(),
                })?;
            validate_step(m, i, step, &desc, weights_len)
                .map_err(|reason| LoadError::Descriptor { step: i, reason })?;
        }
        if m.inputs.len() != 1 || m.outputs.len() != 1 {
            return Err(LoadError::Tensor {
                role: "input",
                index: 0,
                name: m.model_name.clone(),
                reason: format!(
                    "this runtime runs models with one input and one output; this one has {} and {}",
                    m.inputs.len(),
                    m.outputs.len()
                ),
            });
        }
        let weights = AlignedBytes::from_slice(file.weights());
        let consts = AlignedBytes::from_slice(file.consts());
        let code = ExecutableCode::new(code)?;
        Ok(Model {
            manifest: m.clone(),
            weights,
            consts,
            code,
            entry,
            kernels: kernels::kernel_table(),
        })
    }

    pub fn name(&self) -> &str {
        &self.manifest.model_name
    }

    pub fn input(&self) -> &TensorSpec {
        &self.manifest.inputs[0]
    }

    pub fn output(&self) -> &TensorSpec {
        &self.manifest.outputs[0]
    }

    pub fn max_batch(&self) -> usize {
        self.manifest.max_batch as usize
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// A session for one thread. Cheap: the arena grows on first use.
    pub fn session(&self) -> Session<'_> {
        Session {
            model: self,
            arena: AlignedBytes::zeroed(0),
            scratch: AlignedBytes::zeroed(self.manifest.scratch_bytes as usize),
            table: self.kernels,
        }
    }
}

/// Checks one step's descriptor against the manifest's buffers and the weights section.
fn validate_step(
    m: &Manifest,
    index: usize,
    step: &format::Step,
    desc: &StepDesc,
    weights_len: u64,
) -> Result<(), String> {
    let bytes = |b: u32| m.buffers.get(b as usize).map(|s| s.bytes_per_image);
    let out = bytes(step.output).ok_or("output buffer out of range")?;
    let pieces: Vec<u64> = step
        .pieces
        .iter()
        .map(|&p| bytes(p).ok_or("piece buffer out of range"))
        .collect::<Result<_, _>>()?;
    let (n_pieces, out_elems, plane, combine, channels) = match desc {
        StepDesc::Conv(d) => {
            kernels::validate_conv(d, weights_len)?;
            let out = u64::from(d.out_channels) * u64::from(d.out_h) * u64::from(d.out_w);
            (
                d.n_pieces,
                out,
                u64::from(d.in_h) * u64::from(d.in_w),
                d.combine,
                d.in_channels,
            )
        }
        StepDesc::Pool(d) => {
            kernels::validate_pool(d, weights_len)?;
            let out = u64::from(d.channels) * u64::from(d.out_h) * u64::from(d.out_w);
            (
                d.n_pieces,
                out,
                u64::from(d.in_h) * u64::from(d.in_w),
                d.combine,
                d.channels,
            )
        }
        StepDesc::Linear(d) => {
            kernels::validate_linear(d, weights_len)?;
            (
                d.n_pieces,
                u64::from(d.out_features),
                u64::from(d.in_h) * u64::from(d.in_w),
                d.combine,
                d.in_channels,
            )
        }
    };
    if n_pieces as usize != step.pieces.len() {
        return Err(format!(
            "step {index}: descriptor has {n_pieces} pieces, the step lists {}",
            step.pieces.len()
        ));
    }
    if out_elems * 4 != out {
        return Err(format!(
            "step {index}: output buffer holds {out} bytes per image, the kernel writes {}",
            out_elems * 4
        ));
    }
    // Piece sizes must add up to the input (concat) or each equal it (sum), whole planes each.
    let total: u64 = pieces.iter().sum();
    let input = u64::from(channels) * plane * 4;
    let fits = match combine {
        abi::COMBINE_CONCAT => {
            total == input && pieces.iter().all(|p| plane > 0 && p % (plane * 4) == 0)
        }
        abi::COMBINE_SUM => pieces.iter().all(|&p| p == input),
        _ => false,
    };
    if !fits {
        return Err(format!(
            "step {index}: input pieces ({pieces:?} bytes) do not match the kernel's input ({input} bytes)"
        ));
    }
    Ok(())
}

/// One thread's working memory for a [`Model`].
pub struct Session<'m> {
    model: &'m Model,
    arena: AlignedBytes,
    scratch: AlignedBytes,
    table: [usize; abi::KERNEL_COUNT],
}

impl Session<'_> {
    /// Runs a batch: `input` holds `batch` images in NCHW order (`batch * C * H * W` floats).
    /// Returns the output (`batch * classes` floats), borrowed from the session's arena.
    /// NaN and infinity propagate as in PyTorch; they never crash.
    pub fn run(&mut self, input: &[f32], batch: usize) -> Result<&[f32], RunError> {
        let m = &self.model.manifest;
        if batch == 0 {
            return Err(RunError::ZeroBatch);
        }
        if batch > m.max_batch as usize {
            return Err(RunError::Batch {
                batch,
                max: m.max_batch as usize,
            });
        }
        let spec = &m.inputs[0];
        let per_image: usize = spec.shape.iter().map(|&d| d as usize).product();
        if input.len() != per_image * batch {
            return Err(RunError::InputLength {
                name: spec.name.clone(),
                expected: per_image * batch,
                found: input.len(),
            });
        }
        let b = batch as u64;
        // Load-time validation bounds every offset by arena_bytes_per_image * max_batch.
        let arena_len = (m.arena_bytes_per_image * b) as usize;
        if self.arena.len < arena_len {
            self.arena = AlignedBytes::zeroed(arena_len);
        }
        let in_buf = m.buffers[spec.buffer as usize];
        let at = (in_buf.offset_per_image * b) as usize;
        let dst = &mut self.arena.as_mut_slice()[at..at + input.len() * 4];
        for (d, v) in dst.chunks_exact_mut(4).zip(input) {
            d.copy_from_slice(&v.to_ne_bytes());
        }
        let forward_ptr = self.model.code.at(self.model.entry);
        // SAFETY: the code section was produced by sparsec for this ABI (checksum-verified,
        // target-checked) and maps read+execute for the model's lifetime; `entry` lies inside it.
        let forward: abi::Forward = unsafe { std::mem::transmute(forward_ptr) };
        // SAFETY: every pointer is valid for the sizes the validated manifest promises: the
        // arena holds `arena_bytes_per_image * batch` bytes, scratch `scratch_bytes`, weights
        // and constants their sections; the table holds KERNEL_COUNT kernel pointers.
        let status = unsafe {
            forward(
                self.table.as_ptr(),
                self.arena.as_mut_ptr(),
                self.model.weights.as_ptr(),
                self.model.consts.as_ptr(),
                self.scratch.as_mut_ptr(),
                b,
            )
        };
        if status != abi::STATUS_OK {
            // Generated code returns (failing step + 1) * 256 + the kernel's status.
            let step = (status / 256 - 1).max(0) as usize;
            let label = m
                .steps
                .get(step)
                .map_or_else(String::new, |s| s.label.clone());
            return Err(RunError::Kernel {
                step,
                label,
                status: status % 256,
            });
        }
        let out = &m.outputs[0];
        let out_buf = m.buffers[out.buffer as usize];
        let at = (out_buf.offset_per_image * b) as usize;
        let len = (out_buf.bytes_per_image * b) as usize / 4;
        let bytes = &self.arena.as_mut_slice()[at..at + len * 4];
        // SAFETY: the arena is 64-byte aligned and `at` is a multiple of 64 (plan offsets are),
        // so the bytes are f32-aligned; `len * 4` bytes lie inside the arena; f32 has no
        // invalid bit patterns.
        Ok(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<f32>(), len) })
    }
}

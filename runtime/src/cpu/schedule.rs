//! The data-only executor: runs a CPU model's schedule from its validated manifest, one kernel
//! call per step, with the operands' addresses computed here from the plan's buffer offsets.
//!
//! This is what the generated forward function does, without the generated code: a model.bin
//! whose native code is not trusted (unsigned, or the caller did not opt in) runs this way,
//! so nothing from the file is ever executed, and the manifest (validated at load, every
//! descriptor against its buffers) is the only source of addresses. Profiles step through the
//! same schedule with a clock around each call.
//!
//! Owns the step loop and operand addressing. Must not contain kernels, validation or
//! threading: the caller picks the kernel table, the context, the arena and the images.

use crate::abi::{self, Piece};
use crate::format::{BufferSpec, Manifest, StepDesc};

/// Pieces up to this count are passed from the stack; a step with more (a very wide dense
/// block) builds its list on the heap.
const STACK_PIECES: usize = 256;

/// One kernel call: its kind, descriptor offset, output buffer and pieces (buffer and
/// channels).
struct Call {
    kernel: usize,
    desc: usize,
    output: BufferSpec,
    pieces: Vec<(BufferSpec, u64)>,
}

/// Every step of a model as a kernel call.
pub(crate) struct Schedule {
    calls: Vec<Call>,
}

/// The model-wide operands of every call.
#[derive(Clone, Copy)]
pub(crate) struct Operands {
    pub weights: *const u8,
    pub consts: *const u8,
}

/// A kernel table and the context its kernels take: the scratch table with one member's
/// scratch, or the team table with the team.
#[derive(Clone, Copy)]
pub(crate) struct Kernels<'t> {
    pub table: &'t [usize; abi::KERNEL_COUNT],
    pub context: *mut u8,
}

impl Schedule {
    /// The schedule of a validated manifest (`descriptors[i]` is step i's, checked against its
    /// buffers by the loader).
    pub(crate) fn new(m: &Manifest, descriptors: &[StepDesc]) -> Schedule {
        let calls = m
            .steps
            .iter()
            .zip(descriptors)
            .map(|(step, desc)| {
                let (kernel, plane) = match desc {
                    StepDesc::Conv(d) => (abi::KERNEL_CONV, u64::from(d.in_h) * u64::from(d.in_w)),
                    StepDesc::Pool(d) => (abi::KERNEL_POOL, u64::from(d.in_h) * u64::from(d.in_w)),
                    StepDesc::Linear(d) => {
                        (abi::KERNEL_LINEAR, u64::from(d.in_h) * u64::from(d.in_w))
                    }
                };
                let buffer = |b: u32| m.buffers[b as usize];
                Call {
                    kernel,
                    desc: step.desc_offset as usize,
                    output: buffer(step.output),
                    pieces: step
                        .pieces
                        .iter()
                        .map(|&p| (buffer(p), buffer(p).bytes_per_image / 4 / plane.max(1)))
                        .collect(),
                }
            })
            .collect();
        Schedule { calls }
    }

    /// Steps in the schedule.
    pub(crate) fn len(&self) -> usize {
        self.calls.len()
    }

    /// Runs every step on image `image` of a batch of `batch` images laid out in `arena`, with
    /// `kernels`; `after(step)` runs after each call. Returns
    /// `abi::STATUS_OK`, or `(step + 1) * 256 + status` for the first failing kernel (as the
    /// generated code does).
    ///
    /// # Safety
    /// `arena` must hold the model's arena for `batch` images (`arena_bytes_per_image *
    /// batch` bytes) and `image < batch`; `kernels`' table and context must match (the scratch
    /// table with a member's scratch, the team table with the team); `operands` must be the model's
    /// sections; the schedule must come from the same validated model.
    pub(crate) unsafe fn run_image(
        &self,
        arena: *mut u8,
        batch: u64,
        image: u64,
        kernels: Kernels<'_>,
        operands: Operands,
        mut after: impl FnMut(usize),
    ) -> i32 {
        let at = |buf: BufferSpec| {
            arena
                .wrapping_add((buf.offset_per_image * batch + image * buf.bytes_per_image) as usize)
        };
        let mut stack = [Piece {
            ptr: std::ptr::null(),
            channels: 0,
        }; STACK_PIECES];
        let mut heap: Vec<Piece> = Vec::new();
        for (i, call) in self.calls.iter().enumerate() {
            let pieces: &mut [Piece] = if call.pieces.len() <= STACK_PIECES {
                &mut stack[..call.pieces.len()]
            } else {
                heap.resize(
                    call.pieces.len(),
                    Piece {
                        ptr: std::ptr::null(),
                        channels: 0,
                    },
                );
                &mut heap[..]
            };
            for (p, &(buf, channels)) in pieces.iter_mut().zip(&call.pieces) {
                *p = Piece {
                    ptr: at(buf).cast::<f32>().cast_const(),
                    channels,
                };
            }
            let out = at(call.output).cast::<f32>();
            let desc = operands.consts.wrapping_add(call.desc);
            let weights = operands.weights;
            let (f, context) = (kernels.table[call.kernel], kernels.context);
            // `table[kernel]` is a kernel of that kind (`kernel_table*`) and the descriptor at
            // `desc` is of the same kind (validated at load); the pieces and the output are the
            // step's buffers for this image in an arena sized for `batch` images (buffer ends
            // validated against the arena at load); `context` matches the table.
            // SAFETY: as above, and the caller's contract for the rest.
            let status = unsafe {
                match call.kernel {
                    abi::KERNEL_CONV => std::mem::transmute::<usize, abi::ConvKernel>(f)(
                        desc.cast(),
                        pieces.as_ptr(),
                        out,
                        weights,
                        context,
                    ),
                    abi::KERNEL_POOL => std::mem::transmute::<usize, abi::PoolKernel>(f)(
                        desc.cast(),
                        pieces.as_ptr(),
                        out,
                        weights,
                        context,
                    ),
                    _ => std::mem::transmute::<usize, abi::LinearKernel>(f)(
                        desc.cast(),
                        pieces.as_ptr(),
                        out,
                        weights,
                        context,
                    ),
                }
            };
            after(i);
            if status != abi::STATUS_OK {
                return (i as i32 + 1) * 256 + status;
            }
        }
        abi::STATUS_OK
    }
}

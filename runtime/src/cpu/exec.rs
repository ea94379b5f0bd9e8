//! The CPU executor behind the public API (`dispatch`), beside `cuda/exec.rs`: [`Model`] (a validated, mapped
//! model.bin, shared by threads) and [`Session`] (a team of threads with their arenas and
//! scratch; `run` allocates nothing once its memory has grown to the batch it is asked for).
//!
//! Loading validates everything before any code is made executable: magic, version, checksum
//! and structure (`format`), the target's architecture and CPU features, and every step's
//! descriptor against its buffers and the weights section (`cpu::kernels::validate_*`).
//! Must not contain kernels or format parsing.

use crate::abi;
use crate::aligned::AlignedBytes;
use crate::cpu::code::ExecutableCode;
use crate::cpu::kernels;
use crate::cpu::schedule::{Kernels, Operands, Schedule};
use crate::cpu::team::{MAX_PARTS, Team};
use crate::cpu::tuner::{Arm, Path, ThreadTuner, ThreadUse};
use crate::error::{LoadError, RunError};
use crate::format::{self, Backend, Manifest, ModelFile, StepDesc, TensorSpec};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Instant;

/// A loaded model: validated manifest, weights and constants in aligned memory, and either the
/// generated code mapped read+execute (only when the caller allowed it, [`crate::LoadOptions`]) or
/// the data-only schedule the runtime steps through itself. `Send + Sync`: every field is
/// immutable after `load`.
pub struct Model {
    pub(crate) manifest: Manifest,
    pub(crate) weights: AlignedBytes,
    pub(crate) consts: AlignedBytes,
    /// The generated forward function and its entry offset; `None`: run [`Model::schedule`].
    native: Option<(ExecutableCode, usize)>,
    /// Every step as a kernel call from the validated manifest.
    pub(crate) schedule: Schedule,
    /// Kernels for one thread (context: scratch) and for a team (context: the `Team`).
    pub(crate) kernels: [usize; abi::KERNEL_COUNT],
    pub(crate) team_kernels: [usize; abi::KERNEL_COUNT],
    /// Every step's validated descriptor (for profiles).
    pub(crate) descriptors: Vec<StepDesc>,
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
    /// Validates and loads model.bin bytes. Nothing is mapped executable unless every check
    /// passes and `native` (the loader's trust decision, `dispatch`) allows it.
    pub fn from_bytes(bytes: &[u8], native: bool) -> Result<Model, LoadError> {
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
        let mut descriptors = Vec::with_capacity(m.steps.len());
        let mut scratch_need = 0u64;
        for i in 0..m.steps.len() {
            let desc = file
                .step_descriptor(i)
                .ok_or_else(|| LoadError::Descriptor {
                    step: i,
                    reason: "the descriptor does not fit the constant section".into(),
                })?;
            validate_step(m, i, &desc, weights_len)
                .map_err(|reason| LoadError::Descriptor { step: i, reason })?;
            scratch_need = scratch_need.max(match &desc {
                StepDesc::Conv(d) => kernels::conv_scratch_bytes(d),
                StepDesc::Pool(d) => kernels::pool_scratch_bytes(d),
                StepDesc::Linear(d) => kernels::linear_scratch_bytes(d),
            });
            descriptors.push(desc);
        }
        // Kernels write up to their scratch need into each member's scratch: the file's
        // figure must cover the largest one (a smaller one would let a kernel write past it).
        if m.scratch_bytes < scratch_need {
            return Err(LoadError::Inconsistent(format!(
                "scratch_bytes {} is below the {scratch_need} bytes its kernels need",
                m.scratch_bytes
            )));
        }
        validate_lifetimes(m).map_err(LoadError::Inconsistent)?;
        // Every arena the session may allocate must be addressable.
        m.arena_bytes_per_image
            .checked_mul(u64::from(m.max_batch))
            .filter(|&b| b <= isize::MAX as u64)
            .ok_or_else(|| {
                LoadError::Inconsistent(format!(
                    "an arena of {} bytes per image for a batch of {} is not addressable",
                    m.arena_bytes_per_image, m.max_batch
                ))
            })?;
        m.check_one_input_one_output()?;
        let weights = AlignedBytes::from_slice(file.weights());
        let consts = AlignedBytes::from_slice(file.consts());
        let native = if native {
            Some((ExecutableCode::new(code)?, entry))
        } else {
            None
        };
        Ok(Model {
            manifest: m.clone(),
            weights,
            consts,
            native,
            schedule: Schedule::new(m, &descriptors),
            kernels: kernels::kernel_table(),
            team_kernels: kernels::kernel_table_team(),
            descriptors,
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

    /// Whether runs call the file's generated code (signed by a trusted key, or loaded with
    /// [`crate::LoadOptions::allow_unsigned_code`]), rather than the data-only schedule.
    pub fn runs_native_code(&self) -> bool {
        self.native.is_some()
    }

    /// A session running on `threads` threads (the caller's plus `threads - 1` of its own; 1:
    /// only the caller's).
    pub fn session_with_threads(&self, threads: usize) -> Session<'_> {
        Session {
            model: self,
            arena: AlignedBytes::zeroed(0),
            output: Vec::new(),
            threads: threads.max(1),
            within_budget: false,
            team: None,
            tuner: Box::new(ThreadTuner::new(adaptive_threads())),
        }
    }

    /// A session on up to [`default_threads`] threads: the caller's plus as many of its own as
    /// the process-wide worker budget leaves free when it starts (`cpu::team`), so sessions
    /// side by side share the cores rather than each taking all of them.
    pub fn session_within_budget(&self) -> Session<'_> {
        Session {
            within_budget: true,
            ..self.session_with_threads(default_threads())
        }
    }
}

/// Checks the plan itself: no two buffers that are live at the same step share arena bytes.
/// A buffer is live from the step that writes it (the input: from the start) to its last
/// reader (an output: to the end). Without this, a file whose buffers were moved would still
/// run inside the arena but give wrong answers silently; the compiler's planner never emits
/// such a plan.
fn validate_lifetimes(m: &Manifest) -> Result<(), String> {
    let n = m.buffers.len();
    let end = m.steps.len();
    let mut live: Vec<Option<(usize, usize)>> = vec![None; n];
    let mut touch = |b: u32, at: usize| -> Result<(), String> {
        let slot = live
            .get_mut(b as usize)
            .ok_or_else(|| format!("buffer {b} out of range"))?;
        *slot = Some(match *slot {
            Some((first, last)) => (first.min(at), last.max(at)),
            None => (at, at),
        });
        Ok(())
    };
    for spec in &m.inputs {
        touch(spec.buffer, 0)?;
    }
    for (i, step) in m.steps.iter().enumerate() {
        touch(step.output, i)?;
        for &p in &step.pieces {
            touch(p, i)?;
        }
    }
    for spec in &m.outputs {
        touch(spec.buffer, end)?;
    }
    let mut spans: Vec<(usize, usize, u64, u64, usize)> = live
        .iter()
        .enumerate()
        .filter_map(|(b, l)| {
            let (first, last) = (*l)?;
            let buf = m.buffers[b];
            let bytes_end = buf.offset_per_image.checked_add(buf.bytes_per_image)?;
            (buf.bytes_per_image > 0).then_some((first, last, buf.offset_per_image, bytes_end, b))
        })
        .collect();
    spans.sort_unstable();
    for (i, a) in spans.iter().enumerate() {
        // Sorted by first step: only later-starting spans that start before `a` ends can meet.
        for b in spans[i + 1..].iter().take_while(|b| b.0 <= a.1) {
            if a.2 < b.3 && b.2 < a.3 {
                return Err(format!(
                    "buffers {} (bytes {}..{}, steps {}..={}) and {} (bytes {}..{}, steps {}..={}) \
                     share arena bytes while both are live",
                    a.4, a.2, a.3, a.0, a.1, b.4, b.2, b.3, b.0, b.1
                ));
            }
        }
    }
    Ok(())
}

/// Checks one step's descriptor: its geometry and weight arrays (`kernels::validate_*`), and
/// against the manifest's buffers (`format::check_step_buffers`, shared with CUDA).
fn validate_step(
    m: &Manifest,
    index: usize,
    desc: &StepDesc,
    weights_len: u64,
) -> Result<(), String> {
    match desc {
        StepDesc::Conv(d) => kernels::validate_conv(d, weights_len)?,
        StepDesc::Pool(d) => kernels::validate_pool(d, weights_len)?,
        StepDesc::Linear(d) => kernels::validate_linear(d, weights_len)?,
    }
    format::check_step_buffers(m, index, desc).map_err(|e| format!("step {index}: {e}"))
}

/// The threads a session uses by default: `SPARSEC_THREADS` if set to a positive number, else
/// every core `std::thread::available_parallelism` reports.
pub fn default_threads() -> usize {
    std::env::var("SPARSEC_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// One caller's working memory for a [`Model`]: a [`Team`] of threads, each with a one-image
/// arena and kernel scratch, a batch arena and the output.
///
/// A batch of at least as many images as threads is tiled by images: each thread claims the
/// next range of images (`Team::run`), copies each into its own one-image arena, runs the whole forward pass on it
/// (its activations stay in that core's cache) and copies the output out. The plan may reuse
/// bytes between buffers that are not live at the same step, so two images at different steps
/// must never share an arena. A smaller batch runs in the batch arena, each convolution split
/// across the threads.
pub struct Session<'m> {
    pub(crate) model: &'m Model,
    pub(crate) arena: AlignedBytes,
    output: Vec<f32>,
    threads: usize,
    /// Take the threads beyond the caller's from the process-wide budget (up to `threads`).
    within_budget: bool,
    pub(crate) team: Option<Team>,
    /// Chooses, pass by pass, the whole team or the caller alone (`cpu::tuner`).
    tuner: Box<ThreadTuner>,
}

/// Where a pass left its output.
enum Output {
    /// In the batch arena, from this byte offset.
    Arena(usize),
    /// In the session's output vector.
    Vector,
}

/// Whether sessions choose their thread use by measurement (`cpu::tuner`): yes, unless
/// `SPARSEC_ADAPTIVE_THREADS=0` pins every pass to the whole team (for measuring the team
/// itself).
pub fn adaptive_threads() -> bool {
    std::env::var("SPARSEC_ADAPTIVE_THREADS").map_or(true, |v| v.trim() != "0")
}

/// The pointers every thread of a run passes to the forward function, as integers (`Sync`).
#[derive(Clone, Copy)]
struct ForwardArgs {
    forward: abi::Forward,
    arena: usize,
    weights: usize,
    consts: usize,
    batch: u64,
}

impl ForwardArgs {
    /// # Safety
    /// `table` and `context` must match (the scratch table with a member's scratch, the team
    /// table with the team) and `first..end` lie within the batch; the other pointers are the
    /// session's and model's, valid for the batch (see `Session::run`).
    unsafe fn call(&self, table: &[usize], context: *mut u8, first: u64, end: u64) -> i32 {
        // SAFETY: forwarded from the caller.
        unsafe {
            (self.forward)(
                table.as_ptr(),
                self.arena as *mut u8,
                self.weights as *const u8,
                self.consts as *const u8,
                context,
                self.batch,
                first,
                end,
            )
        }
    }
}

impl Session<'_> {
    /// Checks a batch against the model; returns the floats per input image.
    pub(crate) fn check_input(&self, input: &[f32], batch: usize) -> Result<usize, RunError> {
        self.model.manifest.check_input(input.len(), batch)
    }

    /// Starts the session's threads (once).
    pub(crate) fn start_team(&mut self) -> Result<(), RunError> {
        if self.team.is_none() {
            let m = &self.model.manifest;
            let new: fn(usize, usize, usize) -> std::io::Result<Team> = if self.within_budget {
                Team::within_budget
            } else {
                Team::new
            };
            let team = new(
                self.threads,
                m.arena_bytes_per_image as usize,
                m.scratch_bytes as usize,
            )
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::OutOfMemory => RunError::OutOfMemory {
                    what: "the session's per-thread arenas and scratch",
                    bytes: (m.arena_bytes_per_image as u128 + m.scratch_bytes as u128)
                        * self.threads as u128,
                },
                _ => RunError::Backend(format!("starting the session's threads: {e}")),
            })?;
            self.team = Some(team);
        }
        Ok(())
    }

    /// The threads this session runs on: once it has run, its team's; before, the most it
    /// will take.
    pub fn threads(&self) -> usize {
        self.team.as_ref().map_or(self.threads, Team::size)
    }

    /// Runs a batch: `input` holds `batch` images in NCHW order (`batch * C * H * W` floats).
    /// Returns the output (`batch * classes` floats), borrowed from the session's arena.
    /// NaN and infinity propagate as in PyTorch; they never crash. The first call starts the
    /// session's threads and sizes its arena; later calls with no larger batch allocate nothing.
    pub fn run(&mut self, input: &[f32], batch: usize) -> Result<&[f32], RunError> {
        self.start_team()?;
        let team_size = self.team.as_ref().map_or(1, Team::size);
        let choice = (team_size > 1).then(|| {
            let path = if batch < team_size {
                Path::SplitLayers
            } else {
                Path::TileImages
            };
            self.tuner.choose(path)
        });
        if let (Some(team), Some(c)) = (self.team.as_ref(), choice) {
            team.set_active(c.arm == Arm::Caller);
        }
        let start = Instant::now();
        let output = self.forward(input, batch)?;
        if let Some(c) = choice {
            self.tuner.record(c, start.elapsed().as_nanos(), batch);
        }
        let m = &self.model.manifest;
        let out_per_image = m.buffers[m.outputs[0].buffer as usize].bytes_per_image as usize / 4;
        let floats = out_per_image * batch;
        Ok(match output {
            Output::Vector => &self.output[..floats],
            Output::Arena(at) => {
                let bytes = &self.arena.as_mut_slice()[at..at + floats * 4];
                // SAFETY: the arena is 64-byte aligned and `at` is a multiple of 64 (plan
                // offsets are), so the bytes are f32-aligned; they lie inside the arena; f32
                // has no invalid bit patterns.
                unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<f32>(), floats) }
            }
        })
    }

    /// How many passes ran on the whole team and how many on the caller alone.
    pub fn thread_use(&self) -> ThreadUse {
        self.tuner.thread_use()
    }

    /// One forward pass on the team as set for it; says where the output is.
    fn forward(&mut self, input: &[f32], batch: usize) -> Result<Output, RunError> {
        let model = self.model;
        let m = &model.manifest;
        let per_image = self.check_input(input, batch)?;
        let spec = &m.inputs[0];
        let b = batch as u64;
        self.start_team()?;
        let Some(team) = self.team.as_ref() else {
            return Err(RunError::Backend("the session has no threads".into()));
        };
        let forward = match &model.native {
            Some((code, entry)) => {
                let forward_ptr = code.at(*entry);
                // The caller trusts this file's code: a trusted signature or
                // `LoadOptions::allow_unsigned_code` (see `dispatch`).
                // SAFETY: trusted code produced by sparsec for this ABI (checksum-verified,
                // target-checked), mapped read+execute for the model's lifetime; `entry` lies
                // inside it.
                Some(unsafe { std::mem::transmute::<*const u8, abi::Forward>(forward_ptr) })
            }
            None => None,
        };
        let operands = Operands {
            weights: model.weights.as_ptr(),
            consts: model.consts.as_ptr(),
        };
        let members = team.size();
        let in_buf = m.buffers[spec.buffer as usize];
        let out_spec = &m.outputs[0];
        let out_buf = m.buffers[out_spec.buffer as usize];
        let out_per_image = out_buf.bytes_per_image as usize / 4;
        // Every pointer below is valid for the sizes the validated manifest promises: a batch
        // arena holds `arena_bytes_per_image * batch` bytes, a member's arena one image's,
        // each member's scratch `scratch_bytes`, weights and constants their sections; the
        // tables hold KERNEL_COUNT kernels of the matching kind; image ranges lie in the batch.
        if batch < members {
            // Load-time validation bounds every offset by arena_bytes_per_image * max_batch,
            // and that product by isize::MAX.
            let arena_len = (m.arena_bytes_per_image * b) as usize;
            if self.arena.len() < arena_len {
                self.arena = AlignedBytes::try_zeroed(arena_len).ok_or(RunError::OutOfMemory {
                    what: "the batch arena",
                    bytes: arena_len as u128,
                })?;
            }
            let at = (in_buf.offset_per_image * b) as usize;
            let dst = &mut self.arena.as_mut_slice()[at..at + input.len() * 4];
            for (d, v) in dst.chunks_exact_mut(4).zip(input) {
                d.copy_from_slice(&v.to_ne_bytes());
            }
            let arena = self.arena.as_mut_ptr();
            let context = std::ptr::from_ref(team).cast_mut().cast::<u8>();
            let status = match forward {
                Some(forward) => {
                    let args = ForwardArgs {
                        forward,
                        arena: arena as usize,
                        weights: model.weights.as_ptr() as usize,
                        consts: model.consts.as_ptr() as usize,
                        batch: b,
                    };
                    // SAFETY: see above; the team table with the team, which runs no other job.
                    unsafe { args.call(&model.team_kernels, context, 0, b) }
                }
                None => {
                    let mut status = abi::STATUS_OK;
                    for image in 0..b {
                        // SAFETY: see above; the team table with the team, which runs no
                        // other job; `image` lies in the batch.
                        status = unsafe {
                            model.schedule.run_image(
                                arena,
                                b,
                                image,
                                Kernels {
                                    table: &model.team_kernels,
                                    context,
                                },
                                operands,
                                |_| {},
                            )
                        };
                        if status != abi::STATUS_OK {
                            break;
                        }
                    }
                    status
                }
            };
            check(m, status)?;
            return Ok(Output::Arena((out_buf.offset_per_image * b) as usize));
        }
        if self.output.len() < out_per_image * batch {
            let mut output = Vec::new();
            output
                .try_reserve_exact(out_per_image * batch)
                .map_err(|_| RunError::OutOfMemory {
                    what: "the output",
                    bytes: (out_per_image * batch * 4) as u128,
                })?;
            output.resize(out_per_image * batch, 0.0);
            self.output = output;
        }
        let args = forward.map(|forward| ForwardArgs {
            forward,
            arena: 0,
            weights: model.weights.as_ptr() as usize,
            consts: model.consts.as_ptr() as usize,
            batch: 1,
        });
        // As integers, so that the closure below is `Sync`; the model outlives the batch.
        let (weights_at, consts_at) = (
            model.weights.as_ptr() as usize,
            model.consts.as_ptr() as usize,
        );
        let output = self.output.as_mut_ptr() as usize;
        let (in_at, out_at) = (
            in_buf.offset_per_image as usize,
            out_buf.offset_per_image as usize,
        );
        let failed = AtomicI32::new(abi::STATUS_OK);
        // Contiguous image ranges, claimed by whichever member is free.
        let parts = batch.min(MAX_PARTS);
        let ok = team.run(parts, &|member, part| {
            let arena = team.arena(member);
            let args = args.map(|args| ForwardArgs {
                arena: arena as usize,
                ..args
            });
            let operands = Operands {
                weights: weights_at as *const u8,
                consts: consts_at as *const u8,
            };
            for image in part * batch / parts..(part + 1) * batch / parts {
                if failed.load(Ordering::Relaxed) != abi::STATUS_OK {
                    break;
                }
                let src = &input[image * per_image..][..per_image];
                // SAFETY: the input buffer lies in the member's one-image arena, 64-byte
                // aligned; only this member uses that arena.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        src.as_ptr(),
                        arena.add(in_at).cast::<f32>(),
                        per_image,
                    );
                }
                let scratch = team.scratch(member);
                let s = match &args {
                    // SAFETY: see above; the scratch table with this member's own scratch, one
                    // image in its own arena.
                    Some(args) => unsafe { args.call(&model.kernels, scratch, 0, 1) },
                    // SAFETY: as above, stepping through the validated schedule instead.
                    None => unsafe {
                        model.schedule.run_image(
                            arena,
                            1,
                            0,
                            Kernels {
                                table: &model.kernels,
                                context: scratch,
                            },
                            operands,
                            |_| {},
                        )
                    },
                };
                if s != abi::STATUS_OK {
                    let _ = failed.compare_exchange(
                        abi::STATUS_OK,
                        s,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    break;
                }
                // SAFETY: the output buffer lies in the member's arena; `image`'s row of the
                // session's output (`out_per_image * batch` floats) is written by this member
                // only.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        arena.add(out_at).cast::<f32>(),
                        (output as *mut f32).add(image * out_per_image),
                        out_per_image,
                    );
                }
            }
        });
        if !ok {
            return Err(RunError::Backend("a session thread panicked".into()));
        }
        check(m, failed.load(Ordering::Relaxed))?;
        Ok(Output::Vector)
    }
}

/// Turns the forward function's status into a result. Generated code returns (failing step +
/// 1) * 256 + the kernel's status.
pub(crate) fn check(m: &Manifest, status: i32) -> Result<(), RunError> {
    if status == abi::STATUS_OK {
        return Ok(());
    }
    let step = (status / 256 - 1).max(0) as usize;
    let label = m
        .steps
        .get(step)
        .map_or_else(String::new, |s| s.label.clone());
    Err(RunError::Kernel {
        step,
        label,
        status: status % 256,
    })
}

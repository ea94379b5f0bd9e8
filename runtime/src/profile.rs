//! Per-kernel profiles: [`Session::profile`] runs a batch on the same schedule as
//! [`Session::run`] (images tiled over the threads, or each convolution split between them for a
//! batch smaller than the team) and with the same kernels, stepping through the model's
//! data-only schedule (`cpu::schedule`) with a clock read after every call.
//! [`LayerKind`] sorts steps into the kinds a report sums over.
//!
//! Must not change what a kernel computes: a profiled batch gives the same bits as `run`.

use crate::abi;
use crate::cpu::exec::Session;
use crate::cpu::schedule::{Kernels, Operands};
use crate::error::RunError;
use crate::format::{Manifest, StepDesc, StepKind};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::Instant;

/// What a step is, for reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LayerKind {
    /// The first convolution (reads the model input).
    Stem,
    /// A 3x3 convolution inside a block.
    Conv3x3,
    /// A 1x1 convolution inside a block (a bottleneck).
    Conv1x1,
    /// Another convolution inside a block.
    ConvOther,
    /// A step of a transition between stages (pooling or its convolution).
    Transition,
    /// Another pooling step.
    Pool,
    /// The classifier (global pool and linear layer).
    Head,
}

impl LayerKind {
    /// Every kind, in report order.
    pub const ALL: [LayerKind; 7] = [
        LayerKind::Stem,
        LayerKind::Conv3x3,
        LayerKind::Conv1x1,
        LayerKind::ConvOther,
        LayerKind::Transition,
        LayerKind::Pool,
        LayerKind::Head,
    ];

    pub fn name(self) -> &'static str {
        match self {
            LayerKind::Stem => "stem",
            LayerKind::Conv3x3 => "3x3",
            LayerKind::Conv1x1 => "1x1",
            LayerKind::ConvOther => "other conv",
            LayerKind::Transition => "transition",
            LayerKind::Pool => "pool",
            LayerKind::Head => "head",
        }
    }

    /// The kind of step `index` with descriptor `desc` (its label's last word is its scope,
    /// e.g. `transition0`).
    pub(crate) fn of(m: &Manifest, desc: &StepDesc, index: usize) -> LayerKind {
        let step = &m.steps[index];
        let scope = step.label.rsplit(' ').next().unwrap_or("");
        let reads_input = step.pieces.iter().any(|&p| p == m.inputs[0].buffer);
        match desc {
            StepDesc::Linear(_) => LayerKind::Head,
            _ if scope.starts_with("transition") => LayerKind::Transition,
            _ if scope.starts_with("head") => LayerKind::Head,
            StepDesc::Pool(_) => LayerKind::Pool,
            StepDesc::Conv(_) if reads_input => LayerKind::Stem,
            StepDesc::Conv(d) => match (d.kernel_h, d.kernel_w) {
                (3, 3) => LayerKind::Conv3x3,
                (1, 1) => LayerKind::Conv1x1,
                _ => LayerKind::ConvOther,
            },
        }
    }
}

/// One step's share of a profiled batch.
#[derive(Clone, Debug)]
pub struct StepProfile {
    /// The step's label (`%id op scope`).
    pub label: String,
    pub kind: LayerKind,
    pub step_kind: StepKind,
    /// The step's descriptor (shapes, window, stride).
    pub desc: StepDesc,
    /// Floating-point operations for the whole batch.
    pub flops: u64,
    /// Wall time attributed to the step: the time its calls took on all threads, divided by the
    /// threads that ran them at once.
    pub seconds: f64,
}

/// A profiled batch.
#[derive(Clone, Debug)]
pub struct Profile {
    pub batch: usize,
    pub threads: usize,
    /// Wall time of the whole profiled batch.
    pub wall_seconds: f64,
    pub steps: Vec<StepProfile>,
}

impl Profile {
    /// `(kind, seconds, flops)` summed per kind, in [`LayerKind::ALL`] order, kinds with no step
    /// left out.
    pub fn by_kind(&self) -> Vec<(LayerKind, f64, u64)> {
        LayerKind::ALL
            .iter()
            .filter_map(|&k| {
                let steps = self.steps.iter().filter(|s| s.kind == k);
                let (t, f) = steps.fold((0.0, 0), |(t, f), s| (t + s.seconds, f + s.flops));
                self.steps.iter().any(|s| s.kind == k).then_some((k, t, f))
            })
            .collect()
    }
}

impl Session<'_> {
    /// Runs a batch like [`Session::run`], timing every kernel call. Slower than `run` by a
    /// clock read per call; the output is the same.
    pub fn profile(&mut self, input: &[f32], batch: usize) -> Result<Profile, RunError> {
        let per_image = self.check_input(input, batch)?;
        self.start_team()?;
        let model = self.model;
        let m = &model.manifest;
        let schedule = &model.schedule;
        let nanos: Vec<AtomicU64> = (0..schedule.len()).map(|_| AtomicU64::new(0)).collect();
        let Some(team) = self.team.as_ref() else {
            return Err(RunError::Backend("the session has no threads".into()));
        };
        // A profile times the whole team (the tuner's choice is for runs).
        team.set_active(false);
        let members = team.size();
        let in_buf = m.buffers[m.inputs[0].buffer as usize];
        // As integers, so that the closure below is `Sync`; the model outlives the batch.
        let weights = model.weights.as_ptr() as usize;
        let consts = model.consts.as_ptr() as usize;
        let failed = AtomicI32::new(abi::STATUS_OK);
        // Runs every step on image `image` of a batch of `b` in `arena`, with `table` and
        // `context`, adding each call's time to `nanos`.
        let steps = |arena: *mut u8,
                     b: u64,
                     image: u64,
                     table: &[usize; abi::KERNEL_COUNT],
                     context: *mut u8| {
            let operands = Operands {
                weights: weights as *const u8,
                consts: consts as *const u8,
            };
            let mut last = Instant::now();
            // SAFETY: `arena` holds the model's arena for `b` images and `image < b`; `table`
            // and `context` match (the callers below); the schedule and sections are the
            // model's.
            let status = unsafe {
                let kernels = Kernels { table, context };
                schedule.run_image(arena, b, image, kernels, operands, |i| {
                    let now = Instant::now();
                    nanos[i].fetch_add((now - last).as_nanos() as u64, Ordering::Relaxed);
                    last = now;
                })
            };
            if status != abi::STATUS_OK {
                let _ = failed.compare_exchange(
                    abi::STATUS_OK,
                    status,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
        };
        let wall = Instant::now();
        let sharing = if batch < members {
            let b = batch as u64;
            let arena_len = (m.arena_bytes_per_image * b) as usize;
            if self.arena.len() < arena_len {
                self.arena = crate::aligned::AlignedBytes::try_zeroed(arena_len).ok_or(
                    RunError::OutOfMemory {
                        what: "the batch arena",
                        bytes: arena_len as u128,
                    },
                )?;
            }
            let at = (in_buf.offset_per_image * b) as usize;
            let dst = &mut self.arena.as_mut_slice()[at..at + input.len() * 4];
            for (d, v) in dst.chunks_exact_mut(4).zip(input) {
                d.copy_from_slice(&v.to_ne_bytes());
            }
            let context = std::ptr::from_ref(team).cast_mut().cast::<u8>();
            for image in 0..b {
                steps(
                    self.arena.as_mut_ptr(),
                    b,
                    image,
                    &model.team_kernels,
                    context,
                );
            }
            1.0
        } else {
            let in_at = in_buf.offset_per_image as usize;
            let parts = batch.min(crate::cpu::team::MAX_PARTS);
            let ok = team.run(parts, &|member, part| {
                for image in part * batch / parts..(part + 1) * batch / parts {
                    if failed.load(Ordering::Relaxed) != abi::STATUS_OK {
                        break;
                    }
                    let arena = team.arena(member);
                    let src = &input[image * per_image..][..per_image];
                    // SAFETY: the input buffer lies in the member's one-image arena, which only
                    // this member uses.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            src.as_ptr(),
                            arena.add(in_at).cast::<f32>(),
                            per_image,
                        );
                    }
                    steps(arena, 1, 0, &model.kernels, team.scratch(member));
                }
            });
            if !ok {
                return Err(RunError::Backend("a session thread panicked".into()));
            }
            members.min(batch) as f64
        };
        let wall_seconds = wall.elapsed().as_secs_f64();
        crate::cpu::exec::check(m, failed.load(Ordering::Relaxed))?;
        let steps = m
            .steps
            .iter()
            .enumerate()
            .map(|(i, step)| StepProfile {
                label: step.label.clone(),
                kind: LayerKind::of(&model.manifest, &model.descriptors[i], i),
                step_kind: step.kind,
                desc: model.descriptors[i],
                flops: step.flops_per_image * batch as u64,
                seconds: nanos[i].load(Ordering::Relaxed) as f64 * 1e-9 / sharing,
            })
            .collect();
        Ok(Profile {
            batch,
            threads: members,
            wall_seconds,
            steps,
        })
    }
}

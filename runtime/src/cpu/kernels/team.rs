//! The team kernels: each convolution split into parts across a session's threads (claimed
//! by whichever member is free, each member's own parts first: [`Team::run`]); pools and the
//! linear layer run on the caller alone.
//!
//! Must not hold the numbers of a step: it only splits the work of the parent's kernels.

use super::*;

/// The kernel table for running one image on a [`Team`]: the context argument is a `*const
/// Team`. Function pointers as `usize`, in `abi::KERNEL_*` order.
pub fn kernel_table_team() -> [usize; abi::KERNEL_COUNT] {
    let mut t = [0; abi::KERNEL_COUNT];
    t[abi::KERNEL_CONV] = conv2d_team as abi::ConvKernel as usize;
    t[abi::KERNEL_POOL] = pool_team as abi::PoolKernel as usize;
    t[abi::KERNEL_LINEAR] = linear_team as abi::LinearKernel as usize;
    t
}

/// The smallest convolution (multiply-accumulates) split between members: below it the
/// fork-join (about a microsecond) costs more than the second core saves.
const SPLIT_MIN_MACS: usize = 1 << 17;

/// Parts of a split convolution per member of the team (1-4 tried: each part packs its own
/// input, and more parts were slower, docs/benchmarks.md). A member that starts late leaves
/// its part to the others (`Team::run`).
const PARTS_PER_MEMBER: usize = 1;

/// The pooling kernel for this CPU (the AVX2 and NEON entries fall back to portable code by
/// themselves).
fn best_pool() -> abi::PoolKernel {
    #[cfg(target_arch = "x86_64")]
    return pool_avx2;
    #[cfg(target_arch = "aarch64")]
    return pool_neon;
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    return pool_portable;
}

/// The linear kernel for this CPU (as [`best_pool`]).
fn best_linear() -> abi::LinearKernel {
    #[cfg(target_arch = "x86_64")]
    return linear_avx2;
    #[cfg(target_arch = "aarch64")]
    return linear_neon;
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    return linear_portable;
}

/// Part `part` of `parts` of a convolution, with AVX2+FMA (x86-64) or NEON (aarch64) where the
/// CPU has them.
fn conv_part(a: &mut ConvArgs<'_>, part: usize, parts: usize) {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        unsafe { avx2::conv(a, part, parts) };
        return;
    }
    #[cfg(target_arch = "aarch64")]
    if neon::available() {
        // SAFETY: the CPU has NEON (checked just above).
        unsafe { neon::conv(a, part, parts) };
        return;
    }
    conv_portable_body(a, part, parts);
}

/// A convolution's operands, shared by the members of a team.
struct ConvCall {
    desc: *const ConvDesc,
    pieces: *const Piece,
    out: *mut f32,
    weights: *const u8,
}

// SAFETY: the members only read the descriptor, pieces and weights, and write disjoint parts of
// the output (`ConvGeom::bands`); the caller keeps them all alive until every member is done.
unsafe impl Sync for ConvCall {}

/// Convolution on a team ([`abi::ConvKernel`]; the context is a `*const Team`): each member
/// packs the input its part of the output rows (or pixel runs) reads into its own scratch and
/// computes that part; the parts are disjoint.
///
/// # Safety
/// The kernel contract (module doc), with `team` a live [`Team`] whose members' scratch holds
/// the descriptor's scratch bytes, not running another job.
pub unsafe extern "C" fn conv2d_team(
    desc: *const ConvDesc,
    pieces: *const Piece,
    out: *mut f32,
    weights: *const u8,
    team: *mut u8,
) -> i32 {
    // SAFETY: a live team or null, by the contract.
    let Some(team) = (unsafe { team.cast::<Team>().as_ref() }) else {
        return abi::STATUS_BAD_DESCRIPTOR;
    };
    if !desc.is_aligned() {
        return abi::STATUS_BAD_DESCRIPTOR;
    }
    // SAFETY: aligned, and valid or null by the contract.
    let Some(Ok(g)) = (unsafe { desc.as_ref() }).map(conv_geom) else {
        return abi::STATUS_BAD_DESCRIPTOR;
    };
    let status = AtomicI32::new(abi::STATUS_OK);
    let call = ConvCall {
        desc,
        pieces,
        out,
        weights,
    };
    let run_part = |member: usize, part: usize, parts: usize| {
        let c = &call;
        // SAFETY: the kernel contract, forwarded; each member uses its own scratch, and the
        // parts of the output are disjoint (`ConvGeom::bands`), each run once.
        match unsafe { conv_args(c.desc, c.pieces, c.out, c.weights, team.scratch(member)) } {
            Some(mut a) => conv_part(&mut a, part, parts),
            None => status.store(abi::STATUS_BAD_DESCRIPTOR, Ordering::Relaxed),
        }
    };
    let members = team.active();
    // Parts of whole output rows (tile rows for Winograd, 16-pixel tiles when flat), a few per
    // member.
    let units = if g.winograd != 0 {
        winograd::units(&g)
    } else if g.flat {
        (g.oh * g.ow).div_ceil(2 * LANES)
    } else {
        g.oh
    };
    let parts = (PARTS_PER_MEMBER * members).min(units).min(MAX_PARTS);
    if members == 1 || parts < 2 || g.macs() < SPLIT_MIN_MACS {
        run_part(0, 0, 1);
    } else {
        let ok = team.run(parts, &|member, part| run_part(member, part, parts));
        if !ok {
            return abi::STATUS_BAD_DESCRIPTOR;
        }
    }
    status.load(Ordering::Relaxed)
}

/// Pooling on a team: on the caller, with member 0's scratch.
///
/// # Safety
/// As [`conv2d_team`].
pub unsafe extern "C" fn pool_team(
    desc: *const PoolDesc,
    pieces: *const Piece,
    out: *mut f32,
    weights: *const u8,
    team: *mut u8,
) -> i32 {
    // SAFETY: a live team or null, by the contract.
    let Some(team) = (unsafe { team.cast::<Team>().as_ref() }) else {
        return abi::STATUS_BAD_DESCRIPTOR;
    };
    let kernel = best_pool();
    // SAFETY: the kernel contract, forwarded with member 0's scratch.
    unsafe { kernel(desc, pieces, out, weights, team.scratch(0)) }
}

/// Linear layer on a team: on the caller, with member 0's scratch.
///
/// # Safety
/// As [`conv2d_team`].
pub unsafe extern "C" fn linear_team(
    desc: *const LinearDesc,
    pieces: *const Piece,
    out: *mut f32,
    weights: *const u8,
    team: *mut u8,
) -> i32 {
    // SAFETY: a live team or null, by the contract.
    let Some(team) = (unsafe { team.cast::<Team>().as_ref() }) else {
        return abi::STATUS_BAD_DESCRIPTOR;
    };
    let kernel = best_linear();
    // SAFETY: the kernel contract, forwarded with member 0's scratch.
    unsafe { kernel(desc, pieces, out, weights, team.scratch(0)) }
}

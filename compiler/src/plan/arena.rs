//! The static arena memory planner: one offset per buffer in a single arena, such that no two
//! buffers live at a common schedule step share a byte.
//!
//! It owns three things:
//! - offset assignment, [`plan`]: best-fit placement ("greedy by size", as in TFLite's arena
//!   planner and Pisarchyk & Lee 2020), run over several buffer orders as XLA's heap simulator
//!   does, keeping the smallest arena;
//! - the lower bound no assignment can beat, [`lower_bound`]: the most aligned bytes live at one
//!   step;
//! - the plan verifier, [`verify`].
//!
//! It must not touch the IR: it knows nothing of graphs, nodes or values. It takes plain
//! [`BufferRequest`]s (a size and an inclusive range of schedule steps), and a buffer is named by
//! its index in the request slice. Scheduling and liveness run first and produce the requests.
//!
//! Placement never scans every placed buffer (TFLite's planner does, O(n²)): an insert-only
//! segment tree over the schedule steps keeps, per node, the coalesced byte ranges of the
//! buffers placed there, so the bytes taken during a lifetime are the union of O(log steps)
//! sets. A densely packed arena keeps those sets small; a fragmented one makes a query gather
//! up to every overlapping buffer, which is what XLA's interval tree gathers anyway.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Every offset, every placed size and the arena size are multiples of this many bytes.
pub const ALIGN: u64 = 64;

/// One buffer to place: `size` bytes, live from schedule step `first` to `last` inclusive.
///
/// A request with `size == 0` or `last < first` is live at no byte or at no step: it takes no
/// space and gets offset 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferRequest {
    pub size: u64,
    pub first: u32,
    pub last: u32,
}

impl BufferRequest {
    /// Whether the buffer occupies bytes at some step.
    pub fn takes_space(&self) -> bool {
        self.size > 0 && self.first <= self.last
    }

    /// Whether both buffers take space and are live at a common step (steps are inclusive).
    pub fn conflicts_with(&self, other: &BufferRequest) -> bool {
        self.takes_space()
            && other.takes_space()
            && self.first <= other.last
            && other.first <= self.last
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArenaPlan {
    /// One per request, a multiple of [`ALIGN`]; 0 for requests that take no space.
    pub offsets: Vec<u64>,
    /// `max(offset + align(size))` over the requests that take space: a multiple of [`ALIGN`].
    pub arena_bytes: u64,
    /// [`lower_bound`] of the requests: no plan has a smaller arena.
    pub lower_bound_bytes: u64,
    /// The buffer order whose placement won: `"size"`, `"lifetime"`, `"first-use"` or `"area"`.
    pub strategy: &'static str,
}

/// `bytes` rounded up to a multiple of [`ALIGN`]. Sizes within 63 bytes of `u64::MAX` overflow
/// (a panic in debug builds); no buffer is that large.
pub fn align(bytes: u64) -> u64 {
    bytes.next_multiple_of(ALIGN)
}

/// The most aligned bytes live at any one step: no plan's arena is smaller.
pub fn lower_bound(requests: &[BufferRequest]) -> u64 {
    let spaced = || requests.iter().filter(|r| r.takes_space());
    let mut starts: Vec<(u32, u64)> = spaced().map(|r| (r.first, align(r.size))).collect();
    let mut ends: Vec<(u32, u64)> = spaced().map(|r| (r.last, align(r.size))).collect();
    starts.sort_unstable();
    ends.sort_unstable();
    let (mut live, mut peak) = (0u64, 0u64);
    let (mut s, mut e) = (0, 0);
    while let Some(&(step, _)) = starts.get(s) {
        // Every buffer ending before `step` started at or before its end, so it was added.
        while let Some(&(_, size)) = ends.get(e).filter(|&&(last, _)| last < step) {
            live -= size;
            e += 1;
        }
        while let Some(&(_, size)) = starts.get(s).filter(|&&(first, _)| first == step) {
            live += size;
            s += 1;
        }
        peak = peak.max(live);
    }
    peak
}

/// Places every request in one arena: best fit over several buffer orders, smallest arena wins
/// (the earlier strategy on a tie). The same requests always give the same plan.
///
/// Large inputs place the orders on scoped threads, one order per thread at a time; the result
/// does not depend on the thread count.
pub fn plan(requests: &[BufferRequest]) -> ArenaPlan {
    let timeline = Timeline::new(requests);
    let mut best: Option<(Strategy, Placement)> = None;
    for (strategy, placement) in place_all(requests, &timeline) {
        if best
            .as_ref()
            .is_none_or(|(_, b)| placement.arena_bytes < b.arena_bytes)
        {
            best = Some((strategy, placement));
        }
    }
    // `place_all` returns one placement per strategy and there are some, so `best` is set; the
    // fallback is never taken.
    let (strategy, placement) = best.unwrap_or((
        Strategy::Size,
        Placement {
            offsets: vec![0; requests.len()],
            arena_bytes: 0,
        },
    ));
    ArenaPlan {
        offsets: placement.offsets,
        arena_bytes: placement.arena_bytes,
        lower_bound_bytes: lower_bound(requests),
        strategy: strategy.name(),
    }
}

/// Below this many buffers that take space, one thread places every order.
const PARALLEL_MIN_BUFFERS: usize = 4096;

/// One placement per strategy, in [`Strategy::ALL`] order.
fn place_all(requests: &[BufferRequest], timeline: &Timeline) -> Vec<(Strategy, Placement)> {
    let threads = if timeline.spaced.len() < PARALLEL_MIN_BUFFERS {
        1
    } else {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(Strategy::ALL.len())
    };
    // Each thread takes the next strategy not yet taken, and places it with its own tree.
    let next = AtomicUsize::new(0);
    let run = || {
        let mut tree: Option<Occupancy> = None;
        let mut placements = Vec::new();
        while let Some(&strategy) = Strategy::ALL.get(next.fetch_add(1, Ordering::Relaxed)) {
            let tree = tree.get_or_insert_with(|| Occupancy::new(timeline.steps));
            let order = strategy.order(requests, &timeline.spaced);
            placements.push((strategy, place(requests, timeline, &order, tree)));
        }
        placements
    };
    let mut placements = std::thread::scope(|scope| {
        // A thread that cannot be spawned leaves its share to the others and this one.
        let spawned: Vec<_> = (1..threads)
            .filter_map(|_| std::thread::Builder::new().spawn_scoped(scope, run).ok())
            .collect();
        let mut placements = run();
        for thread in spawned {
            match thread.join() {
                Ok(more) => placements.extend(more),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        placements
    });
    placements.sort_by_key(|&(strategy, _)| strategy);
    placements
}

/// Why a plan is not valid for its requests. Buffers are named by their request index.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("the plan has {offsets} offsets for {requests} requests")]
    LengthMismatch { requests: usize, offsets: usize },
    #[error("the arena size {arena_bytes} is not a multiple of {ALIGN}")]
    MisalignedArena { arena_bytes: u64 },
    #[error("buffer {i} is at offset {offset}, not a multiple of {ALIGN}")]
    Misaligned { i: usize, offset: u64 },
    #[error("buffer {i} ends past the end of the arena")]
    OutOfArena { i: usize },
    #[error("the plan states a lower bound of {stated} bytes, the requests give {computed}")]
    LowerBound { stated: u64, computed: u64 },
    #[error("buffers {a} and {b} are live at a common step and share bytes")]
    Overlap { a: usize, b: usize },
}

/// Checks a plan against its requests: one offset per request, offsets and arena aligned, every
/// buffer inside the arena, the stated lower bound right, and no two buffers live at a common
/// step sharing a byte (`a < b` in the error). Buffers that take no space are only checked for
/// alignment. A sweep over the steps: O(n log n).
pub fn verify(requests: &[BufferRequest], plan: &ArenaPlan) -> Result<(), PlanError> {
    if plan.offsets.len() != requests.len() {
        return Err(PlanError::LengthMismatch {
            requests: requests.len(),
            offsets: plan.offsets.len(),
        });
    }
    if !plan.arena_bytes.is_multiple_of(ALIGN) {
        return Err(PlanError::MisalignedArena {
            arena_bytes: plan.arena_bytes,
        });
    }
    for (i, (request, &offset)) in requests.iter().zip(&plan.offsets).enumerate() {
        if !offset.is_multiple_of(ALIGN) {
            return Err(PlanError::Misaligned { i, offset });
        }
        let end = offset.checked_add(align(request.size));
        if request.takes_space() && end.is_none_or(|end| end > plan.arena_bytes) {
            return Err(PlanError::OutOfArena { i });
        }
    }
    let computed = lower_bound(requests);
    if plan.lower_bound_bytes != computed {
        return Err(PlanError::LowerBound {
            stated: plan.lower_bound_bytes,
            computed,
        });
    }

    let spaced: Vec<usize> = (0..requests.len())
        .filter(|&i| requests[i].takes_space())
        .collect();
    let mut starts = spaced.clone();
    starts.sort_unstable_by_key(|&i| (requests[i].first, i));
    let mut ends = spaced;
    ends.sort_unstable_by_key(|&i| (requests[i].last, i));
    // The buffers live at the current step, by offset: (end, index). They are pairwise
    // disjoint (each was checked on entry), so their offsets are distinct and each new buffer
    // need only be checked against its two neighbours.
    let mut live: BTreeMap<u64, (u64, usize)> = BTreeMap::new();
    let mut e = 0;
    for &i in &starts {
        let step = requests[i].first;
        while let Some(&j) = ends.get(e).filter(|&&j| requests[j].last < step) {
            live.remove(&plan.offsets[j]);
            e += 1;
        }
        let offset = plan.offsets[i];
        // Checked above: inside the arena, so no overflow.
        let end = offset + align(requests[i].size);
        let below = live
            .range(..=offset)
            .next_back()
            .filter(|&(_, &(e, _))| e > offset);
        let above = live.range(offset + 1..).next().filter(|&(&o, _)| o < end);
        if let Some((_, &(_, j))) = below.or(above) {
            return Err(PlanError::Overlap {
                a: i.min(j),
                b: i.max(j),
            });
        }
        live.insert(offset, (end, i));
    }
    Ok(())
}

/// The buffer orders tried, in tie-breaking order. Every key ends in the request index, so each
/// order is total and deterministic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Strategy {
    /// Size descending, then earlier first use.
    Size,
    /// Lifetime length descending, then size descending.
    Lifetime,
    /// First use ascending, then size descending, then later last use.
    FirstUse,
    /// Size × lifetime length descending, then size descending.
    Area,
}

impl Strategy {
    const ALL: [Strategy; 4] = [
        Strategy::Size,
        Strategy::Lifetime,
        Strategy::FirstUse,
        Strategy::Area,
    ];

    fn name(self) -> &'static str {
        match self {
            Strategy::Size => "size",
            Strategy::Lifetime => "lifetime",
            Strategy::FirstUse => "first-use",
            Strategy::Area => "area",
        }
    }

    /// The requests in `spaced` (all take space) in this strategy's order.
    fn order(self, requests: &[BufferRequest], spaced: &[usize]) -> Vec<usize> {
        let mut order = spaced.to_vec();
        let size = |i: usize| align(requests[i].size);
        // `spaced` requests have `first <= last`, so no underflow.
        let length = |i: usize| u64::from(requests[i].last - requests[i].first) + 1;
        let first = |i: usize| requests[i].first;
        match self {
            Strategy::Size => order.sort_unstable_by_key(|&i| (Reverse(size(i)), first(i), i)),
            Strategy::Lifetime => {
                order.sort_unstable_by_key(|&i| (Reverse(length(i)), Reverse(size(i)), first(i), i))
            }
            Strategy::FirstUse => order.sort_unstable_by_key(|&i| {
                (first(i), Reverse(size(i)), Reverse(requests[i].last), i)
            }),
            Strategy::Area => order.sort_unstable_by_key(|&i| {
                let area = u128::from(size(i)) * u128::from(length(i));
                (Reverse(area), Reverse(size(i)), first(i), i)
            }),
        }
        order
    }
}

/// The schedule steps compressed to the distinct first steps of the requests that take space:
/// two lifetimes intersect iff one's first step lies in the other, so this keeps every
/// intersection and makes the step count at most the request count.
struct Timeline {
    /// The requests that take space, by index.
    spaced: Vec<usize>,
    /// Per request, its lifetime as an inclusive range of compressed steps (unused for requests
    /// that take no space).
    steps_of: Vec<(usize, usize)>,
    /// How many compressed steps there are.
    steps: usize,
}

impl Timeline {
    fn new(requests: &[BufferRequest]) -> Timeline {
        let spaced: Vec<usize> = (0..requests.len())
            .filter(|&i| requests[i].takes_space())
            .collect();
        let mut firsts: Vec<u32> = spaced.iter().map(|&i| requests[i].first).collect();
        firsts.sort_unstable();
        firsts.dedup();
        let steps_of = requests
            .iter()
            .map(|r| {
                if !r.takes_space() {
                    return (0, 0);
                }
                let lo = firsts.partition_point(|&f| f < r.first);
                // `r.first` is in `firsts` and `r.first <= r.last`, so the count is at least
                // `lo + 1`.
                let hi = firsts.partition_point(|&f| f <= r.last) - 1;
                (lo, hi)
            })
            .collect();
        Timeline {
            spaced,
            steps_of,
            steps: firsts.len(),
        }
    }
}

/// Offsets for one order, and the arena they need.
struct Placement {
    offsets: Vec<u64>,
    arena_bytes: u64,
}

/// Best-fit placement of `order` (requests that take space), one buffer at a time.
fn place(
    requests: &[BufferRequest],
    timeline: &Timeline,
    order: &[usize],
    tree: &mut Occupancy,
) -> Placement {
    tree.clear();
    let mut offsets = vec![0; requests.len()];
    let mut arena_bytes = 0;
    for &i in order {
        let size = align(requests[i].size);
        let (lo, hi) = timeline.steps_of[i];
        let offset = tree.place(lo, hi, size);
        offsets[i] = offset;
        arena_bytes = arena_bytes.max(offset + size);
    }
    Placement {
        offsets,
        arena_bytes,
    }
}

/// Where in `taken` (byte ranges sorted by start) a buffer of `size` bytes goes: the start of
/// the smallest gap between taken ranges that holds it (the lowest such gap on a tie), else the
/// end of the highest range. As TFLite's `SimpleMemoryArena::Allocate` does.
fn best_fit_in(taken: &[(u64, u64)], size: u64) -> u64 {
    let mut top = 0;
    let mut best: Option<(u64, u64)> = None; // (gap, offset)
    for &(start, end) in taken {
        if start > top {
            let gap = start - top;
            if gap >= size && best.is_none_or(|(best_gap, _)| gap < best_gap) {
                best = Some((gap, top));
            }
        }
        top = top.max(end);
    }
    best.map_or(top, |(_, offset)| offset)
}

/// Disjoint, non-adjacent byte ranges `[start, end)` sorted by start; insert-only.
#[derive(Clone, Debug, Default)]
struct RangeSet(Vec<(u64, u64)>);

impl RangeSet {
    fn insert(&mut self, start: u64, end: u64) {
        let v = &mut self.0;
        // Ranges [i, j) touch or overlap [start, end).
        let i = v.partition_point(|&(_, e)| e < start);
        let j = i + v[i..].partition_point(|&(s, _)| s <= end);
        if i == j {
            v.insert(i, (start, end));
        } else {
            v[i] = (v[i].0.min(start), v[j - 1].1.max(end));
            v.drain(i + 1..j);
        }
    }
}

/// The bytes taken, per range of compressed steps: a segment tree over the steps (leaves
/// `leaves..2 * leaves`, node `v`'s children `2v`, `2v + 1`). Steps `[lo, hi]` have canonical
/// nodes (the maximal nodes inside `[lo, hi]`) and partial nodes (the proper ancestors of the
/// canonical ones: they hold step `lo` or `hi` and reach outside `[lo, hi]`). Per node `v`:
/// - `covers` holds the byte ranges of the buffers with `v` canonical: live at every step of `v`;
/// - `touches` holds those of the buffers with a canonical node in `v`'s subtree (`v` included):
///   each is live at some step of `v`.
///
/// A buffer live at a step `s` of `[lo, hi]` has a canonical node on the path from the root to
/// leaf `s`, as has `[lo, hi]`: at or below that of `[lo, hi]` (so in its `touches`), or above
/// it, where it is partial for `[lo, hi]` (so in its `covers`). Hence the bytes taken during
/// `[lo, hi]` are exactly the union of `touches` over its canonical nodes and `covers` over its
/// partial nodes.
struct Occupancy {
    leaves: usize,
    /// Per node, `(covers, touches)`: side by side, as most visits read or write both.
    sets: Vec<(RangeSet, RangeSet)>,
    /// Scratch, kept to reuse the allocations: the current canonical and partial nodes, and
    /// the ranges gathered for a query.
    canonical: Vec<usize>,
    partial: Vec<usize>,
    taken: Vec<(u64, u64)>,
}

impl Occupancy {
    fn new(steps: usize) -> Occupancy {
        let leaves = steps.max(1).next_power_of_two();
        Occupancy {
            leaves,
            sets: vec![Default::default(); 2 * leaves],
            canonical: Vec::new(),
            partial: Vec::new(),
            taken: Vec::new(),
        }
    }

    fn clear(&mut self) {
        for (covers, touches) in &mut self.sets {
            covers.0.clear();
            touches.0.clear();
        }
    }

    /// Fills `self.canonical` and `self.partial` for steps `[lo, hi]`, each node once.
    fn nodes(&mut self, lo: usize, hi: usize) {
        let (first, end) = (lo + self.leaves, hi + 1 + self.leaves);
        self.canonical.clear();
        let (mut l, mut r) = (first, end);
        while l < r {
            if l & 1 == 1 {
                self.canonical.push(l);
                l += 1;
            }
            if r & 1 == 1 {
                r -= 1;
                self.canonical.push(r);
            }
            l >>= 1;
            r >>= 1;
        }
        // At level `k` above the leaves, the node holding step `lo` is partial unless it starts
        // at `lo`, and the one holding `hi` unless it ends at `hi`. A node starting at `lo` and
        // not inside `[lo, hi]` holds `hi` too, so this finds every partial node.
        self.partial.clear();
        for k in 1..=self.leaves.trailing_zeros() {
            let (left, right) = (first >> k, (end - 1) >> k);
            let left_partial = left << k != first;
            if left_partial {
                self.partial.push(left);
            }
            if (end >> k) << k != end && !(left_partial && left == right) {
                self.partial.push(right);
            }
        }
    }

    /// Places `size` bytes live over steps `[lo, hi]` at the best-fit offset, and returns it.
    fn place(&mut self, lo: usize, hi: usize, size: u64) -> u64 {
        self.nodes(lo, hi);
        self.taken.clear();
        for &v in &self.canonical {
            self.taken.extend_from_slice(&self.sets[v].1.0);
        }
        for &v in &self.partial {
            self.taken.extend_from_slice(&self.sets[v].0.0);
        }
        self.taken.sort_unstable_by_key(|&(start, _)| start);
        let offset = best_fit_in(&self.taken, size);
        let end = offset + size;
        for &v in &self.canonical {
            let (covers, touches) = &mut self.sets[v];
            covers.insert(offset, end);
            touches.insert(offset, end);
        }
        for &v in &self.partial {
            self.sets[v].1.insert(offset, end);
        }
        offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn req(size: u64, first: u32, last: u32) -> BufferRequest {
        BufferRequest { size, first, last }
    }

    /// Plans, verifies, and checks the invariants every plan has.
    fn check(requests: &[BufferRequest]) -> ArenaPlan {
        let plan = plan(requests);
        assert_eq!(verify(requests, &plan), Ok(()), "{requests:?} -> {plan:?}");
        assert!(plan.lower_bound_bytes <= plan.arena_bytes);
        assert!(plan.arena_bytes.is_multiple_of(ALIGN));
        let top = requests
            .iter()
            .zip(&plan.offsets)
            .filter(|(r, _)| r.takes_space())
            .map(|(r, &o)| o + align(r.size))
            .max()
            .unwrap_or(0);
        assert_eq!(
            plan.arena_bytes, top,
            "the arena is exactly as high as its top buffer"
        );
        plan
    }

    /// A tiny deterministic PRNG (splitmix64).
    struct SplitMix64(u64);

    impl SplitMix64 {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// `min_n..=max_n` requests over steps `0..steps`: mostly whole multiples of [`ALIGN`], some
    /// ragged, a few empty.
    fn random_instance(
        rng: &mut SplitMix64,
        min_n: u64,
        max_n: u64,
        steps: u64,
    ) -> Vec<BufferRequest> {
        let n = min_n + rng.below(max_n - min_n + 1);
        (0..n)
            .map(|_| {
                let first = rng.below(steps);
                let last = first + rng.below(steps - first);
                let size = match rng.below(10) {
                    0 => 0,
                    1 | 2 => 1 + rng.below(8 * ALIGN),
                    _ => ALIGN * (1 + rng.below(8)),
                };
                // The callers keep `steps` far below `u32::MAX`.
                req(size, first as u32, last as u32)
            })
            .collect()
    }

    /// An optimal plan, by search. Some optimal placement has every buffer at 0 or right on top
    /// of a buffer it conflicts with (drop each buffer as low as it goes); sorted by (offset,
    /// index), each buffer's support comes before it. So enumerating, in that order, every
    /// buffer at 0 or on a placed conflicting buffer finds an optimum.
    fn exact(requests: &[BufferRequest]) -> ArenaPlan {
        let spaced: Vec<usize> = (0..requests.len())
            .filter(|&i| requests[i].takes_space())
            .collect();
        let items: Vec<BufferRequest> = spaced
            .iter()
            .map(|&i| req(align(requests[i].size), requests[i].first, requests[i].last))
            .collect();
        let mut search = Search {
            items: &items,
            offsets: vec![None; items.len()],
            best: (u64::MAX, Vec::new()),
        };
        search.run(None, 0);
        let mut offsets = vec![0; requests.len()];
        for (&i, &offset) in spaced.iter().zip(&search.best.1) {
            offsets[i] = offset;
        }
        ArenaPlan {
            offsets,
            arena_bytes: if items.is_empty() { 0 } else { search.best.0 },
            lower_bound_bytes: lower_bound(requests),
            strategy: "exact",
        }
    }

    struct Search<'a> {
        items: &'a [BufferRequest],
        offsets: Vec<Option<u64>>,
        /// The smallest arena found and its offsets.
        best: (u64, Vec<u64>),
    }

    impl Search<'_> {
        /// Places the rest after `last` (offset, index) on top of what is placed, whose top is
        /// `top`.
        fn run(&mut self, last: Option<(u64, usize)>, top: u64) {
            if top >= self.best.0 {
                return;
            }
            if self.offsets.iter().all(Option::is_some) {
                self.best = (top, self.offsets.iter().flatten().copied().collect());
                return;
            }
            let items = self.items;
            for i in 0..items.len() {
                if self.offsets[i].is_some() {
                    continue;
                }
                let placed: Vec<(u64, u64)> = (0..items.len())
                    .filter(|&j| items[i].conflicts_with(&items[j]))
                    .filter_map(|j| self.offsets[j].map(|o| (o, o + items[j].size)))
                    .collect();
                let mut candidates: Vec<u64> = placed.iter().map(|&(_, end)| end).collect();
                candidates.push(0);
                candidates.sort_unstable();
                candidates.dedup();
                for offset in candidates {
                    if last.is_some_and(|key| (offset, i) <= key) {
                        continue;
                    }
                    let end = offset + items[i].size;
                    if placed.iter().any(|&(s, e)| s < end && offset < e) {
                        continue;
                    }
                    self.offsets[i] = Some(offset);
                    self.run(Some((offset, i)), top.max(end));
                    self.offsets[i] = None;
                }
            }
        }
    }

    /// TFLite's quadratic best fit: scan every placed conflicting buffer.
    fn place_naive(requests: &[BufferRequest], order: &[usize]) -> Vec<u64> {
        let mut offsets = vec![0; requests.len()];
        let mut placed: Vec<usize> = Vec::new();
        for &i in order {
            let mut taken: Vec<(u64, u64)> = placed
                .iter()
                .filter(|&&j| requests[i].conflicts_with(&requests[j]))
                .map(|&j| (offsets[j], offsets[j] + align(requests[j].size)))
                .collect();
            taken.sort_unstable();
            offsets[i] = best_fit_in(&taken, align(requests[i].size));
            placed.push(i);
        }
        offsets
    }

    #[test]
    fn disjoint_lifetimes_share_offset_zero() {
        let requests = [
            req(100, 0, 1),
            req(300, 2, 3),
            req(64, 4, 4),
            req(1000, 5, 9),
        ];
        let plan = check(&requests);
        assert_eq!(plan.offsets, vec![0; 4]);
        assert_eq!(plan.arena_bytes, 1024);
        assert_eq!(plan.lower_bound_bytes, 1024);
    }

    #[test]
    fn all_overlapping_take_the_sum() {
        let requests = [req(100, 0, 5), req(64, 1, 3), req(1, 3, 4), req(640, 2, 3)];
        let plan = check(&requests);
        assert_eq!(plan.arena_bytes, 128 + 64 + 64 + 640);
        assert_eq!(plan.lower_bound_bytes, plan.arena_bytes);
        // Size order: the largest at the bottom.
        assert_eq!(plan.offsets[3], 0);
        assert_eq!(plan.strategy, "size");
    }

    #[test]
    fn lifetimes_touching_at_one_step_conflict() {
        let requests = [req(64, 0, 2), req(64, 2, 4), req(64, 5, 6)];
        let plan = check(&requests);
        assert_ne!(plan.offsets[0], plan.offsets[1]);
        assert_eq!(plan.arena_bytes, 128);
    }

    #[test]
    fn zero_size_and_empty_lifetimes_take_no_space() {
        let requests = [req(0, 0, 9), req(128, 1, 2), req(4096, 5, 3), req(0, 3, 3)];
        let plan = check(&requests);
        assert_eq!(plan.offsets, vec![0; 4]);
        assert_eq!(plan.arena_bytes, 128);
        assert_eq!(lower_bound(&requests), 128);
        assert_eq!(check(&[]).arena_bytes, 0);
        assert_eq!(check(&[req(0, 0, 0)]).offsets, vec![0]);
    }

    #[test]
    fn far_apart_steps() {
        let requests = [
            req(64, 0, u32::MAX),
            req(64, u32::MAX, u32::MAX),
            req(128, 1 << 31, 1 << 31),
            req(64, 0, 0),
        ];
        let plan = check(&requests);
        assert_eq!(plan.arena_bytes, 192);
        assert_eq!(plan.lower_bound_bytes, 192);
    }

    #[test]
    fn best_fit_takes_the_smallest_gap() {
        let taken = [(0, 64), (192, 256), (320, 384)];
        assert_eq!(best_fit_in(&taken, 64), 256);
        assert_eq!(best_fit_in(&taken, 65), 64);
        assert_eq!(best_fit_in(&taken, 129), 384);
        assert_eq!(best_fit_in(&[(64, 128)], 64), 0);
        assert_eq!(best_fit_in(&[], 64), 0);

        // Size order puts 1 (128 bytes) at 0, then 0, 2 and 3 (64 bytes each) at 128, 192 and
        // 256. When 4 comes (steps 2..=4), 1 and 2 are dead: of the gaps [0, 128) and
        // [192, 256), best fit takes the smaller.
        let requests = [
            req(64, 0, 4),
            req(128, 0, 1),
            req(64, 0, 1),
            req(64, 0, 4),
            req(64, 2, 4),
        ];
        let plan = check(&requests);
        assert_eq!(plan.strategy, "size");
        assert_eq!(plan.offsets, vec![128, 0, 192, 256, 192]);
        assert_eq!(plan.arena_bytes, lower_bound(&requests));
    }

    #[test]
    fn lower_bound_is_the_peak_live_bytes() {
        let requests = [req(64, 0, 1), req(64, 1, 2), req(128, 2, 3), req(1, 4, 4)];
        assert_eq!(lower_bound(&requests), 192);
        assert_eq!(
            lower_bound(&[req(64, u32::MAX, u32::MAX), req(64, 0, u32::MAX)]),
            128
        );
    }

    #[test]
    fn same_input_same_plan() {
        let mut rng = SplitMix64(7);
        let requests = random_instance(&mut rng, 100, 200, 60);
        assert_eq!(plan(&requests), plan(&requests));
    }

    #[test]
    fn indexed_placement_matches_the_quadratic_scan() {
        let mut rng = SplitMix64(0x5EED);
        for round in 0..200 {
            let (max_n, steps) = if round % 2 == 0 { (12, 6) } else { (300, 80) };
            let requests = random_instance(&mut rng, 1, max_n, steps);
            let timeline = Timeline::new(&requests);
            let mut tree = Occupancy::new(timeline.steps);
            for strategy in Strategy::ALL {
                let order = strategy.order(&requests, &timeline.spaced);
                let indexed = place(&requests, &timeline, &order, &mut tree);
                assert_eq!(
                    indexed.offsets,
                    place_naive(&requests, &order),
                    "{strategy:?}"
                );
            }
            check(&requests);
        }
    }

    #[test]
    fn exact_search_beats_every_order_here() {
        // Every order puts 3 and 2 low and 0 on 3, leaving 4 nowhere but the top; the optimum
        // is 4, 0, 3 upwards at step 2, with 1 above 4 and 0, and 2 below 1.
        let requests = [
            req(320, 1, 4),
            req(320, 4, 7),
            req(448, 7, 7),
            req(384, 2, 2),
            req(64, 0, 4),
        ];
        let exact = exact(&requests);
        assert_eq!(verify(&requests, &exact), Ok(()));
        assert_eq!(exact.arena_bytes, 768);
        assert_eq!(exact.arena_bytes, exact.lower_bound_bytes);
        assert_eq!(check(&requests).arena_bytes, 1088);
    }

    #[test]
    fn plan_is_near_the_exact_optimum() {
        const INSTANCES: usize = 300;
        let mut rng = SplitMix64(2024);
        let mut worst = (1.0f64, Vec::new());
        let mut optimal = 0;
        for _ in 0..INSTANCES {
            let requests = random_instance(&mut rng, 4, 7, 8);
            let plan = check(&requests);
            let exact = exact(&requests);
            assert_eq!(
                verify(&requests, &exact),
                Ok(()),
                "{requests:?} -> {exact:?}"
            );
            assert!(exact.lower_bound_bytes <= exact.arena_bytes);
            assert!(
                plan.arena_bytes >= exact.arena_bytes,
                "{requests:?}: {plan:?} beats {exact:?}"
            );
            optimal += usize::from(plan.arena_bytes == exact.arena_bytes);
            if exact.arena_bytes == 0 {
                continue;
            }
            let ratio = plan.arena_bytes as f64 / exact.arena_bytes as f64;
            if ratio > worst.0 {
                worst = (ratio, requests);
            }
        }
        eprintln!(
            "plan/exact: {optimal}/{INSTANCES} optimal, worst ratio {:.4} on {:?}",
            worst.0, worst.1
        );
        assert!(worst.0 <= 1.5, "worst ratio {}", worst.0);
    }

    #[test]
    fn verify_rejects_corrupted_plans() {
        let requests = [req(100, 0, 3), req(64, 2, 5), req(64, 4, 6), req(0, 0, 9)];
        let good = check(&requests);
        let corrupt = |f: &dyn Fn(&mut ArenaPlan)| {
            let mut bad = good.clone();
            f(&mut bad);
            verify(&requests, &bad)
        };

        // 0 and 1 are live at steps 2..=3; put 1 where 0 is.
        let overlap = corrupt(&|p| p.offsets[1] = p.offsets[0]);
        assert_eq!(overlap, Err(PlanError::Overlap { a: 0, b: 1 }));
        // One byte of overlap is enough: 0 is 128 bytes after alignment.
        let overlap = corrupt(&|p| {
            p.offsets[0] = 0;
            p.offsets[1] = 64;
            p.arena_bytes = 256;
        });
        assert_eq!(overlap, Err(PlanError::Overlap { a: 0, b: 1 }));
        assert_eq!(
            corrupt(&|p| p.offsets[2] += 32),
            Err(PlanError::Misaligned {
                i: 2,
                offset: good.offsets[2] + 32
            })
        );
        assert_eq!(
            corrupt(&|p| p.offsets[3] = 1),
            Err(PlanError::Misaligned { i: 3, offset: 1 })
        );
        let out = corrupt(&|p| p.arena_bytes -= ALIGN);
        assert!(matches!(out, Err(PlanError::OutOfArena { .. })), "{out:?}");
        assert_eq!(
            corrupt(&|p| p.offsets[2] = p.arena_bytes),
            Err(PlanError::OutOfArena { i: 2 })
        );
        assert_eq!(
            corrupt(&|p| p.offsets[1] = u64::MAX - 63),
            Err(PlanError::OutOfArena { i: 1 })
        );
        assert_eq!(
            corrupt(&|p| p.arena_bytes += 1),
            Err(PlanError::MisalignedArena {
                arena_bytes: good.arena_bytes + 1
            })
        );
        assert_eq!(
            corrupt(&|p| {
                p.offsets.pop();
            }),
            Err(PlanError::LengthMismatch {
                requests: 4,
                offsets: 3
            })
        );
        assert_eq!(
            corrupt(&|p| p.lower_bound_bytes = 0),
            Err(PlanError::LowerBound {
                stated: 0,
                computed: good.lower_bound_bytes
            })
        );
        // Zero-size buffers may sit anywhere aligned, even past the arena.
        assert_eq!(corrupt(&|p| p.offsets[3] = 1 << 40), Ok(()));
        // A larger arena than needed is wasteful, not wrong.
        assert_eq!(corrupt(&|p| p.arena_bytes += ALIGN), Ok(()));
    }

    /// ~50,000 requests shaped like a 10,000-layer SparseNet, 5 schedule steps per layer: the
    /// concatenated input, the bottleneck output, its BN+ReLU, the 3×3 output (each live for one
    /// step after it is made), and the layer output, read by the layers 1, 2, 4, … after it
    /// within its block, so live until its largest power-of-two reader; plus every 97th output
    /// kept to the end (a long skip). Blocks of 8,192 layers at 32×32, then 16×16.
    fn sparse_network(layers: u32) -> Vec<BufferRequest> {
        const STEPS_PER_LAYER: u32 = 5;
        const BLOCK: u32 = 8192;
        const GROWTH: u64 = 12;
        const F32: u64 = 4;
        let end_of_net = layers * STEPS_PER_LAYER;
        let mut requests = Vec::new();
        for layer in 0..layers {
            let block = layer / BLOCK;
            let hw: u64 = if block == 0 { 32 * 32 } else { 16 * 16 };
            let feature = GROWTH * hw * F32;
            let position = layer - block * BLOCK;
            let fan_in = if position == 0 {
                1
            } else {
                u64::from(position.ilog2()) + 1
            };
            let step = layer * STEPS_PER_LAYER;
            requests.push(req(fan_in * feature, step, step + 1));
            requests.push(req(4 * feature, step + 1, step + 2));
            requests.push(req(4 * feature, step + 2, step + 3));
            requests.push(req(feature, step + 3, step + 4));
            let later_in_block = ((block + 1) * BLOCK).min(layers) - 1 - layer;
            let last = if later_in_block == 0 {
                step + 4
            } else {
                (layer + (1 << later_in_block.ilog2())) * STEPS_PER_LAYER
            };
            requests.push(req(feature, step + 4, last));
            if layer % 97 == 0 {
                requests.push(req(feature, step + 4, end_of_net));
            }
        }
        requests
    }

    #[test]
    fn plans_a_ten_thousand_layer_network() {
        let requests = sparse_network(10_000);
        let mut live = vec![0i64; 10_000 * 5 + 2];
        for r in &requests {
            live[r.first as usize] += 1;
            live[r.last as usize + 1] -= 1;
        }
        let max_live = live
            .iter()
            .scan(0, |count, delta| {
                *count += delta;
                Some(*count)
            })
            .max()
            .unwrap_or(0);

        let start = Instant::now();
        let plan = plan(&requests);
        let planned = start.elapsed();
        let start = Instant::now();
        let verified = verify(&requests, &plan);
        let checked = start.elapsed();
        eprintln!(
            "{} requests, at most {max_live} live: plan {planned:?} (strategy {}), verify \
             {checked:?}; arena {} bytes, lower bound {} ({:.4}x)",
            requests.len(),
            plan.strategy,
            plan.arena_bytes,
            plan.lower_bound_bytes,
            plan.arena_bytes as f64 / plan.lower_bound_bytes as f64,
        );
        assert_eq!(verified, Ok(()));
        assert!(plan.lower_bound_bytes <= plan.arena_bytes);
    }
}

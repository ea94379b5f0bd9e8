//! [`Team`]: the threads of one session, for fork-join parallelism without allocation, and
//! the process-wide budget of worker threads that every session's team draws from.
//!
//! A team of `n` members is the calling thread (member 0) plus `n - 1` persistent worker
//! threads, each member with its own memory: an arena for one image and kernel scratch.
//! [`Team::run`] splits a job into at most [`MAX_PARTS`] parts; the caller and the workers
//! alike claim parts (each member its own parts first, so the same member runs the same part
//! in every layer and its activations stay in its core's cache, then anyone's from the end).
//! The caller returns once every part is done, and it waits only for parts that a worker has
//! claimed and is running: a worker that has not started yet when the caller runs out of
//! parts never holds it up, and the parts it would have run are the caller's. The job is
//! borrowed, never boxed, so running allocates nothing. Between jobs a worker spins briefly
//! (a batch-1 forward pass forks once per convolution, microseconds apart) and then parks, so
//! an idle session costs no CPU.
//!
//! Under contention (another process on the cores) a descheduled worker that has not claimed
//! a part costs nothing: the caller runs that part. A worker descheduled *inside* a part still
//! holds the caller up for the rest of its time slice. A fallback that ran the next jobs on the
//! caller alone after such a job was tried and dropped: on a nearly idle machine one late
//! worker sent whole forward passes onto one thread (2x slower in 3 of 18 quiet measurements;
//! docs/benchmarks.md, "Threads under contention").
//!
//! What remains, a worker descheduled mid-part, is handled one level up: the session's
//! `ThreadTuner` (`cpu::tuner`) measures each forward pass and runs the next ones on the
//! caller alone ([`Team::set_active`]) while that is faster, probing the team now and then.
//!
//! Worker threads are counted process-wide ([`WorkerLease`]): a session that takes the default
//! thread count gets at most the cores not already taken by other sessions' workers.
//!
//! Must not know about models or kernels: the session decides what the parts are (disjoint
//! image ranges, or disjoint parts of one kernel's output).

use crate::aligned::AlignedBytes;
use std::cell::UnsafeCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

/// The most parts one job has (one claim bit each in a 32-bit mask).
pub const MAX_PARTS: usize = 32;

/// Spin iterations the caller waits for a running part before it yields.
const SPINS: u32 = 1 << 12;

/// How long a worker spins for the next job before it parks. A batch-1 forward pass offers a
/// job per convolution, with a pool or a small layer on the caller alone in between (tens of
/// microseconds): waking a parked thread takes about as long, so a worker that parks sooner
/// misses the next layers' jobs.
const SPIN_TIME: Duration = Duration::from_millis(2);

/// Worker threads of every team in the process.
static WORKERS_IN_USE: AtomicUsize = AtomicUsize::new(0);

/// Worker threads all sessions that take the default thread count may share: the cores
/// `available_parallelism` reports, less one (every session's caller runs too).
pub fn worker_budget() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get()) - 1
}

/// Worker threads in use by every team of the process now.
#[cfg(test)]
fn workers_in_use() -> usize {
    WORKERS_IN_USE.load(Ordering::Relaxed)
}

/// A count of worker threads taken from the process-wide count; given back on drop.
#[derive(Debug)]
pub struct WorkerLease {
    workers: usize,
}

impl WorkerLease {
    /// Exactly `workers`, whatever the budget says (an explicit thread count).
    pub fn exact(workers: usize) -> WorkerLease {
        WORKERS_IN_USE.fetch_add(workers, Ordering::Relaxed);
        WorkerLease { workers }
    }

    /// Up to `workers`, as many as `budget` leaves free (perhaps none).
    pub fn within(workers: usize, budget: usize) -> WorkerLease {
        let mut taken = 0;
        let _ = WORKERS_IN_USE.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
            taken = workers.min(budget.saturating_sub(used));
            Some(used + taken)
        });
        WorkerLease { workers: taken }
    }

    /// The worker threads this lease allows.
    pub fn workers(&self) -> usize {
        self.workers
    }
}

impl Drop for WorkerLease {
    fn drop(&mut self) {
        WORKERS_IN_USE.fetch_sub(self.workers, Ordering::Relaxed);
    }
}

/// A job as two thin pointers: the closure and a function that calls it.
#[derive(Clone, Copy)]
struct Job {
    data: *const (),
    call: unsafe fn(*const (), usize, usize),
}

/// # Safety
/// `data` points to a live `F`.
unsafe fn call_job<F: Fn(usize, usize) + Sync>(data: *const (), member: usize, part: usize) {
    // SAFETY: `Team::run` stores a pointer to an `F` it borrows until every part is done.
    let f = unsafe { &*data.cast::<F>() };
    f(member, part);
}

/// The claim word: bits 0..32 the parts claimed (bits at and above the part count are set
/// when a job is offered), bits 32..40 the part count. No bit clear: nothing to claim.
const MASK_BITS: u64 = (1 << MAX_PARTS) - 1;

fn parts_of(word: u64) -> usize {
    ((word >> 32) & 0xff) as usize
}

/// The order in which member `member` of `members` claims the `parts` of a job: its own
/// parts `member * per .. (member + 1) * per` first (`per = parts / members`, the rest to the
/// last member), then everyone's from the end.
fn preferred(member: usize, members: usize, parts: usize) -> impl Iterator<Item = usize> {
    let per = (parts / members.max(1)).max(1);
    let first = (member * per).min(parts);
    let last = if member + 1 >= members {
        parts
    } else {
        ((member + 1) * per).min(parts)
    };
    (first..last).chain((0..parts).rev())
}

/// Claims the first free part of the current job in `member`'s order, or `None` when every
/// part is claimed. A successful claim is a part of the job offered at that moment.
fn claim(claims: &AtomicU64, member: usize, members: usize) -> Option<usize> {
    let mut word = claims.load(Ordering::Acquire);
    loop {
        if word & MASK_BITS == MASK_BITS {
            return None;
        }
        let part = preferred(member, members, parts_of(word)).find(|&p| word & (1 << p) == 0)?;
        match claims.compare_exchange_weak(
            word,
            word | (1 << part),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => return Some(part),
            Err(now) => word = now,
        }
    }
}

struct Shared {
    /// The current job; written by `run` while no part can be claimed (every bit of `claims`
    /// set, every claimed part done), read by a worker after it claimed a part.
    job: UnsafeCell<Option<Job>>,
    /// The claim word (see [`MASK_BITS`]).
    claims: AtomicU64,
    /// Parts of the current job done (by anyone).
    done: AtomicUsize,
    members: usize,
    /// A worker's part panicked (kernels never do; a bug, reported rather than hung on).
    panicked: AtomicBool,
    stop: AtomicBool,
}

// SAFETY: `job` is written only by `Team::run` while no part can be claimed and no claimed
// part is running, and read by workers only after a successful claim, which acquires the
// release store that offered the job after the write. The job's closure is `Sync`.
unsafe impl Sync for Shared {}
// SAFETY: the raw pointers in `job` refer to a `Sync` closure (see above).
unsafe impl Send for Shared {}

/// The calling thread plus persistent workers, each with its own memory.
pub struct Team {
    shared: Arc<Shared>,
    workers: Vec<(JoinHandle<()>, Thread)>,
    /// Per member: `arena_bytes` (rounded up to 64) of arena, then `scratch_bytes` of scratch.
    memory: Vec<UnsafeCell<AlignedBytes>>,
    scratch_at: usize,
    /// Members a job uses now: all of them, or 1 (the caller alone), as the session's
    /// `ThreadTuner` decided for this forward pass (`set_active`).
    active: AtomicUsize,
    _lease: WorkerLease,
}

// SAFETY: a member touches only its own memory cell (`arena(member)` and `scratch(member)` are
// handed out to the member that runs with that index); everything else is atomics or immutable
// after `new`. One job at a time: only the session that owns the team calls `run` (`cpu/mod.rs`).
unsafe impl Sync for Team {}

impl Team {
    /// A team of `members` (at least 1), each with an arena of `arena_bytes` and
    /// `scratch_bytes` of scratch, both 64-byte aligned. Spawns `members - 1` threads, counted
    /// in the process-wide count whatever the budget says.
    pub fn new(members: usize, arena_bytes: usize, scratch_bytes: usize) -> std::io::Result<Team> {
        Team::with_lease(
            WorkerLease::exact(members.max(1) - 1),
            arena_bytes,
            scratch_bytes,
        )
    }

    /// A team of up to `members`: the caller plus as many workers as the process-wide budget
    /// ([`worker_budget`]) leaves free, so that sessions side by side do not oversubscribe
    /// the cores.
    pub fn within_budget(
        members: usize,
        arena_bytes: usize,
        scratch_bytes: usize,
    ) -> std::io::Result<Team> {
        Team::with_lease(
            WorkerLease::within(members.max(1) - 1, worker_budget()),
            arena_bytes,
            scratch_bytes,
        )
    }

    fn with_lease(
        lease: WorkerLease,
        arena_bytes: usize,
        scratch_bytes: usize,
    ) -> std::io::Result<Team> {
        let members = lease.workers() + 1;
        let scratch_at = arena_bytes.div_ceil(64) * 64;
        let shared = Arc::new(Shared {
            job: UnsafeCell::new(None),
            claims: AtomicU64::new(u64::MAX),
            done: AtomicUsize::new(0),
            members,
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let mut team = Team {
            shared: Arc::clone(&shared),
            workers: Vec::with_capacity(members - 1),
            memory: (0..members)
                .map(|_| {
                    scratch_at
                        .checked_add(scratch_bytes)
                        .and_then(AlignedBytes::try_zeroed)
                        .map(UnsafeCell::new)
                        .ok_or_else(|| {
                            std::io::Error::new(
                                std::io::ErrorKind::OutOfMemory,
                                format!(
                                    "{arena_bytes} arena and {scratch_bytes} scratch bytes per thread"
                                ),
                            )
                        })
                })
                .collect::<std::io::Result<_>>()?,
            scratch_at,
            active: AtomicUsize::new(members),
            _lease: lease,
        };
        for member in 1..members {
            let shared = Arc::clone(&shared);
            let handle = thread::Builder::new()
                .name(format!("sparsec-{member}"))
                .spawn(move || worker(&shared, member))?;
            let t = handle.thread().clone();
            team.workers.push((handle, t));
        }
        Ok(team)
    }

    /// Members, the caller included.
    pub fn size(&self) -> usize {
        self.memory.len()
    }

    /// Members the next jobs use: the whole team or the caller alone (see
    /// `cpu::tuner`). Jobs already running are not affected.
    pub fn set_active(&self, caller_alone: bool) {
        let n = if caller_alone { 1 } else { self.size() };
        self.active.store(n, Ordering::Relaxed);
    }

    /// Members a job uses now: [`Team::size`], or 1 after `set_active(true)`.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Member `member`'s arena (`arena_bytes` of `new`). Only that member may use it while a
    /// job runs.
    pub fn arena(&self, member: usize) -> *mut u8 {
        // SAFETY: the cell lives as long as the team; a pointer is handed out, not a
        // reference, and members use disjoint cells.
        unsafe { (*self.memory[member].get()).as_mut_ptr() }
    }

    /// Member `member`'s scratch (`scratch_bytes` of `new`). Only that member may use it while
    /// a job runs.
    pub fn scratch(&self, member: usize) -> *mut u8 {
        self.arena(member).wrapping_add(self.scratch_at)
    }

    /// Runs `job(member, part)` once for every part `0..parts` (at most [`MAX_PARTS`]; more
    /// are clamped) and returns when all are done; all on the caller while the team is set to
    /// the caller alone ([`Team::set_active`]). The caller (member 0) claims and runs parts
    /// like the workers; it waits only for parts a worker claimed and is still running, so the
    /// parts must be independent and any member may run any part. Returns false if a worker's
    /// part panicked (a panic in the caller's part is resumed here, after the workers' parts
    /// are done).
    pub fn run<F: Fn(usize, usize) + Sync>(&self, parts: usize, job: &F) -> bool {
        let parts = parts.min(MAX_PARTS);
        if parts == 0 {
            return true;
        }
        if self.workers.is_empty() || parts == 1 || self.active() == 1 {
            for part in 0..parts {
                job(0, part);
            }
            return true;
        }
        let s = &*self.shared;
        // SAFETY: no part of a previous job can be claimed (every bit set) or is running (the
        // previous `run` waited for `done`), so no worker reads `job` now.
        unsafe {
            *s.job.get() = Some(Job {
                data: (job as *const F).cast(),
                call: call_job::<F>,
            });
        }
        s.done.store(0, Ordering::Relaxed);
        let open = ((parts as u64) << 32) | (MASK_BITS & !((1u64 << parts) - 1));
        // Offers the job: a worker's successful claim acquires this store (and so the job).
        s.claims.store(open, Ordering::Release);
        for (_, t) in &self.workers {
            t.unpark();
        }
        let mut mine = 0usize;
        let result = catch_unwind(AssertUnwindSafe(|| {
            while let Some(part) = claim(&s.claims, 0, s.members) {
                mine += 1; // counted first: a panicking part is done too
                job(0, part);
            }
        }));
        if result.is_err() {
            // Claim what is left so that nobody starts it, and count it done.
            while claim(&s.claims, 0, s.members).is_some() {
                mine += 1;
            }
        }
        // Wait for the parts workers claimed: the job borrows from our caller.
        let mut spins = 0u32;
        while s.done.load(Ordering::Acquire) + mine < parts {
            if spins < SPINS {
                std::hint::spin_loop();
                spins += 1;
            } else {
                thread::yield_now();
            }
        }
        if let Err(p) = result {
            std::panic::resume_unwind(p);
        }
        !s.panicked.swap(false, Ordering::Relaxed)
    }
}

fn worker(s: &Shared, member: usize) {
    loop {
        let mut spins = 0u32;
        let idle = Instant::now();
        let part = loop {
            if s.stop.load(Ordering::Acquire) {
                return;
            }
            if let Some(part) = claim(&s.claims, member, s.members) {
                break part;
            }
            spins += 1;
            if !spins.is_multiple_of(256) || idle.elapsed() < SPIN_TIME {
                std::hint::spin_loop();
            } else {
                // An unpark between the claim attempt and here makes `park` return at once.
                thread::park();
            }
        };
        // SAFETY: we claimed a part of the job offered when we claimed it; `run` wrote `job`
        // before offering it (the claim acquired that) and does not return, nor write `job`
        // again, before our part is counted done below.
        if let Some(job) = unsafe { *s.job.get() } {
            // SAFETY: `run` keeps the closure alive until every part is done.
            let r = catch_unwind(AssertUnwindSafe(|| unsafe {
                (job.call)(job.data, member, part)
            }));
            if r.is_err() {
                s.panicked.store(true, Ordering::Relaxed);
            }
        }
        s.done.fetch_add(1, Ordering::Release);
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for (handle, t) in self.workers.drain(..) {
            t.unpark();
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_runs_exactly_once_on_any_member() {
        let team = Team::new(3, 100, 64).expect("spawn");
        assert_eq!(team.size(), 3);
        for parts in 0..=MAX_PARTS {
            for _ in 0..50 {
                let done: Vec<AtomicUsize> = (0..parts).map(|_| AtomicUsize::new(0)).collect();
                assert!(team.run(parts, &|m, p| {
                    assert!(m < 3);
                    done[p].fetch_add(1, Ordering::Relaxed);
                }));
                assert!(done.iter().all(|d| d.load(Ordering::Relaxed) == 1));
            }
        }
    }

    #[test]
    fn claims_give_each_part_once_owners_first() {
        // Member 0 of 2 owns 0..3 and member 1 owns 3..7 (the last takes the rest).
        let order: Vec<usize> = preferred(0, 2, 7).take(4).collect();
        assert_eq!(order, [0, 1, 2, 6]);
        let c = AtomicU64::new((7 << 32) | (MASK_BITS & !((1 << 7) - 1)));
        assert_eq!(claim(&c, 1, 2), Some(3));
        assert_eq!(claim(&c, 0, 2), Some(0));
        assert_eq!(claim(&c, 0, 2), Some(1));
        assert_eq!(claim(&c, 0, 2), Some(2));
        // Member 0's own parts are done: it takes member 1's from the end.
        assert_eq!(claim(&c, 0, 2), Some(6));
        assert_eq!(claim(&c, 1, 2), Some(4));
        assert_eq!(claim(&c, 1, 2), Some(5));
        assert_eq!(claim(&c, 1, 2), None);
        assert_eq!(claim(&c, 0, 2), None);
        // Any number of members, claiming in any interleaving, covers every part once.
        for parts in 1..=MAX_PARTS {
            for members in 1..=5 {
                let c = AtomicU64::new(((parts as u64) << 32) | (MASK_BITS & !((1 << parts) - 1)));
                let mut seen = vec![0; parts];
                let mut m = 0;
                while let Some(p) = claim(&c, m % members, members) {
                    seen[p] += 1;
                    m = (m * 7 + 3) % 101;
                }
                assert!(
                    seen.iter().all(|&n| n == 1),
                    "{parts} parts, {members} members"
                );
            }
        }
    }

    #[test]
    fn a_job_sees_the_callers_borrows_and_scratch_is_per_member() {
        let team = Team::new(2, 64, 128).expect("spawn");
        let data: Vec<u64> = (0..1000).collect();
        let sums: Vec<AtomicU64> = (0..10).map(|_| AtomicU64::new(0)).collect();
        assert!(team.run(10, &|m, p| {
            let chunk = &data[p * 100..(p + 1) * 100];
            sums[p].store(chunk.iter().sum(), Ordering::Relaxed);
            // SAFETY: member m's own scratch, 128 bytes.
            unsafe { *team.scratch(m) = m as u8 + 1 };
        }));
        let total: u64 = sums.iter().map(|s| s.load(Ordering::Relaxed)).sum();
        assert_eq!(total, 499_500);
        assert_ne!(team.scratch(0), team.scratch(1));
        assert_eq!(team.scratch(0) as usize - team.arena(0) as usize, 64);
        assert_eq!(team.arena(1) as usize % 64, 0);
        // SAFETY: no job is running.
        assert_eq!(unsafe { *team.scratch(0) }, 1);
    }

    #[test]
    fn a_panicking_worker_is_reported_not_hung_on() {
        let team = Team::new(2, 0, 0).expect("spawn");
        let start = Instant::now();
        let mut reported = false;
        while !reported && start.elapsed() < Duration::from_secs(20) {
            reported = !team.run(2, &|m, _| {
                if m == 1 {
                    panic!("worker bug");
                }
                thread::sleep(Duration::from_micros(200));
            });
        }
        assert!(reported, "the worker never ran a part");
        assert!(team.run(2, &|_, _| {}), "the team keeps working");
    }

    #[test]
    fn a_team_of_one_runs_on_the_caller() {
        let team = Team::new(1, 16, 16).expect("spawn");
        let me = thread::current().id();
        assert!(team.run(5, &|m, _| {
            assert_eq!(m, 0);
            assert_eq!(thread::current().id(), me);
        }));
    }

    #[test]
    fn a_team_set_to_the_caller_alone_runs_every_part_on_it() {
        let team = Team::new(3, 16, 16).expect("spawn");
        let me = thread::current().id();
        team.set_active(true);
        assert_eq!(team.active(), 1);
        assert!(team.run(7, &|m, _| {
            assert_eq!(m, 0);
            assert_eq!(thread::current().id(), me);
        }));
        team.set_active(false);
        assert_eq!(team.active(), 3);
        let others = AtomicUsize::new(0);
        // The workers take part again (given time: they may be parked).
        let start = Instant::now();
        while others.load(Ordering::Relaxed) == 0 && start.elapsed() < Duration::from_secs(20) {
            assert!(team.run(MAX_PARTS, &|m, _| {
                if m != 0 {
                    others.fetch_add(1, Ordering::Relaxed);
                }
                thread::sleep(Duration::from_micros(50));
            }));
        }
        assert!(others.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn sessions_within_the_budget_share_it() {
        // Other tests' teams come and go in this process: lease against what is in use now.
        let used = workers_in_use();
        let a = WorkerLease::within(3, used + 2);
        assert!(a.workers() <= 2);
        let b = WorkerLease::within(3, used + 2);
        assert!(
            a.workers() + b.workers() <= 2,
            "{} + {}",
            a.workers(),
            b.workers()
        );
        let exact = WorkerLease::exact(3);
        assert_eq!(exact.workers(), 3);
        assert_eq!(WorkerLease::within(1, 0).workers(), 0);
        let team = Team::within_budget(64, 0, 0).expect("spawn");
        assert!(team.size() <= worker_budget() + 1);
    }
}

//! [`Team`]: the threads of one session, for fork-join parallelism without allocation.
//!
//! A team of `n` members is the calling thread (member 0) plus `n - 1` persistent worker
//! threads, each member with its own memory: an arena for one image and kernel scratch.
//! [`Team::run`] offers one job to every member and returns when the caller has run it and
//! every worker that joined has finished; the job is borrowed, never boxed, so running
//! allocates nothing. A worker that has not joined by the time the caller finishes never does
//! (the job is closed), so a worker descheduled by another process costs the caller nothing:
//! jobs must hand out their work dynamically (members claim parts from a counter), so that the
//! caller alone can do all of it. Between jobs a worker spins briefly (a batch-1 forward pass forks once per
//! convolution, microseconds apart) and then parks, so an idle session costs no CPU.
//!
//! Must not know about models or kernels: the session decides what the members do (disjoint
//! image ranges, or disjoint parts of one kernel's output).

use crate::aligned::AlignedBytes;
use std::cell::UnsafeCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

/// Spin iterations the caller waits for joined workers before it yields.
const SPINS: u32 = 1 << 15;

/// How long a worker spins for the next job before it parks. A batch-1 forward pass offers a
/// job per convolution, with a pool or a small layer on the caller alone in between (tens of
/// microseconds): waking a parked thread takes about as long, so a worker that parks sooner
/// misses the next layers' jobs.
const SPIN_TIME: Duration = Duration::from_millis(2);

/// A job as two thin pointers: the closure and a function that calls it.
#[derive(Clone, Copy)]
struct Job {
    data: *const (),
    call: unsafe fn(*const (), usize),
}

/// # Safety
/// `data` points to a live `F`.
unsafe fn call_job<F: Fn(usize) + Sync>(data: *const (), member: usize) {
    // SAFETY: `Team::run` stores a pointer to an `F` it borrows until every member is done.
    let f = unsafe { &*data.cast::<F>() };
    f(member);
}

struct Shared {
    /// The current job; written by `run` before it bumps `epoch`, read by workers after they
    /// see the new epoch.
    job: UnsafeCell<Option<Job>>,
    epoch: AtomicU64,
    /// The epoch workers may still join (0: closed).
    open: AtomicU64,
    /// Workers inside the current job.
    active: AtomicUsize,
    /// A worker's job panicked (kernels never do; a bug, reported rather than hung on).
    panicked: AtomicBool,
    stop: AtomicBool,
}

// SAFETY: `job` is written only by `Team::run` while no worker reads it (the previous job was
// closed and `active` was 0) and read by workers only after joining the open epoch that `run`
// released after the write. The job's closure is `Sync`.
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
}

// SAFETY: a member touches only its own memory cell (`arena(member)` and `scratch(member)` are
// handed out to the member that runs with that index); everything else is atomics or immutable
// after `new`.
unsafe impl Sync for Team {}

impl Team {
    /// A team of `members` (at least 1), each with an arena of `arena_bytes` and
    /// `scratch_bytes` of scratch, both 64-byte aligned. Spawns `members - 1` threads.
    pub fn new(members: usize, arena_bytes: usize, scratch_bytes: usize) -> std::io::Result<Team> {
        let members = members.max(1);
        let scratch_at = arena_bytes.div_ceil(64) * 64;
        let shared = Arc::new(Shared {
            job: UnsafeCell::new(None),
            epoch: AtomicU64::new(0),
            open: AtomicU64::new(0),
            active: AtomicUsize::new(0),
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

    /// Offers `job(member)` to every member (member 0, the calling thread, always runs it) and
    /// returns when the caller's call and every joined worker's call are done. Workers that
    /// have not joined when the caller's call returns skip this job, so `job` must let any
    /// subset of members do all the work. Returns false if a worker's job panicked.
    pub fn run<F: Fn(usize) + Sync>(&self, job: &F) -> bool {
        let workers = self.workers.len();
        if workers == 0 {
            job(0);
            return true;
        }
        let s = &*self.shared;
        // SAFETY: no worker reads `job` now: the previous `run` closed its job and waited for
        // `active == 0`, and no worker joins a closed job.
        unsafe {
            *s.job.get() = Some(Job {
                data: (job as *const F).cast(),
                call: call_job::<F>,
            });
        }
        let epoch = s.epoch.load(Ordering::Relaxed) + 1;
        s.open.store(epoch, Ordering::SeqCst);
        s.epoch.store(epoch, Ordering::Release);
        for (_, t) in &self.workers {
            t.unpark();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| job(0)));
        // Close the job, then wait for the workers inside it: it borrows from our caller.
        s.open.store(0, Ordering::SeqCst);
        let mut spins = 0u32;
        while s.active.load(Ordering::SeqCst) != 0 {
            if spins < SPINS {
                std::hint::spin_loop();
                spins += 1;
            } else {
                thread::yield_now();
            }
        }
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        !s.panicked.swap(false, Ordering::Relaxed)
    }
}

fn worker(s: &Shared, member: usize) {
    let mut seen = 0u64;
    loop {
        let mut spins = 0u32;
        let idle = Instant::now();
        loop {
            if s.stop.load(Ordering::Acquire) {
                return;
            }
            let e = s.epoch.load(Ordering::Acquire);
            if e != seen {
                seen = e;
                break;
            }
            spins += 1;
            if !spins.is_multiple_of(256) || idle.elapsed() < SPIN_TIME {
                std::hint::spin_loop();
            } else {
                // An unpark between the epoch check and here makes `park` return at once.
                thread::park();
            }
        }
        // Join, then check the job is still open: `run` closes it before it waits for
        // `active` to reach 0, so either it sees us or we see it closed.
        s.active.fetch_add(1, Ordering::SeqCst);
        if s.open.load(Ordering::SeqCst) == seen {
            // SAFETY: written by `run` before the epoch we acquired; unchanged until `run`
            // has seen `active` reach 0 after closing, which waits for us.
            if let Some(job) = unsafe { *s.job.get() } {
                // SAFETY: `run` keeps the closure alive until `active` reaches 0.
                let r = catch_unwind(AssertUnwindSafe(|| unsafe { (job.call)(job.data, member) }));
                if r.is_err() {
                    s.panicked.store(true, Ordering::Relaxed);
                }
            }
        }
        s.active.fetch_sub(1, Ordering::SeqCst);
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
    fn members_share_dynamically_handed_out_work_exactly_once() {
        let team = Team::new(3, 100, 64).expect("spawn");
        assert_eq!(team.size(), 3);
        let done: Vec<AtomicUsize> = (0..100).map(|_| AtomicUsize::new(0)).collect();
        let joined: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
        for _ in 0..1000 {
            let next = AtomicUsize::new(0);
            assert!(team.run(&|m| {
                joined[m].fetch_add(1, Ordering::Relaxed);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= done.len() {
                        break;
                    }
                    done[i].fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for d in &done {
            assert_eq!(d.load(Ordering::Relaxed), 1000);
        }
        assert_eq!(
            joined[0].load(Ordering::Relaxed),
            1000,
            "the caller always runs"
        );
    }

    #[test]
    fn a_worker_joins_while_the_caller_waits_for_it() {
        let team = Team::new(2, 0, 0).expect("spawn");
        let seen = AtomicBool::new(false);
        assert!(team.run(&|m| {
            if m == 1 {
                seen.store(true, Ordering::SeqCst);
            } else {
                let start = std::time::Instant::now();
                while !seen.load(Ordering::SeqCst) && start.elapsed().as_secs() < 10 {
                    std::hint::spin_loop();
                }
            }
        }));
        assert!(seen.load(Ordering::SeqCst), "the worker ran the job");
    }

    #[test]
    fn a_job_sees_the_callers_borrows_and_scratch_is_per_member() {
        let team = Team::new(2, 64, 128).expect("spawn");
        let data: Vec<u64> = (0..1000).collect();
        let sums = [AtomicU64::new(0), AtomicU64::new(0)];
        let joined = AtomicBool::new(false);
        team.run(&|m| {
            if m == 1 {
                joined.store(true, Ordering::SeqCst);
            } else {
                let start = std::time::Instant::now();
                while !joined.load(Ordering::SeqCst) && start.elapsed().as_secs() < 10 {
                    std::hint::spin_loop();
                }
            }
            let half = &data[m * 500..(m + 1) * 500];
            sums[m].store(half.iter().sum(), Ordering::Relaxed);
            // SAFETY: member m's own scratch, 128 bytes.
            unsafe { *team.scratch(m) = m as u8 + 1 };
        });
        let total: u64 = sums.iter().map(|s| s.load(Ordering::Relaxed)).sum();
        assert_eq!(total, 499_500);
        assert_ne!(team.scratch(0), team.scratch(1));
        assert_eq!(team.scratch(0) as usize - team.arena(0) as usize, 64);
        assert_eq!(team.arena(1) as usize % 64, 0);
        // SAFETY: no job is running.
        assert_eq!(unsafe { (*team.scratch(0), *team.scratch(1)) }, (1, 2));
    }

    #[test]
    fn a_panicking_worker_is_reported_not_hung_on() {
        let team = Team::new(2, 0, 0).expect("spawn");
        let joined = AtomicBool::new(false);
        let ok = team.run(&|m| {
            if m == 1 {
                joined.store(true, Ordering::SeqCst);
                panic!("worker bug");
            }
            let start = std::time::Instant::now();
            while !joined.load(Ordering::SeqCst) && start.elapsed().as_secs() < 10 {
                std::hint::spin_loop();
            }
        });
        assert!(!ok);
        assert!(team.run(&|_| {}), "the team keeps working");
    }

    #[test]
    fn a_team_of_one_runs_on_the_caller() {
        let team = Team::new(1, 16, 16).expect("spawn");
        let me = thread::current().id();
        team.run(&|m| {
            assert_eq!(m, 0);
            assert_eq!(thread::current().id(), me);
        });
    }
}

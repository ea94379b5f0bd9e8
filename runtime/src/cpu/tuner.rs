//! [`ThreadTuner`]: decides, forward pass by forward pass, whether a session's pass runs on its
//! whole team or on the calling thread alone, from the measured time of recent passes.
//!
//! Why: a team waits for every part it hands out. When another process shares the cores, a
//! worker descheduled in the middle of its part holds the caller up for the rest of its time
//! slice, and two threads can take longer than one (docs/benchmarks.md, "Threads under
//! contention": 6.1 ms on two threads against 4.0 ms on one). No choice made once fits both a
//! quiet and a busy machine, so the tuner measures: it keeps an estimate of the time per image
//! of each choice ("arm"), runs the faster one, and now and then probes the other so that it
//! notices when the machine changes. A probe is [`PROBE_PASSES`] passes in a row (their mean
//! decides, not one lucky or unlucky pass). A probe that confirms the current choice doubles
//! the interval to the next one, up to what keeps the probes' cost within [`PROBE_BUDGET`]
//! (1%) of the time; a probe that changes the choice resets it. A machine that gets busy is
//! noticed at once (the current arm's own passes slow down); one that gets quiet again, at the
//! next probe.
//!
//! Batches that split each convolution across the team and batches tiled by images behave
//! differently, so each path has its own estimates. A session's first pass on a path (threads
//! starting, memory first touched) is not measured.
//!
//! Must not know about models, kernels or threads: it sees only choices and times; the session
//! applies the choice (`Team::set_active`).

/// Passes between probes of the arm not chosen, at first and after the choice changed.
pub const MIN_PROBE_INTERVAL: u32 = 4;
/// The longest interval between probes, whatever the budget allows.
pub const MAX_PROBE_INTERVAL: u32 = 4096;
/// Consecutive passes of one probe: their mean is the probed arm's new estimate, so that one
/// pass that happened to be lucky or unlucky does not decide.
pub const PROBE_PASSES: u32 = 4;
/// The share of the time that probes of a slower arm may cost, which bounds how often they
/// come once the choice is settled.
pub const PROBE_BUDGET: f64 = 0.01;

/// How a forward pass uses the session's threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arm {
    /// Every member of the team.
    Team,
    /// The calling thread alone.
    Caller,
}

impl Arm {
    fn index(self) -> usize {
        match self {
            Arm::Team => 0,
            Arm::Caller => 1,
        }
    }

    fn other(self) -> Arm {
        match self {
            Arm::Team => Arm::Caller,
            Arm::Caller => Arm::Team,
        }
    }
}

/// The ways a session runs a batch, each tuned on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// A batch smaller than the team: each convolution split across the members.
    SplitLayers,
    /// A batch of at least as many images as members: images claimed by members.
    TileImages,
}

impl Path {
    fn index(self) -> usize {
        match self {
            Path::SplitLayers => 0,
            Path::TileImages => 1,
        }
    }
}

/// The decision for one pass: which arm runs it, and whether it is part of a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    pub arm: Arm,
    pub probe: bool,
    path: Path,
}

/// A probe in progress: the passes still to hand out and the times of those measured.
#[derive(Clone, Copy, Debug)]
struct Probe {
    arm: Arm,
    to_run: u32,
    measured: u32,
    nanos_per_image: f64,
}

/// Estimates and probe schedule of one path.
#[derive(Clone, Debug)]
struct PathState {
    /// Nanoseconds per image of each arm: an exponential average of the arm's own passes
    /// while chosen; a probe's mean replaces it (the only recent samples).
    estimate: [Option<f64>; 2],
    /// Passes since the last probe, and the interval to the next one.
    since_probe: u32,
    probe_interval: u32,
    probe: Option<Probe>,
    /// The first pass on this path was seen (and not measured).
    warmed: bool,
    /// Passes run on each arm (for reports).
    passes: [u64; 2],
}

impl PathState {
    fn new() -> PathState {
        PathState {
            estimate: [None, None],
            since_probe: 0,
            probe_interval: MIN_PROBE_INTERVAL,
            probe: None,
            warmed: false,
            passes: [0, 0],
        }
    }

    /// The arm with the lower estimate; the team until the caller alone was measured faster.
    fn best(&self) -> Arm {
        match self.estimate {
            [Some(team), Some(caller)] if caller < team => Arm::Caller,
            [None, Some(_)] => Arm::Caller,
            _ => Arm::Team,
        }
    }

    /// The longest interval at which probing the slower arm costs at most [`PROBE_BUDGET`]
    /// of the time: a probe loses `PROBE_PASSES * (slower - faster)`.
    fn budget_interval(&self) -> u32 {
        match self.estimate {
            [Some(a), Some(b)] if a.min(b) > 0.0 => {
                let (fast, slow) = (a.min(b), a.max(b));
                let passes = f64::from(PROBE_PASSES) * (slow - fast) / (PROBE_BUDGET * fast);
                passes.clamp(f64::from(MIN_PROBE_INTERVAL), f64::from(MAX_PROBE_INTERVAL)) as u32
            }
            _ => MIN_PROBE_INTERVAL,
        }
    }
}

/// How many passes of a session ran on each arm, over both paths.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadUse {
    /// Passes on the whole team.
    pub team: u64,
    /// Passes on the calling thread alone.
    pub caller: u64,
}

/// Chooses the arm of each pass of one session (see the module docs).
#[derive(Clone, Debug)]
pub struct ThreadTuner {
    paths: [PathState; 2],
    /// `false`: always the team (measurement off).
    adaptive: bool,
}

impl ThreadTuner {
    /// A tuner that measures (`adaptive`) or always answers [`Arm::Team`].
    pub fn new(adaptive: bool) -> ThreadTuner {
        ThreadTuner {
            paths: [PathState::new(), PathState::new()],
            adaptive,
        }
    }

    /// The arm of the next pass on `path`.
    pub fn choose(&mut self, path: Path) -> Choice {
        let choice = |arm, probe| Choice { arm, probe, path };
        if !self.adaptive {
            return choice(Arm::Team, false);
        }
        let s = &mut self.paths[path.index()];
        if let Some(p) = s.probe.as_mut().filter(|p| p.to_run > 0) {
            p.to_run -= 1;
            return choice(p.arm, true);
        }
        let best = s.best();
        if s.warmed && s.probe.is_none() {
            s.since_probe += 1;
            if s.since_probe >= s.probe_interval {
                s.since_probe = 0;
                s.probe = Some(Probe {
                    arm: best.other(),
                    to_run: PROBE_PASSES - 1,
                    measured: 0,
                    nanos_per_image: 0.0,
                });
                return choice(best.other(), true);
            }
        }
        choice(best, false)
    }

    /// Records that the pass `choice` took `nanos` for `images` images. A pass that failed
    /// need not be recorded.
    pub fn record(&mut self, choice: Choice, nanos: u128, images: usize) {
        let adaptive = self.adaptive;
        let s = &mut self.paths[choice.path.index()];
        s.passes[choice.arm.index()] += 1;
        if !adaptive || images == 0 {
            return;
        }
        if !s.warmed {
            s.warmed = true;
            return;
        }
        let sample = nanos as f64 / images as f64;
        if !choice.probe {
            let e = &mut s.estimate[choice.arm.index()];
            *e = Some(e.map_or(sample, |old| old + (sample - old) / 4.0));
            return;
        }
        let Some(p) = s.probe.as_mut() else {
            return;
        };
        p.measured += 1;
        p.nanos_per_image += sample;
        if p.to_run > 0 {
            return;
        }
        // The probe's last pass: its mean becomes the probed arm's estimate.
        let (arm, mean) = (p.arm, p.nanos_per_image / f64::from(p.measured));
        s.probe = None;
        let before = s.best();
        s.estimate[arm.index()] = Some(mean);
        s.probe_interval = if s.best() == before {
            (s.probe_interval * 2).min(s.budget_interval())
        } else {
            MIN_PROBE_INTERVAL
        };
    }

    /// Passes run on each arm so far.
    pub fn thread_use(&self) -> ThreadUse {
        let sum = |arm: Arm| self.paths.iter().map(|p| p.passes[arm.index()]).sum();
        ThreadUse {
            team: sum(Arm::Team),
            caller: sum(Arm::Caller),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `passes` passes on `path` where each arm's pass takes `time(arm, pass)`
    /// nanoseconds per image; returns the passes on each arm and the total time.
    fn simulate(
        t: &mut ThreadTuner,
        passes: usize,
        mut time: impl FnMut(Arm, usize) -> u128,
    ) -> ([u64; 2], u128) {
        let (mut counts, mut total) = ([0; 2], 0);
        for i in 0..passes {
            let c = t.choose(Path::SplitLayers);
            counts[c.arm.index()] += 1;
            let ns = time(c.arm, i);
            total += ns;
            t.record(c, ns, 1);
        }
        (counts, total)
    }

    fn fixed(team: u128, caller: u128) -> impl FnMut(Arm, usize) -> u128 {
        move |arm, _| match arm {
            Arm::Team => team,
            Arm::Caller => caller,
        }
    }

    #[test]
    fn settles_on_the_faster_arm_within_the_probe_budget() {
        let mut t = ThreadTuner::new(true);
        // A busy machine: the caller alone is faster. The first probe (after the unmeasured
        // pass and 3 more) switches; then the team is probed at growing intervals.
        let ([team, caller], _) = simulate(&mut t, 1000, fixed(6_100, 4_000));
        assert_eq!(team + caller, 1000);
        assert!(team <= 48, "{team} team passes of 1000");
        // Settled: the probes cost at most about the budget.
        let (_, total) = simulate(&mut t, 4000, fixed(6_100, 4_000));
        let best = 4000 * 4_000;
        let overhead = total as f64 / best as f64 - 1.0;
        assert!(overhead <= 1.5 * PROBE_BUDGET, "{overhead}");
        // The other process stops: the team is faster again, found at the next probe.
        let ([team, _], _) = simulate(&mut t, 1000, fixed(2_000, 4_000));
        assert!(team >= 740, "{team}");
        let (_, total) = simulate(&mut t, 4000, fixed(2_000, 4_000));
        let overhead = total as f64 / (4000.0 * 2_000.0) - 1.0;
        assert!(overhead <= 1.5 * PROBE_BUDGET, "{overhead}");
    }

    #[test]
    fn the_first_pass_is_not_measured_and_the_team_goes_first() {
        let mut t = ThreadTuner::new(true);
        let c = t.choose(Path::TileImages);
        assert_eq!(c.arm, Arm::Team);
        // A slow first pass (threads starting) does not count against the team.
        t.record(c, 1_000_000, 1);
        assert_eq!(t.paths[Path::TileImages.index()].estimate, [None, None]);
        // The other path has its own state.
        assert!(!t.paths[Path::SplitLayers.index()].warmed);
    }

    #[test]
    fn one_lucky_pass_of_a_probe_does_not_switch() {
        let mut t = ThreadTuner::new(true);
        simulate(&mut t, 100, fixed(2_000, 4_000));
        // Every probe of the caller has one pass at 1 us among three at 4 us: mean 3.25 us,
        // slower than the team's 2 us, so the team stays the choice.
        let mut probe_pass = 0;
        let ([team, caller], _) = simulate(&mut t, 1000, |arm, _| match arm {
            Arm::Team => 2_000,
            Arm::Caller => {
                probe_pass += 1;
                if probe_pass % PROBE_PASSES as usize == 1 {
                    1_000
                } else {
                    4_000
                }
            }
        });
        assert!(
            caller <= 40 && caller % u64::from(PROBE_PASSES) == 0,
            "{caller}"
        );
        assert_eq!(team + caller, 1000);
        assert_eq!(t.paths[0].best(), Arm::Team);
    }

    #[test]
    fn not_adaptive_always_uses_the_team() {
        let mut t = ThreadTuner::new(false);
        let ([team, caller], _) = simulate(&mut t, 100, fixed(9_000, 1_000));
        assert_eq!((team, caller), (100, 0));
        assert_eq!(
            t.thread_use(),
            ThreadUse {
                team: 100,
                caller: 0
            }
        );
    }
}

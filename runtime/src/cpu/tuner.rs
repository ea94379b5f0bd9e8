//! [`ThreadTuner`]: decides, forward pass by forward pass, whether a session's pass runs on its
//! whole team or on the calling thread alone, from the measured time of recent passes.
//!
//! Why: a team waits for every part it hands out. When another process shares the cores, a
//! worker descheduled in the middle of its part holds the caller up for the rest of its time
//! slice, and two threads can take longer than one (docs/benchmarks.md, "Threads under
//! contention": 6.1 ms on two threads against 4.0 ms on one). No choice made once fits both a
//! quiet and a busy machine, so the tuner measures: it keeps an estimate of the time per image
//! of each choice ("arm"), runs the faster one, and now and then probes the other so that it
//! notices when the machine changes. A probe that confirms the current choice doubles the
//! interval to the next probe (up to [`MAX_PROBE_INTERVAL`] passes, so probing a much slower arm
//! costs well under 1% of the time); a probe that changes the choice resets it.
//!
//! Batches that split each convolution across the team and batches tiled by images behave
//! differently, so each path has its own estimates. A session's first pass on a path (threads
//! starting, memory first touched) is not measured.
//!
//! Must not know about models, kernels or threads: it sees only choices and times; the session
//! applies the choice (`Team::set_active`).

/// Passes between probes of the arm not chosen, at first and after the choice changed.
pub const MIN_PROBE_INTERVAL: u32 = 4;
/// The longest interval between probes.
pub const MAX_PROBE_INTERVAL: u32 = 256;

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

/// The decision for one pass: which arm runs it, and whether it is a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    pub arm: Arm,
    pub probe: bool,
    path: Path,
}

/// Estimates and probe schedule of one path.
#[derive(Clone, Debug)]
struct PathState {
    /// Nanoseconds per image of each arm (exponential average of the arm's own passes; a
    /// probe replaces it, since it is the only recent sample).
    estimate: [Option<f64>; 2],
    /// Passes since the last probe, and the interval to the next one.
    since_probe: u32,
    probe_interval: u32,
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

    fn state(&mut self, path: Path) -> &mut PathState {
        &mut self.paths[path as usize]
    }

    /// The arm of the next pass on `path`.
    pub fn choose(&mut self, path: Path) -> Choice {
        if !self.adaptive {
            return Choice {
                arm: Arm::Team,
                probe: false,
                path,
            };
        }
        let s = self.state(path);
        let best = s.best();
        if s.warmed {
            s.since_probe += 1;
            if s.since_probe >= s.probe_interval {
                s.since_probe = 0;
                return Choice {
                    arm: best.other(),
                    probe: true,
                    path,
                };
            }
        }
        Choice {
            arm: best,
            probe: false,
            path,
        }
    }

    /// Records that the pass `choice` took `nanos` for `images` images.
    pub fn record(&mut self, choice: Choice, nanos: u128, images: usize) {
        let adaptive = self.adaptive;
        let s = self.state(choice.path);
        s.passes[choice.arm.index()] += 1;
        if !adaptive || images == 0 {
            return;
        }
        if !s.warmed {
            s.warmed = true;
            return;
        }
        let sample = nanos as f64 / images as f64;
        let before = s.best();
        let e = &mut s.estimate[choice.arm.index()];
        *e = Some(match *e {
            Some(old) if !choice.probe => old + (sample - old) / 4.0,
            _ => sample,
        });
        if choice.probe {
            s.probe_interval = if s.best() == before {
                (s.probe_interval * 2).min(MAX_PROBE_INTERVAL)
            } else {
                MIN_PROBE_INTERVAL
            };
        }
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

    /// Runs `passes` passes on `path` where the team takes `team` and the caller alone
    /// `caller` nanoseconds per image; returns the passes on each arm.
    fn simulate(t: &mut ThreadTuner, passes: usize, team: u128, caller: u128) -> [u64; 2] {
        let mut counts = [0; 2];
        for _ in 0..passes {
            let c = t.choose(Path::SplitLayers);
            counts[c.arm.index()] += 1;
            t.record(
                c,
                match c.arm {
                    Arm::Team => team,
                    Arm::Caller => caller,
                },
                1,
            );
        }
        counts
    }

    #[test]
    fn settles_on_the_faster_arm_and_probes_rarely() {
        let mut t = ThreadTuner::new(true);
        // A busy machine: the caller alone is faster.
        let [team, caller] = simulate(&mut t, 1000, 6_100, 4_000);
        // The unmeasured first pass, 3 more before the first probe, then one probe after 4,
        // 8, ..., 256, 256, 256 passes: 12.
        assert!(team <= 12, "{team} team passes of 1000");
        assert_eq!(team + caller, 1000);
        // The other process stops: the team is faster again, found within a probe interval.
        let [team, _] = simulate(&mut t, 1000, 2_000, 4_000);
        assert!(team >= 1000 - MAX_PROBE_INTERVAL as u64 - 10, "{team}");
        // Once settled, the slower arm runs only at the longest probe interval.
        let [_, caller] = simulate(&mut t, 2560, 2_000, 4_000);
        assert!(caller <= 11, "{caller}");
    }

    #[test]
    fn the_first_pass_is_not_measured_and_the_team_goes_first() {
        let mut t = ThreadTuner::new(true);
        let c = t.choose(Path::TileImages);
        assert_eq!(c.arm, Arm::Team);
        // A slow first pass (threads starting) does not count against the team.
        t.record(c, 1_000_000, 1);
        assert_eq!(t.paths[Path::TileImages as usize].estimate, [None, None]);
        // The other path has its own state.
        assert!(!t.paths[Path::SplitLayers as usize].warmed);
    }

    #[test]
    fn one_noisy_probe_is_corrected() {
        let mut t = ThreadTuner::new(true);
        simulate(&mut t, 100, 2_000, 4_000);
        // A probe of the caller that happened to be fast switches to it...
        let c = loop {
            let c = t.choose(Path::SplitLayers);
            if c.probe {
                break c;
            }
            t.record(c, 2_000, 1);
        };
        assert_eq!(c.arm, Arm::Caller);
        t.record(c, 1_000, 1);
        // ...and its real time switches back within a few passes.
        let mut caller_passes = 0;
        for _ in 0..20 {
            let c = t.choose(Path::SplitLayers);
            if c.arm == Arm::Caller {
                caller_passes += 1;
            }
            t.record(c, if c.arm == Arm::Team { 2_000 } else { 4_000 }, 1);
        }
        assert!(caller_passes <= 6, "{caller_passes}");
        assert_eq!(t.choose(Path::SplitLayers).arm, Arm::Team);
    }

    #[test]
    fn not_adaptive_always_uses_the_team() {
        let mut t = ThreadTuner::new(false);
        let [team, caller] = simulate(&mut t, 100, 9_000, 1_000);
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

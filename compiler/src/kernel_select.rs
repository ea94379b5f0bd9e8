//! The accuracy guard: chooses each 3x3 convolution's CPU kernel (Winograd F(4x4, 3x3),
//! F(2x2, 3x3) or the direct method) so that the compiled model's end-to-end relative error,
//! *measured* against the reference interpreter, stays within a budget.
//!
//! Winograd kernels trade rounding for speed, and how much rounding a model tolerates depends
//! on its weights (a model whose logits are a small difference of large values magnifies it).
//! The compiler holds the weights, so it measures instead of guessing: it runs calibration
//! input (random, or the user's) through the f64-accumulating interpreter once, then through
//! the real compiled kernels for each candidate choice, and demotes layers one group at a time
//! until the error is within the budget. The default budget keeps the model in the accuracy
//! class of direct convolution: [`DEFAULT_FACTOR`] times the error of the all-direct build of
//! the same model on the same input.
//!
//! How groups are demoted: each group's contribution to the squared error is measured alone
//! (the group at a Winograd level, every other layer direct); rounding errors of different
//! layers add roughly in quadrature, so the greedy step that buys the most error per lost
//! multiplication is taken until the predicted error fits, then the choice is measured, and
//! demotion continues while the measurement does not fit. The result is always a measured
//! error, never a prediction.
//!
//! Owns the choice of kernels and its report. Must not change the graph, the plan or any
//! kernel: it only picks among the backend's options ([`CpuOptions`]) and measures them.

use crate::artifact::{self, ArtifactError};
use crate::backend::BackendError;
use crate::backend::cpu::{self, ConvChoice, ConvKernel, CpuOptions, CpuProgram, Winograd};
use crate::plan::memory::MemoryPlan;
use ir::Graph;
use ir::interp::{self, Tensor};
use std::fmt;

/// The default budget, as a multiple of the all-direct build's measured error: the accuracy
/// class of direct convolution.
pub const DEFAULT_FACTOR: f64 = 1.0;

/// At most this many groups of layers are measured one by one (two measurements each).
const MAX_GROUPS: usize = 8;

/// Calibration rows when the user gives none.
const DEFAULT_CALIBRATION_ROWS: usize = 2;

/// How the CPU backend's convolution kernels are chosen.
#[derive(Clone, Debug, PartialEq)]
pub enum KernelPolicy {
    /// Measured against the reference interpreter: the fastest choice whose end-to-end relative
    /// error is within `tolerance`, or within [`DEFAULT_FACTOR`] x the all-direct error when
    /// `tolerance` is `None`.
    Guarded {
        tolerance: Option<f64>,
        /// NCHW float32 rows to measure on (a whole number of input images); random rows
        /// from a fixed seed when `None`.
        calibration: Option<Vec<f32>>,
    },
    /// Every 3x3 convolution capped at one tile, unmeasured: an explicit speed/rounding
    /// choice of the user's.
    Fixed(Winograd),
}

impl Default for KernelPolicy {
    fn default() -> KernelPolicy {
        KernelPolicy::Guarded {
            tolerance: None,
            calibration: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    #[error("running a candidate kernel choice: {0}")]
    Load(#[from] runtime::LoadError),
    #[error("running a candidate kernel choice: {0}")]
    Run(#[from] runtime::RunError),
    #[error("the reference interpreter on the calibration input: {0}")]
    Reference(#[from] interp::InterpError),
    #[error("calibration input: {0}")]
    Calibration(String),
    #[error("the tolerance must be a positive finite number, not {0}")]
    Tolerance(f64),
}

/// Where the budget came from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    /// `--tolerance`.
    Tolerance(f64),
    /// [`DEFAULT_FACTOR`] x the measured error of the all-direct build.
    DirectClass { direct_error: f64 },
}

impl Budget {
    pub fn limit(self) -> f64 {
        match self {
            Budget::Tolerance(t) => t,
            Budget::DirectClass { direct_error } => DEFAULT_FACTOR * direct_error,
        }
    }
}

/// What the guard chose and measured.
#[derive(Clone, Debug)]
pub struct KernelSelection {
    pub budget: Budget,
    /// The chosen build's end-to-end relative error on the calibration input.
    pub error: f64,
    /// The all-direct build's error on the same input, when it was measured.
    pub direct_error: Option<f64>,
    /// Whether `error` is within the budget (false only when no choice reaches it; the most
    /// accurate measured choice is then kept).
    pub met: bool,
    /// Compiled candidates measured.
    pub trials: usize,
    /// Calibration rows.
    pub rows: usize,
    /// Seconds spent in the reference interpreter, and building and running candidates.
    pub reference_seconds: f64,
    pub candidates_seconds: f64,
    /// Every convolution's kernel, in schedule order.
    pub convs: Vec<ConvChoice>,
}

impl KernelSelection {
    /// Convolutions per kernel, fastest kernel first.
    pub fn counts(&self) -> [(ConvKernel, usize); 3] {
        let n = |k| self.convs.iter().filter(|c| c.kernel == k).count();
        [
            (ConvKernel::WinogradF4, n(ConvKernel::WinogradF4)),
            (ConvKernel::WinogradF2, n(ConvKernel::WinogradF2)),
            (ConvKernel::Direct, n(ConvKernel::Direct)),
        ]
    }

    /// Per-convolution kernel lines for `--emit plan`.
    pub fn render_kernels(&self) -> String {
        let mut out = String::from("\nkernels (CPU, chosen under the accuracy budget):\n");
        for c in &self.convs {
            let note = if c.kernel != c.fastest {
                format!("  (demoted from {})", c.fastest)
            } else {
                String::new()
            };
            out.push_str(&format!("  {:<48} {}{note}\n", c.label, c.kernel));
        }
        out
    }
}

impl fmt::Display for KernelSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let budget = match self.budget {
            Budget::Tolerance(t) => format!("--tolerance {t:.1e}"),
            Budget::DirectClass { direct_error } => {
                format!("{DEFAULT_FACTOR}x the direct-convolution error {direct_error:.2e}")
            }
        };
        let verdict = if self.met { "within" } else { "OVER" };
        let counts: Vec<String> = self
            .counts()
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        write!(
            f,
            "accuracy: relative error {:.2e} against the f64 reference on {} calibration row{} \
             ({verdict} budget {:.2e} = {budget}; {} builds measured in {:.1} s, reference {:.1} s); \
             convolutions: {}",
            self.error,
            self.rows,
            if self.rows == 1 { "" } else { "s" },
            self.budget.limit(),
            self.trials,
            self.candidates_seconds,
            self.reference_seconds,
            counts.join(", ")
        )
    }
}

/// Compiles the CPU program under `policy`: fixed caps as given, or the guard's measured
/// choice. Returns the program and, for the guard, what it chose and measured.
pub fn compile(
    graph: &Graph,
    plan: &MemoryPlan,
    policy: &KernelPolicy,
) -> Result<(CpuProgram, Option<KernelSelection>), SelectError> {
    let (tolerance, calibration) = match policy {
        KernelPolicy::Fixed(w) => {
            return Ok((
                cpu::compile_with(graph, plan, &CpuOptions::uniform(*w))?,
                None,
            ));
        }
        KernelPolicy::Guarded {
            tolerance,
            calibration,
        } => (*tolerance, calibration.as_deref()),
    };
    if let Some(t) = tolerance
        && !(t.is_finite() && t > 0.0)
    {
        return Err(SelectError::Tolerance(t));
    }
    let started = std::time::Instant::now();
    let mut code: cpu::CodeCache = None;
    let fastest =
        cpu::compile_reusing(graph, plan, &CpuOptions::uniform(Winograd::F4x4), &mut code)?;
    let eligible: Vec<ConvChoice> = fastest
        .convs
        .iter()
        .filter(|c| c.fastest != ConvKernel::Direct)
        .cloned()
        .collect();
    if eligible.is_empty() {
        // Nothing to choose: every convolution runs direct, whatever the budget.
        return Ok((fastest, None));
    }
    let mut bench = Bench::new(graph, plan, calibration, code)?;
    let fast_error = bench.measure_program(&fastest)?;
    let (budget, direct) = match tolerance {
        Some(t) => (Budget::Tolerance(t), None),
        None => {
            let (e, p) = bench.measure(&CpuOptions::uniform(Winograd::Off))?;
            (Budget::DirectClass { direct_error: e }, Some((e, p)))
        }
    };
    let limit = budget.limit();
    let rows = bench.rows;
    let reference_seconds = bench.reference_seconds;
    let finish = |program: CpuProgram, error: f64, direct_error: Option<f64>, trials: usize| {
        let met = error <= limit;
        let candidates_seconds = started.elapsed().as_secs_f64() - reference_seconds;
        let selection = KernelSelection {
            budget,
            error,
            direct_error,
            met,
            trials,
            rows,
            reference_seconds,
            candidates_seconds,
            convs: program.convs.clone(),
        };
        (program, Some(selection))
    };
    if fast_error <= limit {
        let direct_error = direct.as_ref().map(|d| d.0);
        return Ok(finish(fastest, fast_error, direct_error, bench.trials));
    }
    let (direct_error, direct_program) = match direct {
        Some(d) => d,
        None => bench.measure(&CpuOptions::uniform(Winograd::Off))?,
    };

    // Groups of consecutive eligible layers, each measured alone at each Winograd level.
    let groups = split_groups(&eligible, MAX_GROUPS);
    let base_sq = direct_error * direct_error;
    let mut levels: Vec<Vec<Level>> = Vec::with_capacity(groups.len());
    for group in &groups {
        let mut ladder = vec![Level {
            cap: Winograd::Off,
            delta_sq: 0.0,
            multiplies: group_multiplies(group, Winograd::Off),
        }];
        for cap in [Winograd::F2x2, Winograd::F4x4] {
            if !group.iter().any(|c| reaches(c.fastest, cap)) {
                continue;
            }
            let mut options = CpuOptions::uniform(Winograd::Off);
            options.per_layer = group.iter().map(|c| (c.node, cap)).collect();
            let (e, _) = bench.measure(&options)?;
            ladder.push(Level {
                cap,
                delta_sq: e * e - base_sq,
                multiplies: group_multiplies(group, cap),
            });
        }
        levels.push(ladder);
    }

    // Greedy demotion from the fastest level of every group.
    let mut at: Vec<usize> = levels.iter().map(|l| l.len() - 1).collect();
    let predicted = |at: &[usize]| -> f64 {
        let sq = base_sq
            + at.iter()
                .zip(&levels)
                .map(|(&i, l)| l[i].delta_sq)
                .sum::<f64>();
        sq.max(0.0).sqrt()
    };
    let demote = |at: &mut Vec<usize>| -> bool {
        let best = (0..at.len())
            .filter(|&g| at[g] > 0)
            .map(|g| {
                let (now, next) = (&levels[g][at[g]], &levels[g][at[g] - 1]);
                let gain = now.delta_sq - next.delta_sq;
                let cost = (next.multiplies - now.multiplies).max(1.0);
                (g, gain / cost)
            })
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)));
        match best {
            Some((g, _)) => {
                at[g] -= 1;
                true
            }
            None => false,
        }
    };
    let mut best: (f64, CpuProgram) = (direct_error, direct_program);
    loop {
        while predicted(&at) > limit && demote(&mut at) {}
        let mut options = CpuOptions::uniform(Winograd::Off);
        for (group, (&i, ladder)) in groups.iter().zip(at.iter().zip(&levels)) {
            for c in group.iter() {
                options.per_layer.insert(c.node, ladder[i].cap);
            }
        }
        if at.iter().all(|&i| i == 0) {
            // All direct: measured already.
            break;
        }
        let (e, program) = bench.measure(&options)?;
        if e <= limit {
            return Ok(finish(program, e, Some(direct_error), bench.trials));
        }
        if e < best.0 {
            best = (e, program);
        }
        if !demote(&mut at) {
            break;
        }
    }
    let (e, program) = best;
    Ok(finish(program, e, Some(direct_error), bench.trials))
}

/// One rung of a group's ladder.
struct Level {
    cap: Winograd,
    /// Measured squared error of this group alone at this level, minus the all-direct one.
    delta_sq: f64,
    /// The group's multiplications per image at this level.
    multiplies: f64,
}

fn reaches(fastest: ConvKernel, cap: Winograd) -> bool {
    fastest.cap() >= cap
}

fn group_multiplies(group: &[ConvChoice], cap: Winograd) -> f64 {
    group
        .iter()
        .map(|c| {
            let kernel = match (cap, c.fastest) {
                (Winograd::Off, _) | (_, ConvKernel::Direct) => ConvKernel::Direct,
                (Winograd::F2x2, _) | (_, ConvKernel::WinogradF2) => ConvKernel::WinogradF2,
                (Winograd::F4x4, ConvKernel::WinogradF4) => ConvKernel::WinogradF4,
            };
            c.macs as f64 * kernel.relative_multiplies()
        })
        .sum()
}

/// Splits `items` into at most `max` runs of consecutive items, as equal in length as they
/// can be.
fn split_groups<T>(items: &[T], max: usize) -> Vec<&[T]> {
    let n = max.min(items.len()).max(1);
    let mut out = Vec::with_capacity(n);
    let mut start = 0;
    for g in 0..n {
        let end = items.len() * (g + 1) / n;
        if end > start {
            out.push(&items[start..end]);
        }
        start = end;
    }
    out
}

/// The calibration input, its reference output, and the measuring of candidates.
struct Bench<'a> {
    graph: &'a Graph,
    plan: &'a MemoryPlan,
    input: Vec<f32>,
    rows: usize,
    reference: Vec<f32>,
    reference_seconds: f64,
    trials: usize,
    /// Candidates differ in descriptors and weights, not in calls: their machine code is
    /// compiled once.
    code: cpu::CodeCache,
}

impl<'a> Bench<'a> {
    fn new(
        graph: &'a Graph,
        plan: &'a MemoryPlan,
        calibration: Option<&[f32]>,
        code: cpu::CodeCache,
    ) -> Result<Bench<'a>, SelectError> {
        let &input_id = graph
            .inputs()
            .first()
            .ok_or_else(|| SelectError::Calibration("the model has no input".into()))?;
        let t = graph.node(input_id).ty;
        let per_image = t.elements() as usize;
        let input = match calibration {
            Some(x) => {
                if per_image == 0 || x.is_empty() || !x.len().is_multiple_of(per_image) {
                    return Err(SelectError::Calibration(format!(
                        "{} values are not a whole number of {t} images",
                        x.len()
                    )));
                }
                if x.iter().any(|v| !v.is_finite()) {
                    return Err(SelectError::Calibration(
                        "it holds a NaN or an infinity".into(),
                    ));
                }
                x.to_vec()
            }
            None => interp::random_input(per_image * DEFAULT_CALIBRATION_ROWS, 0x5EED),
        };
        let rows = input.len() / per_image.max(1);
        let started = std::time::Instant::now();
        let reference = interp::run(
            graph,
            &[Tensor {
                shape: [
                    rows,
                    t.channels as usize,
                    t.height as usize,
                    t.width as usize,
                ],
                data: input.clone(),
            }],
        )?
        .into_iter()
        .next()
        .map(|t| t.data)
        .unwrap_or_default();
        Ok(Bench {
            graph,
            plan,
            input,
            rows,
            reference,
            reference_seconds: started.elapsed().as_secs_f64(),
            trials: 0,
            code,
        })
    }

    fn measure(&mut self, options: &CpuOptions) -> Result<(f64, CpuProgram), SelectError> {
        let program = cpu::compile_reusing(self.graph, self.plan, options, &mut self.code)?;
        let e = self.measure_program(&program)?;
        Ok((e, program))
    }

    fn measure_program(&mut self, program: &CpuProgram) -> Result<f64, SelectError> {
        let max_batch = u32::try_from(self.rows)
            .map_err(|_| SelectError::Calibration(format!("{} rows are too many", self.rows)))?;
        let bytes = artifact::write_cpu(self.graph, self.plan, program, max_batch)?;
        let model = runtime::Model::from_bytes(&bytes)?;
        // One thread: every split of the work gives the same bits (a runtime test checks), and
        // a compile must not depend on what else the machine is running.
        let mut session = model.session_with_threads(1);
        let got = session.run(&self.input, self.rows)?;
        self.trials += 1;
        let e = interp::relative_error(got, &self.reference);
        // A NaN compares as over any budget; keep it comparable for the "best so far" rule.
        Ok(if e.is_nan() { f64::INFINITY } else { e })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_cover_every_item_in_order() {
        let items: Vec<u32> = (0..19).collect();
        let groups = split_groups(&items, 8);
        assert_eq!(groups.len(), 8);
        assert_eq!(groups.concat(), items);
        assert!(groups.iter().all(|g| (2..=3).contains(&g.len())));
        assert_eq!(split_groups(&items[..3], 8).len(), 3);
        assert_eq!(split_groups(&items[..1], 8), vec![&items[..1]]);
    }
}

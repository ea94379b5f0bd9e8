//! `--emit memory-svg`: a picture of where memory goes. Top: bytes live over the schedule
//! (x = fraction of the run) for three executors: naive (every tensor of the unoptimised graph
//! its own buffer, never freed), a framework that frees after last use but materialises every
//! concatenation, batch-norm and ReLU output (the unoptimised graph with liveness), and the
//! sparsec plan (optimised graph), with the arena size as a line. Bottom: the arena as a Gantt
//! chart, one rectangle per buffer (x = lifetime, y = offset range).
//!
//! Pure text generation from a [`MemoryPlan`] and the unoptimised [`Liveness`]; deterministic.

use super::liveness::Liveness;
use super::memory::MemoryPlan;
use std::fmt::Write;

const W: f64 = 1000.0;
const CHART_H: f64 = 260.0;
const GANTT_H: f64 = 320.0;
const LEFT: f64 = 90.0;
const TOP: f64 = 40.0;

fn live_curve(l: &Liveness, batch: u64, free: bool) -> Vec<u64> {
    let steps = l.steps() as usize;
    let mut delta = vec![0i128; steps + 2];
    for b in &l.buffers {
        let bytes = i128::from(b.bytes_per_image * batch);
        delta[b.first as usize] += bytes;
        if free {
            delta[b.last as usize + 1] -= bytes;
        }
    }
    let mut live = 0i128;
    (0..steps)
        .map(|s| {
            live += delta[s];
            live as u64
        })
        .collect()
}

fn polyline(points: &[u64], max: f64, color: &str, label: &str) -> String {
    let n = points.len().max(2) as f64 - 1.0;
    let mut d = String::new();
    for (i, &p) in points.iter().enumerate() {
        let x = LEFT + W * i as f64 / n;
        let y = TOP + CHART_H - CHART_H * (p as f64 / max).min(1.0);
        let _ = write!(d, "{}{x:.1},{y:.1}", if i == 0 { "" } else { " " });
    }
    format!(
        "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{d}\"><title>{label}</title></polyline>\n"
    )
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}

pub fn memory_svg(name: &str, raw: &Liveness, plan: &MemoryPlan) -> String {
    let naive = live_curve(raw, plan.batch, false);
    let framework = live_curve(raw, plan.batch, true);
    let planned = live_curve(&plan.liveness, plan.batch, true);
    // Scale to the freed-after-use executors; the naive curve is clipped at the top (its peak
    // is in the legend), or it would flatten the two curves worth comparing.
    let peak = |v: &[u64]| v.iter().copied().max().unwrap_or(0);
    let max = (peak(&framework)
        .max(peak(&planned))
        .max(plan.arena.arena_bytes)
        .max(1) as f64)
        * 1.25;
    let total_h = TOP + CHART_H + 60.0 + GANTT_H + 40.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{total_h}\" font-family=\"sans-serif\" font-size=\"12\">",
        W + LEFT + 30.0
    );
    let _ = writeln!(s, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
    let _ = writeln!(
        s,
        "<text x=\"{LEFT}\" y=\"20\" font-size=\"15\">{name}: activation memory at batch {} (x: fraction of the schedule)</text>",
        plan.batch
    );
    // Axes and grid for the live-bytes chart.
    for i in 0..=4 {
        let v = max * f64::from(i) / 4.0;
        let y = TOP + CHART_H - CHART_H * f64::from(i) / 4.0;
        let _ = writeln!(
            s,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>",
            LEFT + W
        );
        let _ = writeln!(
            s,
            "<text x=\"5\" y=\"{:.1}\">{}</text>",
            y + 4.0,
            mib(v as u64)
        );
    }
    s.push_str(&polyline(
        &naive,
        max,
        "#d62728",
        "naive: every tensor its own buffer",
    ));
    s.push_str(&polyline(
        &framework,
        max,
        "#ff7f0e",
        "free after last use, concatenations materialised",
    ));
    s.push_str(&polyline(
        &planned,
        max,
        "#1f77b4",
        "sparsec: fused, concatenations read in place",
    ));
    let ay = TOP + CHART_H - CHART_H * plan.arena.arena_bytes as f64 / max;
    let _ = writeln!(
        s,
        "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{ay:.1}\" y2=\"{ay:.1}\" stroke=\"#1f77b4\" stroke-dasharray=\"6 4\"/>",
        LEFT + W
    );
    let legend = [
        (
            "#d62728",
            format!(
                "naive (never freed, clipped at the top): peak {}",
                mib(naive.iter().copied().max().unwrap_or(0))
            ),
        ),
        (
            "#ff7f0e",
            format!(
                "concat-materialising, freed after last use: peak {}",
                mib(framework.iter().copied().max().unwrap_or(0))
            ),
        ),
        (
            "#1f77b4",
            format!(
                "sparsec plan: arena {} (lower bound {})",
                mib(plan.arena.arena_bytes),
                mib(plan.arena.lower_bound_bytes)
            ),
        ),
    ];
    for (i, (color, text)) in legend.iter().enumerate() {
        let y = TOP + 15.0 + 16.0 * i as f64;
        let _ = writeln!(
            s,
            "<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{color}\"/>",
            LEFT + 560.0,
            y - 9.0
        );
        let _ = writeln!(s, "<text x=\"{}\" y=\"{y}\">{text}</text>", LEFT + 575.0);
    }
    // Gantt chart of the arena.
    let gy = TOP + CHART_H + 60.0;
    let _ = writeln!(
        s,
        "<text x=\"{LEFT}\" y=\"{}\" font-size=\"14\">arena blocks: x = lifetime (schedule steps), y = offset; {} buffers in {}</text>",
        gy - 10.0,
        plan.liveness.buffers.len(),
        mib(plan.arena.arena_bytes)
    );
    let _ = writeln!(
        s,
        "<rect x=\"{LEFT}\" y=\"{gy}\" width=\"{W}\" height=\"{GANTT_H}\" fill=\"#f7f7f7\" stroke=\"#999\"/>"
    );
    let steps = f64::from(plan.liveness.steps().max(1));
    let arena = plan.arena.arena_bytes.max(1) as f64;
    for (i, b) in plan.liveness.buffers.iter().enumerate() {
        let size = b.bytes_per_image * plan.batch;
        if size == 0 {
            continue;
        }
        let x = LEFT + W * f64::from(b.first) / steps;
        let w = (W * f64::from(b.last + 1 - b.first) / steps).max(0.5);
        let y = gy + GANTT_H * plan.arena.offsets[i] as f64 / arena;
        let h = (GANTT_H * size as f64 / arena).max(0.5);
        let hue = (i * 47) % 360;
        let _ = writeln!(
            s,
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" fill=\"hsl({hue},60%,65%)\" stroke=\"#333\" stroke-width=\"0.2\"><title>b{i}: {size} bytes at {} steps {}..{}</title></rect>",
            plan.arena.offsets[i], b.first, b.last
        );
    }
    s.push_str("</svg>\n");
    s
}

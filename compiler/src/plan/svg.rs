//! `--emit memory-svg`: a picture of where memory goes. Top: bytes live over the schedule
//! (x = fraction of the run) for three executors: naive (every tensor of the unoptimised graph
//! its own buffer, never freed), a framework that frees after last use but materialises every
//! concatenation, batch-norm and ReLU output (the unoptimised graph with liveness), and the
//! sparsec plan (optimised graph), with the arena size as a line. Bottom: the arena as a Gantt
//! chart, one rectangle per buffer (x = lifetime in schedule steps, y = offset range), with
//! step and offset ticks, and each block named by its producer (`%id op scope`, numbered as in
//! `--emit opt-ir`) where it is large enough to hold the text (always in its hover text).
//!
//! Pure text generation from a [`MemoryPlan`], its graph and the unoptimised [`Liveness`];
//! deterministic. Every string that comes from the model is XML-escaped ([`escape`]).

use super::liveness::Liveness;
use super::memory::MemoryPlan;
use ir::Graph;
use std::fmt::Write;

/// `text` with XML's five special characters escaped, for element text and attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// Tick values from 0 to `max` at a round step (1, 2 or 5 times a power of ten), at most
/// about `count` of them.
fn ticks(max: f64, count: f64) -> Vec<f64> {
    if max <= 0.0 || !max.is_finite() {
        return vec![0.0];
    }
    let raw = max / count;
    let power = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * power);
    (0..)
        .map(|i| f64::from(i) * step)
        .take_while(|&v| v <= max * (1.0 + 1e-9))
        .collect()
}

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

/// The picture for the model `name`: `raw` is the unoptimised graph's liveness, `graph` the
/// optimised graph that `plan` was made for.
pub fn memory_svg(name: &str, raw: &Liveness, graph: &Graph, plan: &MemoryPlan) -> String {
    let name = escape(name);
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
    let total_h = TOP + CHART_H + 60.0 + GANTT_H + 60.0;
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
        "<text x=\"{LEFT}\" y=\"{}\" font-size=\"14\">arena blocks: x = lifetime (schedule step), y = arena offset; {} buffers in {}</text>",
        gy - 24.0,
        plan.liveness.buffers.len(),
        mib(plan.arena.arena_bytes)
    );
    let _ = writeln!(
        s,
        "<text x=\"{LEFT}\" y=\"{}\" font-size=\"11\">each block: buffer, producer (%node op scope, numbered as in --emit opt-ir); blocks too small for text name it in their hover text</text>",
        gy - 8.0
    );
    let _ = writeln!(
        s,
        "<rect x=\"{LEFT}\" y=\"{gy}\" width=\"{W}\" height=\"{GANTT_H}\" fill=\"#f7f7f7\" stroke=\"#999\"/>"
    );
    let steps = f64::from(plan.liveness.steps().max(1));
    let arena = plan.arena.arena_bytes.max(1) as f64;
    // Offset ticks (left) and step ticks (below), with faint grid lines.
    const MIB: f64 = 1024.0 * 1024.0;
    for v in ticks(arena / MIB, 6.0).into_iter().map(|t| t * MIB) {
        let y = gy + GANTT_H * v / arena;
        let _ = writeln!(
            s,
            "<line x1=\"{}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#bbb\" stroke-width=\"0.5\"/>",
            LEFT - 5.0,
            LEFT + W
        );
        let _ = writeln!(
            s,
            "<text x=\"5\" y=\"{:.1}\" font-size=\"10\">@{}</text>",
            y + 3.0,
            mib(v as u64)
        );
    }
    for v in ticks(steps, 10.0) {
        let x = LEFT + W * v / steps;
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{gy}\" y2=\"{}\" stroke=\"#bbb\" stroke-width=\"0.5\"/>",
            gy + GANTT_H + 5.0
        );
        let _ = writeln!(
            s,
            "<text x=\"{x:.1}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">{v}</text>",
            gy + GANTT_H + 17.0
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\">schedule step</text>",
        LEFT + W / 2.0,
        gy + GANTT_H + 32.0
    );
    let numbering = ir::print::Numbering::new(graph, &plan.liveness.schedule);
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
        let plain = producer_plain(graph, &numbering, b.node);
        let label = escape(&plain);
        let _ = writeln!(
            s,
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" fill=\"hsl({hue},60%,65%)\" stroke=\"#333\" stroke-width=\"0.2\"><title>b{i} {label}: {size} bytes at {} steps {}..{}</title></rect>",
            plan.arena.offsets[i], b.first, b.last
        );
        // The producer's name inside the block, cut to the width (about 4.5 px a character at
        // 8 px), where the block is tall enough for a line of text.
        let fits = (w / 4.5) as usize;
        if h >= 9.0 && fits >= 4 {
            let full = format!("b{i} {plain}");
            let text: String = if full.chars().count() > fits {
                full.chars()
                    .take(fits.saturating_sub(1))
                    .chain(['…'])
                    .collect()
            } else {
                full
            };
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"8\">{}</text>",
                x + 2.0,
                y + h.min(20.0) / 2.0 + 3.0,
                escape(&text)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

/// `%id op scope` of a node, unescaped (empty for a node not in the graph).
fn producer_plain(graph: &Graph, numbering: &ir::print::Numbering, node: ir::NodeId) -> String {
    if !graph.contains(node) {
        return String::new();
    }
    let n = graph.node(node);
    format!(
        "{} {} {}",
        numbering.name(node),
        n.op.mnemonic(),
        graph.scope(n.scope).name
    )
}

#[cfg(test)]
mod tests {
    use super::{escape, ticks};

    #[test]
    fn escapes_markup() {
        assert_eq!(escape("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&apos;");
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(
            ticks(100.0, 10.0),
            (0..=10).map(|i| f64::from(i) * 10.0).collect::<Vec<_>>()
        );
        assert_eq!(
            ticks(37.0, 10.0),
            vec![0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0]
        );
        assert_eq!(ticks(0.0, 5.0), vec![0.0]);
    }
}

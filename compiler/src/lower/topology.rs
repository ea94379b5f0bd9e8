//! Aggregation topology of a block: which earlier outputs y_j layer i reads, in which order.
//!
//! Owns the SparseNet rule (offsets base^m, the official `expFetch` order newest first), dense
//! (all earlier outputs, oldest first), explicit offset lists, and the block-output rule.
//! Pure functions on indices: no graph, no diagnostics (the caller validates bases, offsets
//! and layer counts before asking).

/// Which earlier outputs a layer aggregates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Links {
    /// y_{i-b^m} for every m >= 0 with i - b^m >= 0 (the paper: b = 2).
    Sparse { base: u32 },
    /// y_0 ... y_{i-1} (DenseNet; with a sum, the running total of ResNet).
    Dense,
    /// y_{i-o} for every listed offset o <= i; offsets past the block start are skipped,
    /// as the sparse rule skips them.
    Offsets(Vec<u32>),
}

/// Order of the pieces a layer reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Most recent first: [y_{i-1}, y_{i-2}, y_{i-4}, ...] (the official SparseNet code).
    NewestFirst,
    /// Oldest first: [y_0, y_1, ...] (DenseNet's `torch.cat`).
    OldestFirst,
}

/// What the block hands to the next stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputRule {
    /// The aggregation rule applied as if the output were layer L+1 (the paper's rule).
    NextLayer,
    /// y_L alone.
    Last,
    /// y_0 ... y_L.
    All,
}

/// Indices j (0 = block input) that layer `i` (1-based) reads, in `order`.
pub fn sources(links: &Links, order: Order, i: usize) -> Vec<usize> {
    let mut js: Vec<usize> = match links {
        Links::Sparse { base } => {
            let base = *base as usize;
            let mut out = Vec::new();
            let mut step = 1usize;
            while step <= i {
                out.push(i - step);
                match step.checked_mul(base) {
                    Some(s) => step = s,
                    None => break,
                }
            }
            out
        }
        Links::Dense => (0..i).collect(),
        Links::Offsets(offsets) => offsets
            .iter()
            .map(|&o| o as usize)
            .filter(|&o| o >= 1 && o <= i)
            .map(|o| i - o)
            .collect(),
    };
    js.sort_unstable();
    js.dedup();
    if order == Order::NewestFirst {
        js.reverse();
    }
    js
}

/// Indices the block output aggregates for a block of `layers` layers.
pub fn output_sources(links: &Links, order: Order, rule: OutputRule, layers: usize) -> Vec<usize> {
    match rule {
        OutputRule::NextLayer => sources(links, order, layers + 1),
        OutputRule::Last => vec![layers],
        OutputRule::All => {
            let mut all: Vec<usize> = (0..=layers).collect();
            if order == Order::NewestFirst {
                all.reverse();
            }
            all
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_matches_the_official_exp_fetch() {
        let s = Links::Sparse { base: 2 };
        assert_eq!(sources(&s, Order::NewestFirst, 1), vec![0]);
        assert_eq!(sources(&s, Order::NewestFirst, 2), vec![1, 0]);
        assert_eq!(sources(&s, Order::NewestFirst, 4), vec![3, 2, 0]);
        assert_eq!(sources(&s, Order::NewestFirst, 13), vec![12, 11, 9, 5]);
        assert_eq!(
            output_sources(&s, Order::NewestFirst, OutputRule::NextLayer, 12),
            vec![12, 11, 9, 5]
        );
        assert_eq!(
            output_sources(&s, Order::NewestFirst, OutputRule::NextLayer, 16),
            vec![16, 15, 13, 9, 1]
        );
    }

    #[test]
    fn sparse_fan_in_is_floor_log2_plus_one() {
        let s = Links::Sparse { base: 2 };
        for i in 1..2000usize {
            assert_eq!(
                sources(&s, Order::NewestFirst, i).len(),
                i.ilog2() as usize + 1,
                "layer {i}"
            );
        }
    }

    #[test]
    fn dense_reads_everything_oldest_first() {
        assert_eq!(
            sources(&Links::Dense, Order::OldestFirst, 4),
            vec![0, 1, 2, 3]
        );
        assert_eq!(
            output_sources(&Links::Dense, Order::OldestFirst, OutputRule::NextLayer, 3),
            vec![0, 1, 2, 3]
        );
    }

    #[test]
    fn other_bases_and_explicit_offsets() {
        assert_eq!(
            sources(&Links::Sparse { base: 3 }, Order::NewestFirst, 10),
            vec![9, 7, 1]
        );
        assert_eq!(
            sources(&Links::Offsets(vec![1, 3]), Order::OldestFirst, 2),
            vec![1]
        );
        assert_eq!(
            sources(&Links::Offsets(vec![1, 3]), Order::OldestFirst, 5),
            vec![2, 4]
        );
    }
}

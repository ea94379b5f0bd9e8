//! The step descriptor table the CUDA kernels read: one record of `u64` words per step (shapes,
//! flags, float offsets of weights, bias, BN scale and shift, the output buffer's offset in
//! its own elements, then the piece table), built from the file's `abi` descriptors and buffers after `validate` has
//! checked them, and uploaded once per model. The generated kernels are shared by every step
//! with the same tile; everything that differs between steps comes from here, so a file's
//! offsets reach a kernel only through these checked records.
//!
//! The layout is mirrored by the word indices at the top of
//! `compiler/src/backend/cuda/prelude.cuh`: keep the two in step (the shim suite runs every
//! kernel through this table). Must not talk to a driver (`exec.rs` does) and must not parse
//! the file format (`format`).

use crate::abi;
use crate::format::{BufferSpec, Element, Step, StepDesc};

/// Word indices of a step record (`SPARSEC_*` in `prelude.cuh`).
pub const CIN: usize = 0;
pub const IH: usize = 1;
pub const IW: usize = 2;
pub const OC: usize = 3;
pub const OH: usize = 4;
pub const OW: usize = 5;
pub const KH: usize = 6;
pub const KW: usize = 7;
pub const SH: usize = 8;
pub const SW: usize = 9;
pub const PH: usize = 10;
pub const PW: usize = 11;
pub const FLAGS: usize = 12;
pub const NPIECES: usize = 13;
pub const WEIGHT: usize = 14;
pub const BIAS: usize = 15;
pub const SCALE: usize = 16;
pub const SHIFT: usize = 17;
pub const OUT: usize = 18;
pub const OUT_PER_IMAGE: usize = 19;
/// First piece; each piece is `(channel end, offset per image, elements per image)`, offsets
/// and sizes counted in the piece's own elements (floats, or BF16 halves); a BF16 piece has
/// [`PIECE_BF16`] set in its first word (the kernels read the channel end from the low 32
/// bits).
pub const PIECES: usize = 20;
/// Words per piece.
pub const PIECE_WORDS: usize = 3;
/// The bit of a piece's first word that marks a BF16 piece.
pub const PIECE_BF16: u64 = 1 << 32;

/// Flags of a record: the `abi` prologue, bias, ReLU and global bits, plus these.
pub const FLAG_MAX: u64 = 128;
pub const FLAG_SUM: u64 = 256;
/// The output buffer holds BF16 (`OUT` and `OUT_PER_IMAGE` count halves).
pub const FLAG_BF16_OUT: u64 = 512;
/// Some input piece holds BF16. A kernel instance built without BF16 support computes nothing
/// for a record with either BF16 flag (it would read halves as floats), so a file that pairs
/// one with such a kernel gets a wrong answer, never an access outside its buffers.
pub const FLAG_BF16_IN: u64 = 1024;
const ABI_FLAGS: u32 = abi::FLAG_PROLOGUE
    | abi::FLAG_PROLOGUE_RELU
    | abi::FLAG_BIAS
    | abi::FLAG_RELU
    | abi::FLAG_GLOBAL;

/// The most input channels the head kernel stages (`SPARSEC_LINEAR_MAX_IN`).
pub const LINEAR_MAX_IN: u32 = 12_288;

/// Every step's record, concatenated; `at[i]` is the first word of step `i`'s.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepTable {
    pub words: Vec<u64>,
    pub at: Vec<usize>,
}

/// Builds the table for `steps` (with their `descs`, in step order) over `buffers`, for
/// batches up to `max_batch`. Rechecks, with checked arithmetic, everything the kernels'
/// 32-bit index arithmetic relies on; the ranges themselves were checked by `validate` (and
/// are again here where cheap), so a file that passes cannot make a kernel read or write
/// outside its buffers and the weights section.
pub fn build(
    steps: &[Step],
    buffers: &[BufferSpec],
    descs: &[StepDesc],
    max_batch: u32,
) -> Result<StepTable, (usize, String)> {
    if steps.len() != descs.len() {
        return Err((
            steps.len().min(descs.len()),
            format!("{} steps, {} descriptors", steps.len(), descs.len()),
        ));
    }
    let mut table = StepTable::default();
    for (i, (step, desc)) in steps.iter().zip(descs).enumerate() {
        table.at.push(table.words.len());
        record(step, buffers, desc, max_batch, &mut table.words).map_err(|e| (i, e))?;
    }
    Ok(table)
}

fn buffer(buffers: &[BufferSpec], id: u32) -> Result<&BufferSpec, String> {
    buffers
        .get(id as usize)
        .ok_or_else(|| format!("buffer {id} out of range"))
}

/// Byte offset to float offset (a multiple of 4).
fn floats(bytes: u64, what: &str) -> Result<u64, String> {
    elements(bytes, Element::F32, what)
}

/// Byte offset or size to a count of `element`s (a multiple of its size).
fn elements(bytes: u64, element: Element, what: &str) -> Result<u64, String> {
    let size = element.bytes();
    if !bytes.is_multiple_of(size) {
        return Err(format!(
            "{what}: byte offset {bytes} is not a multiple of {size} ({element})"
        ));
    }
    Ok(bytes / size)
}

/// `a * b * ...` as u64, `None` on overflow.
fn product(v: &[u64]) -> Option<u64> {
    v.iter().try_fold(1u64, |a, &b| a.checked_mul(b))
}

fn record(
    step: &Step,
    buffers: &[BufferSpec],
    desc: &StepDesc,
    max_batch: u32,
    words: &mut Vec<u64>,
) -> Result<(), String> {
    let mut r = [0u64; PIECES];
    let (flags, combine, n_pieces) = match desc {
        StepDesc::Conv(d) => {
            r[CIN] = d.in_channels.into();
            r[IH] = d.in_h.into();
            r[IW] = d.in_w.into();
            r[OC] = d.out_channels.into();
            r[OH] = d.out_h.into();
            r[OW] = d.out_w.into();
            r[KH] = d.kernel_h.into();
            r[KW] = d.kernel_w.into();
            r[SH] = d.stride_h.into();
            r[SW] = d.stride_w.into();
            r[PH] = d.pad_h.into();
            r[PW] = d.pad_w.into();
            r[WEIGHT] = floats(d.weight_off, "weights")?;
            // Without a bias, BIAS points at the weights (checked non-empty; at least
            // out_channels floats): the kernels load w[BIAS + m] for every output channel m
            // and mask it to zero rather than branch on the flag.
            r[BIAS] = if d.flags & abi::FLAG_BIAS != 0 {
                floats(d.bias_off, "bias")?
            } else {
                r[WEIGHT]
            };
            if d.flags & (abi::FLAG_WINOGRAD | abi::FLAG_WINOGRAD4) != 0 {
                return Err("a Winograd convolution in a CUDA model".into());
            }
            (d.flags, d.combine, d.n_pieces)
        }
        StepDesc::Pool(d) => {
            r[CIN] = d.channels.into();
            r[IH] = d.in_h.into();
            r[IW] = d.in_w.into();
            r[OC] = d.channels.into();
            r[OH] = d.out_h.into();
            r[OW] = d.out_w.into();
            r[KH] = d.kernel_h.into();
            r[KW] = d.kernel_w.into();
            r[SH] = d.stride_h.into();
            r[SW] = d.stride_w.into();
            r[PH] = d.pad_h.into();
            r[PW] = d.pad_w.into();
            let kind = match d.kind {
                abi::POOL_AVG => 0,
                abi::POOL_MAX => FLAG_MAX,
                k => return Err(format!("pool kind {k}")),
            };
            r[FLAGS] = kind;
            (d.flags & !abi::FLAG_BIAS, d.combine, d.n_pieces)
        }
        StepDesc::Linear(d) => {
            if d.in_channels > LINEAR_MAX_IN {
                return Err(format!(
                    "the head stages {} input channels, at most {LINEAR_MAX_IN}",
                    d.in_channels
                ));
            }
            r[CIN] = d.in_channels.into();
            r[IH] = d.in_h.into();
            r[IW] = d.in_w.into();
            r[OC] = d.out_features.into();
            r[OH] = 1;
            r[OW] = 1;
            r[WEIGHT] = floats(d.weight_off, "weights")?;
            if d.flags & abi::FLAG_BIAS != 0 {
                r[BIAS] = floats(d.bias_off, "bias")?;
            }
            (d.flags, d.combine, d.n_pieces)
        }
    };
    let (scale_off, shift_off) = match desc {
        StepDesc::Conv(d) => (d.scale_off, d.shift_off),
        StepDesc::Pool(d) => (d.scale_off, d.shift_off),
        StepDesc::Linear(d) => (d.scale_off, d.shift_off),
    };
    if flags & abi::FLAG_PROLOGUE != 0 {
        r[SCALE] = floats(scale_off, "scale")?;
        r[SHIFT] = floats(shift_off, "shift")?;
    }
    r[FLAGS] |= u64::from(flags & ABI_FLAGS);
    match combine {
        abi::COMBINE_CONCAT => {}
        abi::COMBINE_SUM => r[FLAGS] |= FLAG_SUM,
        c => return Err(format!("combine rule {c}")),
    }
    if n_pieces as usize != step.pieces.len() || step.pieces.is_empty() {
        return Err(format!(
            "{n_pieces} pieces in the descriptor, {} in the step",
            step.pieces.len()
        ));
    }
    r[NPIECES] = n_pieces.into();
    let out = buffer(buffers, step.output)?;
    r[OUT] = elements(out.offset_per_image, out.element, "output")?;
    r[OUT_PER_IMAGE] = elements(out.bytes_per_image, out.element, "output")?;
    if out.element == Element::Bf16 {
        r[FLAGS] |= FLAG_BF16_OUT;
    }
    // The kernels index a batch's pixels, pooled values and input planes in 32 bits.
    let batch = u64::from(max_batch.max(1));
    let plane = product(&[r[IH], r[IW]]).ok_or("input plane overflows")?;
    let limits = [
        ("output values", product(&[batch, r[OC], r[OH], r[OW]])),
        ("input plane", Some(plane)),
        (
            "channel count",
            product(&[r[CIN], r[KH].max(1), r[KW].max(1)]),
        ),
    ];
    for (what, v) in limits {
        if v.is_none_or(|v| v > i32::MAX as u64) {
            return Err(format!(
                "{what} at batch {batch} pass the kernels' 32-bit indices"
            ));
        }
    }
    if plane == 0 {
        return Err("empty input plane".into());
    }
    if matches!(desc, StepDesc::Conv(_)) && product(&[r[CIN], r[OC], r[KH], r[KW]]) == Some(0) {
        return Err("a convolution without weights".into());
    }
    let at = words.len();
    words.extend_from_slice(&r);
    let mut end = 0u64;
    for &p in &step.pieces {
        let b = buffer(buffers, p)?;
        let per = elements(b.bytes_per_image, b.element, "piece")?;
        let channels = if combine == abi::COMBINE_SUM {
            r[CIN]
        } else {
            if !per.is_multiple_of(plane) {
                return Err(format!(
                    "a piece of {per} values is not whole {plane}-value planes"
                ));
            }
            per / plane
        };
        if channels.checked_mul(plane).is_none_or(|v| v > per) {
            return Err(format!(
                "a piece of {per} values holds fewer than {channels} channels"
            ));
        }
        end = if combine == abi::COMBINE_SUM {
            r[CIN]
        } else {
            end.checked_add(channels).ok_or("channel count overflows")?
        };
        let half = if b.element == Element::Bf16 {
            PIECE_BF16
        } else {
            0
        };
        words.extend_from_slice(&[
            end | half,
            elements(b.offset_per_image, b.element, "piece")?,
            per,
        ]);
        if half != 0 {
            words[at + FLAGS] |= FLAG_BF16_IN;
        }
    }
    if end != r[CIN] {
        return Err(format!(
            "the pieces hold {end} channels, the step reads {}",
            r[CIN]
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{ConvDesc, LinearDesc};
    use crate::format::StepKind;

    fn step(output: u32, pieces: Vec<u32>) -> Step {
        Step {
            kind: StepKind::Conv,
            label: "s".into(),
            desc_offset: 0,
            output,
            pieces,
            flops_per_image: 0,
        }
    }

    fn buffers() -> Vec<BufferSpec> {
        // Two 2-channel 4x4 pieces and a 3-channel 4x4 output.
        vec![
            BufferSpec {
                offset_per_image: 0,
                bytes_per_image: 2 * 16 * 4,
                element: Element::F32,
            },
            BufferSpec {
                offset_per_image: 128,
                bytes_per_image: 2 * 16 * 4,
                element: Element::F32,
            },
            BufferSpec {
                offset_per_image: 256,
                bytes_per_image: 3 * 16 * 4,
                element: Element::F32,
            },
        ]
    }

    fn conv() -> ConvDesc {
        ConvDesc {
            in_channels: 4,
            in_h: 4,
            in_w: 4,
            out_channels: 3,
            out_h: 4,
            out_w: 4,
            kernel_h: 3,
            kernel_w: 3,
            stride_h: 1,
            stride_w: 1,
            pad_h: 1,
            pad_w: 1,
            combine: abi::COMBINE_CONCAT,
            flags: abi::FLAG_PROLOGUE | abi::FLAG_RELU,
            n_pieces: 2,
            reserved: 0,
            weight_off: 64,
            bias_off: 0,
            scale_off: 128,
            shift_off: 192,
        }
    }

    #[test]
    fn a_concatenation_gets_its_piece_table() -> Result<(), String> {
        let t = build(
            &[step(2, vec![0, 1])],
            &buffers(),
            &[StepDesc::Conv(conv())],
            8,
        )
        .map_err(|e| e.1)?;
        assert_eq!(t.at, vec![0]);
        let w = &t.words;
        assert_eq!(w.len(), PIECES + 2 * PIECE_WORDS);
        assert_eq!((w[CIN], w[OC], w[KH], w[NPIECES]), (4, 3, 3, 2));
        assert_eq!(w[FLAGS], u64::from(abi::FLAG_PROLOGUE | abi::FLAG_RELU));
        // No bias: BIAS points at the weights, which the kernels read and discard.
        assert_eq!((w[WEIGHT], w[SCALE], w[SHIFT], w[BIAS]), (16, 32, 48, 16));
        assert_eq!((w[OUT], w[OUT_PER_IMAGE]), (64, 48));
        assert_eq!(&w[PIECES..], &[2, 0, 32, 4, 32, 32]);
        Ok(())
    }

    /// BF16 buffers: offsets and sizes count halves, the piece's first word carries the BF16
    /// bit above its channel end, and the record's flags say which side is BF16.
    #[test]
    fn bf16_buffers_count_halves_and_are_flagged() -> Result<(), String> {
        let mut b = buffers();
        b[1].element = Element::Bf16;
        b[1].bytes_per_image = 2 * 16 * 2;
        b[2].element = Element::Bf16;
        b[2].bytes_per_image = 3 * 16 * 2;
        let t = build(&[step(2, vec![0, 1])], &b, &[StepDesc::Conv(conv())], 8).map_err(|e| e.1)?;
        let w = &t.words;
        assert_eq!(
            w[FLAGS] & (FLAG_BF16_IN | FLAG_BF16_OUT),
            FLAG_BF16_IN | FLAG_BF16_OUT
        );
        // The output at byte 256 is half 128; 48 values per image.
        assert_eq!((w[OUT], w[OUT_PER_IMAGE]), (128, 48));
        assert_eq!(&w[PIECES..], &[2, 0, 32, 4 | PIECE_BF16, 64, 32]);
        // An all-f32 record has neither flag.
        let t = build(
            &[step(2, vec![0, 1])],
            &buffers(),
            &[StepDesc::Conv(conv())],
            8,
        )
        .map_err(|e| e.1)?;
        assert_eq!(t.words[FLAGS] & (FLAG_BF16_IN | FLAG_BF16_OUT), 0);
        // A BF16 piece of an odd byte size is refused.
        b[1].bytes_per_image = 2 * 16 * 2 + 1;
        assert!(build(&[step(2, vec![0, 1])], &b, &[StepDesc::Conv(conv())], 8).is_err());
        Ok(())
    }

    #[test]
    fn a_sum_reads_every_piece_whole() -> Result<(), String> {
        let d = ConvDesc {
            in_channels: 2,
            combine: abi::COMBINE_SUM,
            ..conv()
        };
        let t =
            build(&[step(2, vec![0, 1])], &buffers(), &[StepDesc::Conv(d)], 8).map_err(|e| e.1)?;
        assert_eq!(t.words[FLAGS] & FLAG_SUM, FLAG_SUM);
        assert_eq!(&t.words[PIECES..], &[2, 0, 32, 2, 32, 32]);
        Ok(())
    }

    #[test]
    fn inconsistent_records_are_rejected() {
        let cases: Vec<(&str, Vec<Step>, StepDesc)> = vec![
            (
                "too few channels",
                vec![step(2, vec![0])],
                StepDesc::Conv(ConvDesc {
                    n_pieces: 1,
                    ..conv()
                }),
            ),
            (
                "piece count",
                vec![step(2, vec![0, 1])],
                StepDesc::Conv(ConvDesc {
                    n_pieces: 3,
                    ..conv()
                }),
            ),
            (
                "misaligned weights",
                vec![step(2, vec![0, 1])],
                StepDesc::Conv(ConvDesc {
                    weight_off: 66,
                    ..conv()
                }),
            ),
            (
                "buffer out of range",
                vec![step(9, vec![0, 1])],
                StepDesc::Conv(conv()),
            ),
            (
                "winograd",
                vec![step(2, vec![0, 1])],
                StepDesc::Conv(ConvDesc {
                    flags: abi::FLAG_WINOGRAD,
                    ..conv()
                }),
            ),
            (
                "32-bit overflow",
                vec![step(2, vec![0, 1])],
                StepDesc::Conv(ConvDesc {
                    out_channels: u32::MAX,
                    ..conv()
                }),
            ),
            (
                "head too wide",
                vec![step(2, vec![0, 1])],
                StepDesc::Linear(LinearDesc {
                    in_channels: LINEAR_MAX_IN + 1,
                    n_pieces: 2,
                    ..LinearDesc::default()
                }),
            ),
        ];
        for (what, steps, desc) in cases {
            assert!(
                build(&steps, &buffers(), &[desc], 8).is_err(),
                "{what} was accepted"
            );
        }
        assert!(build(&[], &buffers(), &[StepDesc::Conv(conv())], 8).is_err());
    }
}

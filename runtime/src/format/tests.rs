//! Tests of the model.bin layout, the writer and every validation failure of the reader,
//! including damaged files whose checksum was recomputed (property tests).

use super::*;
use proptest::prelude::*;
use std::sync::OnceLock;

fn conv() -> ConvDesc {
    ConvDesc {
        in_channels: 3,
        in_h: 8,
        in_w: 8,
        out_channels: 4,
        out_h: 8,
        out_w: 8,
        kernel_h: 3,
        kernel_w: 3,
        stride_h: 1,
        stride_w: 1,
        pad_h: 1,
        pad_w: 1,
        combine: crate::abi::COMBINE_CONCAT,
        flags: crate::abi::FLAG_BIAS | crate::abi::FLAG_RELU,
        n_pieces: 1,
        reserved: 0,
        weight_off: 0,
        bias_off: 0x1_0000_0000 + 7,
        scale_off: u64::MAX,
        shift_off: 42,
    }
}

fn pool() -> PoolDesc {
    PoolDesc {
        channels: 4,
        in_h: 8,
        in_w: 8,
        out_h: 4,
        out_w: 4,
        kernel_h: 2,
        kernel_w: 2,
        stride_h: 2,
        stride_w: 2,
        kind: crate::abi::POOL_MAX,
        n_pieces: 1,
        scale_off: 9,
        shift_off: 10,
        ..PoolDesc::default()
    }
}

fn linear() -> LinearDesc {
    LinearDesc {
        in_channels: 4,
        in_h: 4,
        in_w: 4,
        out_features: 10,
        flags: crate::abi::FLAG_GLOBAL | crate::abi::FLAG_BIAS,
        n_pieces: 1,
        weight_off: 128,
        bias_off: 288,
        ..LinearDesc::default()
    }
}

/// A valid manifest with every kind of section, and its data area.
fn sample() -> (Manifest, Vec<u8>) {
    let mut w = Writer::new();
    let weights: Vec<u8> = (0..300u32).map(|i| (i * 7 % 251) as u8).collect();
    let weights = w.add_section(&weights);
    let mut consts = Vec::new();
    conv().encode(&mut consts);
    pool().encode(&mut consts);
    linear().encode(&mut consts);
    assert_eq!(consts.len(), 96 + 80 + 64);
    let consts = w.add_section(&consts);
    let code: Vec<u8> = (0..100u8).map(|i| i ^ 0x5a).collect();
    let code = w.add_section(&code);
    let ptx = w.add_section(b"// ptx for the sample model, not real code\n");
    let buffer = |offset_per_image, bytes_per_image| BufferSpec {
        offset_per_image,
        bytes_per_image,
        element: Element::F32,
    };
    let step = |kind, label: &str, desc_offset, output, piece| Step {
        kind,
        label: label.into(),
        desc_offset,
        output,
        pieces: vec![piece],
        flops_per_image: 1234,
    };
    let manifest = Manifest {
        compiler_version: "sparsec 0.1.0".into(),
        model_name: "sample".into(),
        target: Target {
            backend: Backend::Cpu,
            arch: "x86_64".into(),
            features: vec!["sse4.1".into(), "fma".into()],
        },
        inputs: vec![TensorSpec {
            name: "image".into(),
            shape: [3, 8, 8],
            buffer: 0,
        }],
        outputs: vec![TensorSpec {
            name: "logits".into(),
            shape: [10, 1, 1],
            buffer: 3,
        }],
        max_batch: 64,
        arena_bytes_per_image: 2112,
        scratch_bytes: 4096,
        buffers: vec![
            buffer(0, 768),
            buffer(768, 1024),
            buffer(1792, 256),
            buffer(2048, 40),
        ],
        steps: vec![
            step(StepKind::Conv, "conv1", 0, 1, 0),
            step(StepKind::Pool, "pool1", 96, 2, 1),
            step(StepKind::Linear, "fc", 176, 3, 2),
        ],
        weights,
        consts,
        cpu_code: Some(CpuCode {
            code,
            entry_offset: 32,
        }),
        cuda: Some(CudaCode {
            nvrtc_version: "12.4".into(),
            blobs: vec![("ptx".into(), ptx)],
            launches: (0..3)
                .map(|i| {
                    vec![CudaLaunch {
                        kernel: format!("s{i:03}"),
                        up_to_batch: u32::MAX,
                        x_per_image: 1024,
                        x_per_block: 256,
                        grid_y: 1,
                        block: 256,
                        shared_bytes: 0,
                    }]
                })
                .collect(),
        }),
    };
    (manifest, w.data)
}

/// Assembles without validation (to build invalid files).
fn build(m: &Manifest, data: &[u8]) -> Vec<u8> {
    assemble(
        &postcard::to_allocvec(m).expect("serialising a manifest cannot fail"),
        data,
    )
}

/// The sample file (valid), built once.
pub(crate) fn sample_file() -> &'static (Vec<u8>, usize, usize) {
    static FILE: OnceLock<(Vec<u8>, usize, usize)> = OnceLock::new();
    FILE.get_or_init(|| {
        let (m, data) = sample();
        let bytes = build(&m, &data);
        let manifest_end = HEADER_BYTES + postcard::to_allocvec(&m).expect("ok").len();
        let data_base = bytes.len() - data.len();
        (bytes, manifest_end, data_base)
    })
}

/// Every structural invariant of a parsed file, checked independently of `validate` (u128
/// arithmetic, no shared code).
fn assert_invariants(f: &ModelFile<'_>) {
    let m = &f.manifest;
    let base = f.data_base();
    assert_eq!(base % 64, 0);
    assert!(base >= HEADER_BYTES && base <= f.bytes.len());
    let mut sections = vec![m.weights, m.consts];
    sections.extend(m.cpu_code.iter().map(|c| c.code));
    sections.extend(m.cuda.iter().flat_map(|c| c.blobs.iter().map(|b| b.1)));
    for s in &sections {
        assert!(u128::from(s.offset) + u128::from(s.len) <= (f.bytes.len() - base) as u128);
        assert_eq!((base as u128 + u128::from(s.offset)) % 64, 0);
        let bytes = f.try_section(s).expect("section in bounds");
        assert_eq!(bytes.len() as u128, u128::from(s.len));
        assert_eq!(f.section(s).len(), bytes.len());
    }
    if let Some(c) = &m.cpu_code {
        assert!(c.entry_offset < c.code.len);
        let (code, entry) = f.cpu_code().expect("cpu code");
        assert!((entry as u128) < code.len() as u128);
    }
    let arena = u128::from(m.arena_bytes_per_image);
    for b in &m.buffers {
        assert!(u128::from(b.offset_per_image) + u128::from(b.bytes_per_image) <= arena);
        assert_eq!(b.offset_per_image % 64, 0);
        assert_eq!(b.bytes_per_image % b.element.bytes(), 0);
        assert!(b.element == Element::F32 || m.target.backend == Backend::Cuda);
    }
    for t in m.inputs.iter().chain(&m.outputs) {
        let b = m.buffers[t.buffer as usize];
        let n: u128 = t.shape.iter().map(|&d| u128::from(d)).product();
        assert_eq!(b.element, Element::F32);
        assert_eq!(n * 4, u128::from(b.bytes_per_image));
    }
    for (i, s) in m.steps.iter().enumerate() {
        let out = m.buffers[s.output as usize];
        assert!(!s.pieces.is_empty());
        for &p in &s.pieces {
            let inp = m.buffers[p as usize];
            let disjoint = inp.offset_per_image + inp.bytes_per_image <= out.offset_per_image
                || out.offset_per_image + out.bytes_per_image <= inp.offset_per_image;
            assert!(disjoint);
        }
        assert_eq!(s.desc_offset % 8, 0);
        let end = u128::from(s.desc_offset) + u128::from(s.kind.descriptor_bytes());
        assert!(end <= u128::from(m.consts.len));
        let d = f.step_descriptor(i).expect("descriptor in bounds");
        let kind = match d {
            StepDesc::Conv(_) => StepKind::Conv,
            StepDesc::Pool(_) => StepKind::Pool,
            StepDesc::Linear(_) => StepKind::Linear,
        };
        assert_eq!(kind, s.kind);
    }
    assert!(m.max_batch >= 1);
    assert!(arena * u128::from(m.max_batch) <= usize::MAX as u128);
}

#[test]
fn round_trip() {
    let (m, _) = sample();
    let (mut w, m2) = (Writer::new(), m.clone());
    // Rebuild through the public writer, section by section, in the same order.
    let (orig, _, _) = sample_file();
    let orig = ModelFile::parse(orig).expect("sample is valid");
    let weights = w.add_section(orig.weights());
    let consts = w.add_section(orig.consts());
    let code = w.add_section(orig.cpu_code().expect("code").0);
    let ptx = w.add_section(orig.section(&m.cuda.as_ref().expect("cuda").blobs[0].1));
    assert_eq!((weights, consts), (m.weights, m.consts));
    assert_eq!(code, m.cpu_code.as_ref().expect("code").code);
    assert_eq!(ptx, m.cuda.as_ref().expect("cuda").blobs[0].1);
    let bytes = w.finish(&m2).expect("valid");
    assert_eq!(&bytes, &sample_file().0);

    let f = ModelFile::parse(&bytes).expect("valid");
    assert_eq!(f.manifest, m);
    assert_invariants(&f);
    assert_eq!(f.data_base() % 64, 0);
    assert_eq!(f.weights().len(), 300);
    assert!(
        f.weights()
            .iter()
            .enumerate()
            .all(|(i, &b)| b == (i * 7 % 251) as u8)
    );
    assert_eq!(
        f.cpu_code().expect("code").0,
        &(0..100u8).map(|i| i ^ 0x5a).collect::<Vec<_>>()
    );
    assert_eq!(f.cpu_code().expect("code").1, 32);
    assert!(
        f.section(&f.manifest.cuda.as_ref().expect("cuda").blobs[0].1)
            .starts_with(b"// ptx")
    );
    assert_eq!(f.step_descriptor(0), Some(StepDesc::Conv(conv())));
    assert_eq!(f.step_descriptor(1), Some(StepDesc::Pool(pool())));
    assert_eq!(f.step_descriptor(2), Some(StepDesc::Linear(linear())));
    assert_eq!(f.step_descriptor(3), None);
    assert_eq!(f.descriptor::<LinearDesc>(176), Some(linear()));
    assert_eq!(f.descriptor::<ConvDesc>(176), None, "runs past the consts");
    assert_eq!(f.descriptor::<ConvDesc>(u64::MAX), None);
    for s in [f.manifest.weights, f.manifest.consts] {
        assert_eq!((f.data_base() as u64 + s.offset) % SECTION_ALIGN, 0);
    }
    assert_eq!(f.manifest.arena_bytes(64), Some(2112 * 64));
    assert_eq!(f.manifest.buffers[3].offset(2), Some(4096));
    assert_eq!(f.manifest.buffers[3].bytes(2), Some(80));
}

#[test]
fn header_layout_and_checksum() {
    let (bytes, _, _) = sample_file();
    assert_eq!(&bytes[..8], b"SPARSEC\0");
    assert_eq!(bytes[8..12], FORMAT_VERSION.to_le_bytes());
    assert_eq!(bytes[12..16], 64u32.to_le_bytes());
    assert_eq!(bytes[24..32], (bytes.len() as u64).to_le_bytes());
    assert!(bytes[40..64].iter().all(|&b| b == 0));
    let mut zeroed = bytes.clone();
    zeroed[32..40].fill(0);
    let one_shot = xxhash_rust::xxh3::xxh3_64(&zeroed);
    assert_eq!(bytes[32..40], one_shot.to_le_bytes());
}

#[test]
fn descriptor_encoding_is_the_repr_c_layout() {
    let mut b = Vec::new();
    conv().encode(&mut b);
    assert_eq!(b.len(), size_of::<ConvDesc>());
    assert_eq!(b[0..4], 3u32.to_le_bytes());
    assert_eq!(
        b[offset_of!(ConvDesc, bias_off)..][..8],
        (0x1_0000_0007u64).to_le_bytes()
    );
    assert_eq!(ConvDesc::decode(&b), Some(conv()));
    assert_eq!(ConvDesc::decode(&b[..95]), None);
    assert_eq!(StepKind::Conv.descriptor_bytes(), 96);
    assert_eq!(StepKind::Pool.descriptor_bytes(), 80);
    assert_eq!(StepKind::Linear.descriptor_bytes(), 64);
    assert_eq!(ConvDesc::KIND, StepKind::Conv);
    assert_eq!(PoolDesc::KIND, StepKind::Pool);
    assert_eq!(LinearDesc::KIND, StepKind::Linear);
}

fn parse_err(bytes: &[u8]) -> LoadError {
    match ModelFile::parse(bytes) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

/// Builds the sample with `edit` applied to its manifest (checksum correct) and parses it.
fn with_manifest(edit: impl FnOnce(&mut Manifest)) -> LoadError {
    let (mut m, data) = sample();
    edit(&mut m);
    parse_err(&build(&m, &data))
}

/// The sample file with `edit` applied to its bytes, then the checksum recomputed.
fn with_bytes(edit: impl FnOnce(&mut Vec<u8>)) -> LoadError {
    let mut b = sample_file().0.clone();
    edit(&mut b);
    seal(&mut b);
    parse_err(&b)
}

#[test]
fn trailer_failures() {
    // A trailer length other than 0 or 128.
    let e = with_bytes(|b| {
        b[AT_TRAILER_LEN..AT_TRAILER_LEN + 4].copy_from_slice(&100u32.to_le_bytes())
    });
    assert!(
        matches!(e, LoadError::Trailer(ref r) if r.contains("100 bytes")),
        "{e}"
    );
    // A declared trailer that is not one: the last 128 bytes of an unsigned file.
    let e = with_bytes(|b| {
        let t = (SIGNATURE_TRAILER_BYTES as u32).to_le_bytes();
        b[AT_TRAILER_LEN..AT_TRAILER_LEN + 4].copy_from_slice(&t);
    });
    assert!(
        matches!(e, LoadError::Trailer(ref r) if r.contains("magic")),
        "{e}"
    );
    // A trailer longer than the file.
    let e = with_bytes(|b| {
        let t = (SIGNATURE_TRAILER_BYTES as u32).to_le_bytes();
        b[AT_TRAILER_LEN..AT_TRAILER_LEN + 4].copy_from_slice(&t);
        b.truncate(HEADER_BYTES + 8);
        let n = b.len() as u64;
        b[AT_FILE_LEN..AT_FILE_LEN + 8].copy_from_slice(&n.to_le_bytes());
    });
    assert!(
        matches!(e, LoadError::Trailer(ref r) if r.contains("does not fit")),
        "{e}"
    );
    // A valid trailer with a reserved byte set.
    let mut signed = sample_file().0.clone();
    prepare_signed(&mut signed);
    append_trailer(&mut signed, &[1; PUBLIC_KEY_BYTES], &[2; SIGNATURE_BYTES]);
    let parsed = ModelFile::parse(&signed).expect("structurally valid");
    assert_eq!(
        parsed.signature,
        Some(SignatureTrailer {
            key: [1; PUBLIC_KEY_BYTES],
            signature: [2; SIGNATURE_BYTES]
        })
    );
    assert_eq!(
        parsed.sealed().len(),
        signed.len() - SIGNATURE_TRAILER_BYTES
    );
    let last = signed.len() - 1;
    signed[last] = 1;
    let e = parse_err(&signed);
    assert!(
        matches!(e, LoadError::Trailer(ref r) if r.contains("reserved")),
        "{e}"
    );
}

#[test]
fn header_failures() {
    let (file, _, _) = sample_file();
    assert!(matches!(parse_err(&[]), LoadError::TooShort { len: 0 }));
    assert!(matches!(
        parse_err(&file[..63]),
        LoadError::TooShort { len: 63 }
    ));
    let e = with_bytes(|b| b[..8].copy_from_slice(b"\x7fELF\x02\x01\x01\0"));
    assert!(matches!(e, LoadError::BadMagic { found } if &found[1..4] == b"ELF"));
    assert!(e.to_string().contains("not a sparsec model.bin"));
    let e = with_bytes(|b| b[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes()));
    assert!(matches!(
        e,
        LoadError::Version {
            found,
            supported: FORMAT_VERSION
        } if found == FORMAT_VERSION + 1
    ));
    let e = with_bytes(|b| b[12..16].copy_from_slice(&128u32.to_le_bytes()));
    assert!(matches!(
        e,
        LoadError::HeaderLength {
            found: 128,
            expected: 64
        }
    ));
    let e = with_bytes(|b| b[63] = 1);
    assert!(matches!(
        e,
        LoadError::Reserved {
            offset: 63,
            value: 1
        }
    ));
    let n = file.len() as u64;
    let e = parse_err(&file[..file.len() - 1]);
    assert!(
        matches!(e, LoadError::Length { declared, actual } if declared == n && actual == n - 1)
    );
    assert!(e.to_string().contains("truncated"));
    let mut longer = file.clone();
    longer.push(0);
    assert!(matches!(parse_err(&longer), LoadError::Length { .. }));
    let mut flipped = file.clone();
    *flipped.last_mut().expect("non-empty") ^= 1;
    assert!(matches!(parse_err(&flipped), LoadError::Checksum { .. }));
    let mut bad_sum = file.clone();
    bad_sum[32] ^= 0x80;
    assert!(matches!(parse_err(&bad_sum), LoadError::Checksum { .. }));
}

#[test]
fn manifest_failures() {
    let (_, manifest_end, data_base) = *sample_file();
    let set_len = |b: &mut Vec<u8>, n: u64| b[16..24].copy_from_slice(&n.to_le_bytes());
    let e = with_bytes(|b| set_len(b, 1 << 40));
    assert!(matches!(e, LoadError::ManifestLength { manifest_len, .. } if manifest_len == 1 << 40));
    let e = with_bytes(|b| set_len(b, u64::MAX));
    assert!(matches!(
        e,
        LoadError::ManifestLength {
            data_base: u64::MAX,
            ..
        }
    ));
    // Claims one byte more than the manifest: a padding byte is left over.
    let e = with_bytes(|b| set_len(b, (manifest_end - HEADER_BYTES + 1) as u64));
    assert!(
        matches!(&e, LoadError::Manifest(msg) if msg.contains("1 bytes before")),
        "{e}"
    );
    // One byte less: postcard runs out.
    let e = with_bytes(|b| set_len(b, (manifest_end - HEADER_BYTES - 1) as u64));
    assert!(matches!(e, LoadError::Manifest(_)), "{e}");
    // Garbage manifest.
    let e = with_bytes(|b| b[HEADER_BYTES..manifest_end].fill(0xff));
    assert!(matches!(e, LoadError::Manifest(_)), "{e}");
    assert!(data_base > manifest_end);
}

#[test]
fn section_failures() {
    let e = with_manifest(|m| m.weights.offset += 1);
    assert!(
        matches!(&e, LoadError::Section { name, reason, .. }
        if name == "weights" && reason.contains("aligned")),
        "{e}"
    );
    let e = with_manifest(|m| m.consts.len = 1 << 20);
    assert!(
        matches!(&e, LoadError::Section { name, .. } if name == "consts"),
        "{e}"
    );
    let e = with_manifest(|m| {
        m.cpu_code.as_mut().expect("code").code.offset = u64::MAX - 63;
    });
    assert!(
        matches!(&e, LoadError::Section { name, .. } if name == "cpu_code"),
        "{e}"
    );
    let e = with_manifest(|m| m.cuda.as_mut().expect("cuda").blobs[0].1.offset += 1 << 12);
    assert!(
        matches!(&e, LoadError::Section { name, .. } if name.contains("ptx")),
        "{e}"
    );
    let e = with_manifest(|m| {
        let c = m.cpu_code.as_mut().expect("code");
        c.entry_offset = c.code.len;
    });
    assert!(
        matches!(
            e,
            LoadError::Entry {
                offset: 100,
                code_len: 100
            }
        ),
        "{e}"
    );
}

#[test]
fn cuda_code_failures() {
    let code_err = |edit: fn(&mut Manifest), words: &str| {
        let e = with_manifest(edit);
        assert!(
            matches!(&e, LoadError::Code { reason } if reason.contains(words)),
            "{words}: {e}"
        );
    };
    code_err(
        |m| m.cuda.as_mut().expect("cuda").blobs.clear(),
        "without any",
    );
    code_err(
        |m| m.cuda.as_mut().expect("cuda").blobs[0].0 = "sm_x".into(),
        "unknown architecture",
    );
    code_err(
        |m| {
            let c = m.cuda.as_mut().expect("cuda");
            let again = c.blobs[0].clone();
            c.blobs.push(again);
        },
        "a second blob",
    );
    code_err(
        |m| {
            m.cuda.as_mut().expect("cuda").launches.pop();
        },
        "2 CUDA launches for 3 steps",
    );
    code_err(
        |m| m.cuda.as_mut().expect("cuda").launches[1][0].kernel = "1x; evil".into(),
        "not a C identifier",
    );
    code_err(
        |m| m.cuda.as_mut().expect("cuda").launches[1][0].block = 2048,
        "threads",
    );
    code_err(
        |m| m.cuda.as_mut().expect("cuda").launches[2][0].grid_y = 0,
        "grid y",
    );
    code_err(
        |m| m.cuda.as_mut().expect("cuda").launches[2][0].shared_bytes = 1 << 20,
        "shared memory",
    );
    code_err(
        |m| {
            m.target.backend = Backend::Cuda;
            m.cuda = None;
        },
        "without CUDA code",
    );
    code_err(
        |m| {
            m.target.backend = Backend::Cuda;
            m.max_batch = 70_000;
        },
        "batch limit",
    );
}

#[test]
fn buffer_failures() {
    let buffer_err = |edit: fn(&mut BufferSpec)| with_manifest(|m| edit(&mut m.buffers[2]));
    for (edit, words) in [
        (
            (|b| b.offset_per_image += 4) as fn(&mut BufferSpec),
            "multiple of 64",
        ),
        (|b| b.bytes_per_image += 2, "whole number of f32"),
        (|b| b.bytes_per_image = 1024, "past arena_bytes_per_image"),
        (|b| b.offset_per_image = u64::MAX - 63, "overflows"),
        // A CPU model's kernels read f32 only.
        (|b| b.element = Element::Bf16, "bf16 buffer in a CPU model"),
    ] {
        let e = buffer_err(edit);
        assert!(
            matches!(&e, LoadError::Buffer { index: 2, reason } if reason.contains(words)),
            "{e}"
        );
    }
}

#[test]
fn tensor_failures() {
    let e = with_manifest(|m| m.inputs[0].buffer = 99);
    assert!(
        matches!(&e, LoadError::Tensor { role: "input", index: 0, reason, .. }
        if reason.contains("does not exist")),
        "{e}"
    );
    let e = with_manifest(|m| m.outputs[0].shape = [11, 1, 1]);
    assert!(
        matches!(&e, LoadError::Tensor { role: "output", reason, .. }
        if reason.contains("44 bytes")),
        "{e}"
    );
    let e = with_manifest(|m| m.outputs[0].shape = [u32::MAX; 3]);
    assert!(
        matches!(&e, LoadError::Tensor { reason, .. } if reason.contains("overflowing")),
        "{e}"
    );
}

/// BF16 buffers (CUDA models only): sizes count 2-byte elements, a step's pieces and output
/// are checked in elements, and a model's input and output stay f32.
#[test]
fn bf16_buffer_checks() {
    let cuda = |m: &mut Manifest| {
        m.target.backend = Backend::Cuda;
        m.cpu_code = None;
    };
    // The conv's output (buffer 1, 1024 bytes of f32) as BF16 holds twice the values the
    // descriptor writes: refused when the step is checked, by whichever executor runs it.
    let (mut m, data) = sample();
    cuda(&mut m);
    m.buffers[1].element = Element::Bf16;
    let bytes = build(&m, &data);
    let file = ModelFile::parse(&bytes).expect("structurally valid");
    let desc = file.step_descriptor(0).expect("descriptor");
    let e = check_step_buffers(&file.manifest, 0, &desc).expect_err("size mismatch accepted");
    assert!(e.contains("holds 512 values per image"), "{e}");
    // Halved, it holds exactly them.
    m.buffers[1].bytes_per_image = 512;
    let bytes = build(&m, &data);
    let file = ModelFile::parse(&bytes).expect("valid");
    assert_eq!(file.manifest.buffers[1].elements_per_image(), 256);
    check_step_buffers(&file.manifest, 0, &desc).expect("a BF16 output of the right size");
    // An odd byte count is no whole number of BF16 values.
    let e = with_manifest(|m| {
        cuda(m);
        m.buffers[1].element = Element::Bf16;
        m.buffers[1].bytes_per_image = 511;
    });
    assert!(
        matches!(&e, LoadError::Buffer { index: 1, reason } if reason.contains("whole number of bf16")),
        "{e}"
    );
    // The input's and the output's buffers are the caller's f32 tensors.
    for (role, buffer) in [("input", 0), ("output", 3)] {
        let e = with_manifest(|m| {
            cuda(m);
            m.buffers[buffer].element = Element::Bf16;
            m.buffers[buffer].bytes_per_image /= 2;
        });
        assert!(
            matches!(&e, LoadError::Tensor { role: r, reason, .. }
                if *r == role && reason.contains("inputs and outputs are f32")),
            "{role}: {e}"
        );
    }
}

#[test]
fn step_failures() {
    let e = with_manifest(|m| m.steps[1].output = 4);
    assert!(
        matches!(&e, LoadError::Step { index: 1, reason } if reason.contains("output buffer 4")),
        "{e}"
    );
    let e = with_manifest(|m| m.steps[2].pieces.push(7));
    assert!(
        matches!(&e, LoadError::Step { index: 2, reason } if reason.contains("input buffer 7")),
        "{e}"
    );
    let e = with_manifest(|m| m.steps[0].pieces.clear());
    assert!(
        matches!(&e, LoadError::Step { index: 0, reason } if reason.contains("no input")),
        "{e}"
    );
    let e = with_manifest(|m| m.steps[0].output = 0);
    assert!(
        matches!(&e, LoadError::Step { index: 0, reason } if reason.contains("overlaps")),
        "{e}"
    );
    // Distinct buffers that share bytes overlap too.
    let e = with_manifest(|m| m.buffers[2].offset_per_image = 1728);
    assert!(matches!(&e, LoadError::Step { index: 1, .. }), "{e}");

    let e = with_manifest(|m| m.steps[1].desc_offset = 100);
    assert!(
        matches!(&e, LoadError::Descriptor { step: 1, reason } if reason.contains("aligned")),
        "{e}"
    );
    let e = with_manifest(|m| m.steps[2].kind = StepKind::Conv);
    assert!(
        matches!(&e, LoadError::Descriptor { step: 2, reason } if reason.contains("ends past")),
        "{e}"
    );
    let e = with_manifest(|m| m.steps[0].desc_offset = u64::MAX - 7);
    assert!(matches!(e, LoadError::Descriptor { step: 0, .. }), "{e}");
}

#[test]
fn batch_failures() {
    assert!(matches!(
        with_manifest(|m| m.max_batch = 0),
        LoadError::MaxBatch
    ));
    let e = with_manifest(|m| m.arena_bytes_per_image = u64::MAX / 2);
    assert!(matches!(e, LoadError::Arena { max_batch: 64, .. }), "{e}");
}

#[test]
fn writer_refuses_invalid_manifests() {
    let (mut m, _) = sample();
    m.max_batch = 0;
    let mut w = Writer::new();
    let s = w.add_section(&[0; 1000]);
    m.weights = s;
    m.consts = s;
    m.cpu_code = None;
    m.cuda = None;
    assert!(matches!(w.finish(&m), Err(LoadError::MaxBatch)));
}

#[test]
fn target_checks() {
    let cuda = Target {
        backend: Backend::Cuda,
        arch: "anything".into(),
        features: vec!["x".into()],
    };
    assert!(check_target(&cuda).is_ok());
    let other = Target {
        backend: Backend::Cpu,
        arch: "mips-of-the-future".into(),
        features: vec![],
    };
    assert!(matches!(
        check_target(&other),
        Err(LoadError::Architecture { file, machine })
            if file == "mips-of-the-future" && machine == std::env::consts::ARCH
    ));
    let here = |features: &[&str]| Target {
        backend: Backend::Cpu,
        arch: std::env::consts::ARCH.into(),
        features: features.iter().map(|f| f.to_string()).collect(),
    };
    assert!(check_target(&here(&[])).is_ok());
    let e = check_target(&here(&["avx9000"]));
    assert!(
        matches!(&e, Err(LoadError::Target { reason }) if reason.contains("avx9000")),
        "{e:?}"
    );
    #[cfg(target_arch = "x86_64")]
    {
        assert!(check_target(&here(&["sse2"])).is_ok());
        for f in KNOWN_X86_FEATURES {
            assert!(cpu_has(f).is_some(), "{f}");
            match check_target(&here(&[f])) {
                Ok(()) | Err(LoadError::UnsupportedCpu { .. }) => {}
                Err(e) => panic!("{f}: {e}"),
            }
        }
    }
}

/// The architecture this runtime is not built for, among the two sparsec compiles for.
fn foreign_arch() -> &'static str {
    if std::env::consts::ARCH == "aarch64" {
        "x86_64"
    } else {
        "aarch64"
    }
}

/// A CPU model.bin compiled for the other architecture (x86-64 on aarch64 and the reverse) is
/// refused by the loader, data-only or native, with an error naming both architectures and
/// the target to recompile for.
#[test]
fn a_model_for_the_other_architecture_is_refused() {
    let (mut m, data) = sample();
    m.cuda = None;
    m.target.arch = foreign_arch().into();
    m.target.features = vec![];
    let bytes = build(&m, &data);
    assert!(ModelFile::parse(&bytes).is_ok(), "the file itself is valid");
    for allow_unsigned_code in [false, true] {
        let options = crate::LoadOptions {
            allow_unsigned_code,
            ..crate::LoadOptions::default()
        };
        let e = crate::Model::from_bytes_with(&bytes, &options).map(|_| ());
        let Err(e @ LoadError::Architecture { .. }) = e else {
            panic!("native {allow_unsigned_code}: {e:?}");
        };
        let text = e.to_string();
        assert!(text.contains(foreign_arch()), "{text}");
        assert!(text.contains(std::env::consts::ARCH), "{text}");
        assert!(text.contains("--target cpu"), "{text}");
    }
    // The same file for this machine's architecture passes the target check.
    m.target.arch = std::env::consts::ARCH.into();
    assert!(check_target(&m.target).is_ok());
}

#[test]
fn read_reports_the_path() {
    let e = read(Path::new("/nonexistent/model.bin"));
    assert!(matches!(&e, Err(LoadError::Io { path, .. }) if path.ends_with("model.bin")));
}

// -----------------------------------------------------------------------------------------
// Hostile bytes

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(usize),
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Splice(usize, usize, Vec<u8>),
}

fn apply(bytes: &[u8], m: &Mutation) -> Vec<u8> {
    let mut b = bytes.to_vec();
    match m {
        Mutation::Truncate(n) => b.truncate(*n),
        Mutation::Flip(at, x) => b[*at % bytes.len()] ^= x,
        Mutation::Insert(at, ins) => {
            let at = *at % (b.len() + 1);
            b.splice(at..at, ins.iter().copied());
        }
        Mutation::Splice(at, n, ins) => {
            let at = *at % b.len();
            let end = (at + n).min(b.len());
            b.splice(at..end, ins.iter().copied());
        }
    }
    b
}

/// Mutations of a region `[lo, hi)` of a buffer (positions are taken modulo its length by
/// `apply` where the region is the whole buffer).
fn mutation(lo: usize, hi: usize, len: usize) -> impl Strategy<Value = Mutation> {
    let bytes = proptest::collection::vec(any::<u8>(), 0..48);
    prop_oneof![
        (0..len).prop_map(Mutation::Truncate),
        (lo..hi, 1..=255u8).prop_map(|(at, x)| Mutation::Flip(at, x)),
        (lo..=hi, bytes.clone()).prop_map(|(at, v)| Mutation::Insert(at, v)),
        (lo..hi, 1..64usize, bytes).prop_map(|(at, n, v)| Mutation::Splice(at, n, v)),
    ]
}

fn whole_file_mutation() -> impl Strategy<Value = Mutation> {
    let (file, manifest_end, data_base) = sample_file();
    let len = file.len();
    prop_oneof![
        mutation(0, HEADER_BYTES, len),
        mutation(HEADER_BYTES, *manifest_end, len),
        mutation(*manifest_end, *data_base, len),
        mutation(*data_base, len, len),
    ]
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 300,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// Any change to a valid file is caught (by the length, the checksum or an earlier
    /// header check), and none panics.
    #[test]
    fn hostile_bytes_are_rejected(mutation in whole_file_mutation()) {
        let file = &sample_file().0;
        let bad = apply(file, &mutation);
        prop_assume!(&bad != file);
        prop_assert!(ModelFile::parse(&bad).is_err());
    }

    /// Hostile manifest bytes behind a correct checksum: postcard and the structural checks
    /// must reject them or accept a file that satisfies every invariant.
    #[test]
    fn hostile_manifests_are_rejected_or_sound(
        mutations in proptest::collection::vec(mutation(0, 1 << 16, 1 << 16), 1..4)
    ) {
        let (m, data) = sample();
        let mut manifest = postcard::to_allocvec(&m).expect("serialisable");
        for mutation in &mutations {
            if manifest.is_empty() {
                break;
            }
            manifest = apply(&manifest, mutation);
        }
        let file = assemble(&manifest, &data);
        if let Ok(f) = ModelFile::parse(&file) {
            assert_invariants(&f);
        }
    }

    /// Hostile numbers in a well-formed manifest.
    #[test]
    fn hostile_fields_are_rejected_or_sound(
        edits in proptest::collection::vec((0..21u8, 0..8usize, interesting_u64()), 1..5)
    ) {
        let (mut m, data) = sample();
        for (field, i, v) in edits {
            edit_field(&mut m, field, i, v);
        }
        if let Ok(f) = ModelFile::parse(&build(&m, &data)) {
            assert_invariants(&f);
        }
    }
}

fn interesting_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        0..300u64,
        (0..40u64).prop_map(|k| k * 64),
        (0..8u64).prop_map(|k| u64::MAX - k * 8),
        Just(u64::from(u32::MAX)),
        Just(1u64 << 32),
        Just(u64::MAX / 2),
        any::<u64>(),
    ]
}

fn edit_field(m: &mut Manifest, field: u8, i: usize, v: u64) {
    let nb = m.buffers.len();
    let ns = m.steps.len();
    let small = v as u32;
    match field {
        0 => m.weights.offset = v,
        1 => m.weights.len = v,
        2 => m.consts.offset = v,
        3 => m.consts.len = v,
        4 => {
            if let Some(c) = &mut m.cpu_code {
                c.code.len = v;
            }
        }
        5 => {
            if let Some(c) = &mut m.cpu_code {
                c.entry_offset = v;
            }
        }
        // (Field 16 may have removed every buffer.)
        6 => {
            if let Some(b) = m.buffers.get_mut(i % nb.max(1)) {
                b.offset_per_image = v;
            }
        }
        7 => {
            if let Some(b) = m.buffers.get_mut(i % nb.max(1)) {
                b.bytes_per_image = v;
            }
        }
        8 => m.arena_bytes_per_image = v,
        9 => m.max_batch = small,
        10 => m.inputs[0].buffer = small % 8,
        11 => m.outputs[0].shape[i % 3] = small,
        12 => m.steps[i % ns].output = small % 8,
        13 => m.steps[i % ns].pieces.push(small % 8),
        14 => m.steps[i % ns].desc_offset = v,
        15 => {
            m.steps[i % ns].kind =
                [StepKind::Conv, StepKind::Pool, StepKind::Linear][(v % 3) as usize];
        }
        16 => m.buffers.truncate(i % (nb + 1)),
        19 => {
            if let Some(b) = m.buffers.get_mut(i % nb.max(1)) {
                b.element = if v.is_multiple_of(2) {
                    Element::F32
                } else {
                    Element::Bf16
                };
            }
        }
        17 => m.steps[i % ns].pieces.clear(),
        18 => {
            if let Some(c) = &mut m.cuda {
                c.blobs.push((
                    "sm_90".into(),
                    Section {
                        offset: v & !63,
                        len: v % 4096,
                    },
                ));
            }
        }
        _ => m.cpu_code = None,
    }
}

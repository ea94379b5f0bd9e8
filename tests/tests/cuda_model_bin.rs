//! CUDA model.bin files through the runtime's loader, without NVRTC and without a GPU: the
//! blobs are stand-ins (the NVRTC suite, `compiler/tests/nvrtc.rs`, makes real ones). A
//! well-formed file reaches the executor (a typed `BackendNotBuilt` when the runtime lacks
//! the `cuda` feature); a file whose blob, weights or launches are wrong is rejected before
//! anything runs, each with its own error.

use anyhow::Result;
use runtime::{LoadError, Model};
use sparsec::artifact;
use sparsec::backend::cuda::{self, CudaProgram, nvrtc::Compiled};
use sparsec::driver::{self, Optimized, WeightsSource};
use std::path::PathBuf;

fn program() -> Result<(Optimized, CudaProgram)> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/models/sparsenet-40-24.snet");
    let graph = driver::load(&path)?;
    let opt = driver::optimize(graph, &WeightsSource::Random(3), 1, false)?;
    let program = cuda::generate(&opt.graph, &opt.plan, true)?;
    Ok((opt, program))
}

fn fake_blobs() -> Compiled {
    Compiled {
        version: "12.9".into(),
        blobs: vec![
            ("sm_90".into(), b"\x7fELF stand-in cubin".to_vec()),
            ("ptx".into(), b"// stand-in PTX\n".to_vec()),
        ],
        cache_hits: 0,
    }
}

fn load(opt: &Optimized, program: &CudaProgram, compiled: &Compiled) -> Result<LoadError> {
    let bytes = artifact::write_cuda(&opt.graph, program, compiled, 64)?;
    // The checks below are about the file's structure: allow its (stand-in) native code, so
    // that the trust check (`LoadError::UnsignedCode`, tested below) does not answer first.
    let trusting = runtime::LoadOptions {
        allow_unsigned_code: true,
        ..Default::default()
    };
    match Model::from_bytes_with(&bytes, &trusting) {
        Ok(_) => anyhow::bail!("the model loaded"),
        Err(e) => Ok(e),
    }
}

#[test]
#[cfg(not(feature = "gpu-tests"))]
fn a_well_formed_cuda_model_needs_the_cuda_feature() -> Result<()> {
    let (opt, program) = program()?;
    let e = load(&opt, &program, &fake_blobs())?;
    assert!(
        matches!(
            e,
            LoadError::BackendNotBuilt {
                feature: "cuda",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("--features cuda"), "{e}");
    Ok(())
}

#[test]
fn a_bad_cubin_is_rejected() -> Result<()> {
    let (opt, program) = program()?;
    let mut compiled = fake_blobs();
    compiled.blobs[0].1 = b"MZ not an ELF".to_vec();
    let e = load(&opt, &program, &compiled)?;
    assert!(
        matches!(&e, LoadError::Code { reason } if reason.contains("sm_90")),
        "{e}"
    );
    Ok(())
}

#[test]
fn ptx_with_a_nul_is_rejected() -> Result<()> {
    let (opt, program) = program()?;
    let mut compiled = fake_blobs();
    compiled.blobs[1].1 = b"// ptx\0trailing".to_vec();
    let e = load(&opt, &program, &compiled)?;
    assert!(
        matches!(&e, LoadError::Code { reason } if reason.contains("ptx")),
        "{e}"
    );
    Ok(())
}

#[test]
fn weights_shorter_than_the_kernels_read_are_rejected() -> Result<()> {
    let (opt, mut program) = program()?;
    program.weights.truncate(program.weights.len() / 2);
    let e = load(&opt, &program, &fake_blobs())?;
    assert!(
        matches!(&e, LoadError::Descriptor { reason, .. } if reason.contains("weights section")),
        "{e}"
    );
    Ok(())
}

#[test]
fn a_missing_launch_is_rejected() -> Result<()> {
    let (opt, mut program) = program()?;
    program.launches.pop();
    let bytes = artifact::write_cuda(&opt.graph, &program, &fake_blobs(), 64);
    // The writer parses what it wrote, so it refuses too.
    let e = bytes.expect_err("a file with a missing launch was written");
    assert!(e.to_string().contains("CUDA launches"), "{e}");
    Ok(())
}

#[test]
fn no_cuda_model_runs_past_the_grid_limit() -> Result<()> {
    let (opt, program) = program()?;
    let e = artifact::write_cuda(&opt.graph, &program, &fake_blobs(), 70_000)
        .expect_err("max batch 70000 was accepted");
    assert!(e.to_string().contains("batch limit"), "{e}");
    Ok(())
}

/// A CUDA model's kernels are native code from the file: without the caller's explicit
/// permission (and with no signature to trust yet) it is refused before anything is parsed
/// beyond the header and manifest, whatever the runtime was built with.
#[test]
fn a_cuda_model_needs_permission_to_run_its_code() -> Result<()> {
    let (opt, program) = program()?;
    let bytes = artifact::write_cuda(&opt.graph, &program, &fake_blobs(), 64)?;
    match Model::from_bytes(&bytes) {
        Err(LoadError::UnsignedCode { .. }) => Ok(()),
        other => anyhow::bail!("expected UnsignedCode, got {other:?}"),
    }
}

#[test]
fn every_step_gets_a_record_with_its_piece_table() -> Result<()> {
    let (opt, program) = program()?;
    let bytes = artifact::write_cuda(&opt.graph, &program, &fake_blobs(), 64)?;
    let file = runtime::format::ModelFile::parse(&bytes)?;
    let table = runtime::cuda::validate::step_table(&file)?;
    assert_eq!(table.at.len(), program.steps.len());
    let mut multi = 0;
    for (i, s) in program.steps.iter().enumerate() {
        let at = table.at[i];
        let n = table.words[at + runtime::cuda::table::NPIECES];
        assert_eq!(n, s.pieces.len() as u64, "step {i}");
        multi += usize::from(n > 1);
    }
    assert!(multi > 0, "sparsenet-40-24 has concatenated inputs");
    Ok(())
}

#[test]
fn a_descriptor_the_kernels_cannot_run_is_rejected() -> Result<()> {
    // A Winograd flag passes the generic descriptor checks but no CUDA kernel implements it:
    // the step-table check rejects it (the file is re-sealed, as an attacker would).
    let (opt, mut program) = program()?;
    let runtime::format::StepDesc::Conv(mut d) = program.descs[0] else {
        anyhow::bail!("step 0 is not a convolution");
    };
    d.flags |= runtime::abi::FLAG_WINOGRAD;
    let at = usize::try_from(program.steps[0].desc_offset)?;
    let mut bytes = Vec::new();
    runtime::format::Descriptor::encode(&d, &mut bytes);
    program.consts[at..at + bytes.len()].copy_from_slice(&bytes);
    let e = load(&opt, &program, &fake_blobs())?;
    assert!(
        matches!(&e, LoadError::Descriptor { step: 0, reason } if reason.contains("Winograd")),
        "{e}"
    );
    Ok(())
}

/// `--precision bf16` (`cuda::storage`): the buffers the plan narrows reach the file as BF16,
/// the arena shrinks, and every step record carries the BF16 flags and piece bits the kernels
/// dispatch on. A file whose BF16 buffer is relabelled f32 (its size unchanged; the writer
/// recomputes the checksum, as an attacker would) is refused before anything runs.
#[test]
fn bf16_buffers_reach_the_file_and_their_records() -> Result<()> {
    use runtime::cuda::table::{FLAG_BF16_IN, FLAG_BF16_OUT, FLAGS, PIECE_BF16, PIECES};
    use runtime::format::Element;
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/models/densenet-bc-100-12.snet");
    let opt = driver::optimize(driver::load(&path)?, &WeightsSource::Random(3), 1, false)?;
    let program = cuda::generate_with(
        &opt.graph,
        &opt.plan,
        true,
        cuda::precision::Precision::Bf16,
    )?;
    let bytes = artifact::write_cuda(&opt.graph, &program, &fake_blobs(), 64)?;
    let file = runtime::format::ModelFile::parse(&bytes)?;
    let m = &file.manifest;
    let elements: Vec<Element> = m.buffers.iter().map(|b| b.element).collect();
    let planned: Vec<Element> = program
        .plan
        .liveness
        .buffers
        .iter()
        .map(|b| b.element)
        .collect();
    assert_eq!(elements, planned);
    let bf16 = elements.iter().filter(|&&e| e == Element::Bf16).count();
    assert!(bf16 > 10, "{bf16} bf16 buffers");
    assert!(m.arena_bytes_per_image < opt.plan.arena.arena_bytes);
    let table = runtime::cuda::validate::step_table(&file)?;
    let (mut read, mut written) = (0, 0);
    for (i, s) in m.steps.iter().enumerate() {
        let r = &table.words[table.at[i]..];
        let out_bf16 = elements[s.output as usize] == Element::Bf16;
        assert_eq!(r[FLAGS] & FLAG_BF16_OUT != 0, out_bf16, "step {i}");
        let mut any = false;
        for (k, &p) in s.pieces.iter().enumerate() {
            let half = elements[p as usize] == Element::Bf16;
            assert_eq!(
                r[PIECES + 3 * k] & PIECE_BF16 != 0,
                half,
                "step {i} piece {k}"
            );
            any |= half;
        }
        assert_eq!(r[FLAGS] & FLAG_BF16_IN != 0, any, "step {i}");
        read += usize::from(any);
        written += usize::from(out_bf16);
    }
    assert!(read > 0 && written > 0);
    // Relabel one BF16 buffer f32: its bytes now hold half the values its writer writes.
    let mut tampered = program.clone();
    let b = tampered
        .plan
        .liveness
        .buffers
        .iter_mut()
        .find(|b| b.element == Element::Bf16)
        .ok_or_else(|| anyhow::anyhow!("no bf16 buffer"))?;
    b.element = Element::F32;
    let bytes = artifact::write_cuda(&opt.graph, &tampered, &fake_blobs(), 64)?;
    let file = runtime::format::ModelFile::parse(&bytes)?;
    let e = runtime::cuda::validate::validate(&file).expect_err("a relabelled buffer passed");
    assert!(
        matches!(&e, LoadError::Descriptor { reason, .. } if reason.contains("values per image")),
        "{e}"
    );
    Ok(())
}

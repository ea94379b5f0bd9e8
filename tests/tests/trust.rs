//! model.bin files crafted by an attacker who recomputes the checksum after every edit (it is
//! not a secret): each is refused with a typed error, or runs correctly without its tampered
//! part; never a signal, an abort, a foreign exit code or a wrong answer. The files are
//! rebuilt with `format::Writer`, which seals them exactly as the compiler does.

use anyhow::{Context, Result, bail};
use runtime::format::{Manifest, ModelFile, Writer};
use runtime::{LoadError, LoadOptions, Model, RunError};
use sparsec::backend::cpu::Winograd;
use sparsec::driver::{self, WeightsSource};
use sparsec::kernel_select::KernelPolicy;
use sparsec_tests::random_input;
use std::path::PathBuf;

const MAX_BATCH: u32 = 4;

fn model_bytes() -> Result<Vec<u8>> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/models/sparsenet-40-24.snet");
    let graph = driver::load(&path)?;
    let policy = KernelPolicy::Fixed(Winograd::F4x4);
    let (_, bytes) =
        driver::compile_cpu_with(graph, &WeightsSource::Random(5), MAX_BATCH, true, &policy)?;
    Ok(bytes)
}

/// The file rebuilt after `edit` changes its manifest and sections (weights, consts, code),
/// sealed with a valid checksum.
fn craft(bytes: &[u8], edit: impl FnOnce(&mut Manifest, &mut [Vec<u8>; 3])) -> Result<Vec<u8>> {
    let file = ModelFile::parse(bytes)?;
    let mut m = file.manifest.clone();
    let code = file.cpu_code().context("CPU code")?.0.to_vec();
    let mut sections = [file.weights().to_vec(), file.consts().to_vec(), code];
    edit(&mut m, &mut sections);
    let mut w = Writer::new();
    m.weights = w.add_section(&sections[0]);
    m.consts = w.add_section(&sections[1]);
    let code = w.add_section(&sections[2]);
    if let Some(c) = m.cpu_code.as_mut() {
        c.code = code;
        c.entry_offset = c.entry_offset.min(code.len.saturating_sub(1));
    }
    Ok(w.finish(&m)?)
}

fn output(model: &Model, batch: usize) -> Result<Vec<f32>> {
    let per_image: usize = model.input().shape.iter().map(|&d| d as usize).product();
    let x = random_input(per_image * batch, 3);
    Ok(model.session_with_threads(2).run(&x, batch)?.to_vec())
}

#[test]
fn a_scratch_smaller_than_the_kernels_need_is_refused() -> Result<()> {
    let bytes = craft(&model_bytes()?, |m, _| m.scratch_bytes = 64)?;
    match Model::from_bytes(&bytes) {
        Err(LoadError::Inconsistent(reason)) if reason.contains("scratch_bytes 64") => Ok(()),
        other => bail!("expected a scratch error, got {other:?}"),
    }
}

#[test]
fn an_absurd_arena_is_an_out_of_memory_error_not_an_abort() -> Result<()> {
    let bytes = craft(&model_bytes()?, |m, _| m.arena_bytes_per_image = 1 << 50)?;
    let model = Model::from_bytes(&bytes)?;
    for batch in [1, MAX_BATCH as usize] {
        let per_image: usize = model.input().shape.iter().map(|&d| d as usize).product();
        let x = random_input(per_image * batch, 3);
        match model.session_with_threads(2).run(&x, batch) {
            Err(RunError::OutOfMemory { bytes, .. }) if bytes >= 1 << 50 => {}
            other => bail!(
                "batch {batch}: expected OutOfMemory, got {:?}",
                other.map(|_| ())
            ),
        }
    }
    // Past the address space: the format layer refuses it (the writer, which checks its
    // output with the reader, cannot even seal it).
    let refused = craft(&model_bytes()?, |m, _| {
        m.arena_bytes_per_image = u64::MAX / 2
    })
    .and_then(|b| Ok(Model::from_bytes(&b)?));
    match refused {
        Err(e) if e.to_string().contains("overflows") => Ok(()),
        other => bail!("expected an arena overflow, got {:?}", other.map(|_| ())),
    }
}

/// `mov edi, 42; mov eax, 60 (exit); syscall`: what an attacker puts in the code section.
const EXIT_42: [u8; 12] = [
    0xbf, 0x2a, 0x00, 0x00, 0x00, 0xb8, 0x3c, 0x00, 0x00, 0x00, 0x0f, 0x05,
];

#[test]
fn replaced_code_never_runs_by_default() -> Result<()> {
    let honest = model_bytes()?;
    let want = output(&Model::from_bytes(&honest)?, 3)?;
    let bytes = craft(&honest, |m, sections| {
        sections[2] = EXIT_42.to_vec();
        if let Some(c) = m.cpu_code.as_mut() {
            c.entry_offset = 0;
        }
    })?;
    let model = Model::from_bytes(&bytes)?;
    assert!(!model.runs_native_code());
    // The schedule runs from the validated manifest: the right answer, and the process lives.
    let got = output(&model, 3)?;
    if got != want {
        bail!("the data-only schedule gave another answer than the honest file");
    }
    Ok(())
}

#[test]
fn native_code_runs_only_when_allowed_and_gives_the_same_bits() -> Result<()> {
    let bytes = model_bytes()?;
    let data_only = Model::from_bytes(&bytes)?;
    let native = Model::from_bytes_with(
        &bytes,
        &LoadOptions {
            allow_unsigned_code: true,
            ..Default::default()
        },
    )?;
    assert!(!data_only.runs_native_code() && native.runs_native_code());
    for batch in [1, 3] {
        if output(&data_only, batch)? != output(&native, batch)? {
            bail!("batch {batch}: the data-only schedule and the generated code differ");
        }
    }
    Ok(())
}

/// Each buffer's live steps `(first, last)`: from its writer (the input: from the start) to
/// its last reader (the output: to the end).
fn lifetimes(m: &Manifest) -> Vec<Option<(usize, usize)>> {
    let mut live = vec![None; m.buffers.len()];
    let mut touch = |b: u32, at: usize| {
        let slot: &mut Option<(usize, usize)> = &mut live[b as usize];
        *slot = Some(slot.map_or((at, at), |(f, l)| (f.min(at), l.max(at))));
    };
    touch(m.inputs[0].buffer, 0);
    for (i, step) in m.steps.iter().enumerate() {
        touch(step.output, i);
        step.pieces.iter().for_each(|&p| touch(p, i));
    }
    touch(m.outputs[0].buffer, m.steps.len());
    live
}

#[test]
fn a_buffer_moved_onto_a_live_one_is_refused() -> Result<()> {
    let honest = model_bytes()?;
    let m = ModelFile::parse(&honest)?.manifest.clone();
    let live = lifetimes(&m);
    // Two buffers live at the same time that no single step reads and writes together (the
    // format layer checks those), with room to move the first onto the second.
    let same_step = |a: usize, b: usize| {
        m.steps.iter().any(|s| {
            let touches =
                |x: usize| s.output as usize == x || s.pieces.iter().any(|&p| p as usize == x);
            touches(a) && touches(b)
        })
    };
    let (a, b) = (0..m.buffers.len())
        .flat_map(|a| (0..m.buffers.len()).map(move |b| (a, b)))
        .find(|&(a, b)| {
            let (Some(la), Some(lb)) = (live[a], live[b]) else {
                return false;
            };
            a != b
                && la.0 <= lb.1
                && lb.0 <= la.1
                && !same_step(a, b)
                && m.buffers[b].offset_per_image + m.buffers[a].bytes_per_image
                    <= m.arena_bytes_per_image
        })
        .context("no pair of simultaneously live buffers")?;
    let bytes = craft(&honest, |m, _| {
        m.buffers[a].offset_per_image = m.buffers[b].offset_per_image;
    })?;
    match Model::from_bytes(&bytes) {
        Err(LoadError::Inconsistent(reason)) if reason.contains("share arena bytes") => {}
        other => bail!("expected an overlap error, got {other:?}"),
    }
    // The input moved to free arena bytes (past the plan's end, the arena grown to hold it):
    // the schedule follows the manifest, so the answer is still right.
    let want = output(&Model::from_bytes(&honest)?, 2)?;
    let moved = craft(&honest, |m, _| {
        let input = m.inputs[0].buffer as usize;
        let end = m.arena_bytes_per_image.next_multiple_of(64);
        m.buffers[input].offset_per_image = end;
        m.arena_bytes_per_image = end + m.buffers[input].bytes_per_image;
    })?;
    if output(&Model::from_bytes(&moved)?, 2)? != want {
        bail!("the moved input gave another answer");
    }
    Ok(())
}

//! The CUDA executor proper (feature `cuda`): driver presence check (cudarc panics on a
//! missing `libcuda`, and on a missing function in it at its first call, so the library and
//! every function `symbols` lists are checked first), context on device 0, the cubin matching the
//! device's compute capability or else the PTX (JIT-compiled by the driver), weights
//! uploaded once per model, and per session one stream, one arena (grown to the largest batch
//! seen) and one CUDA graph per batch size holding every step's launch. `run` copies the
//! input in, replays the graph and copies the output out; `profile` times each step alone.
//!
//! cudarc's per-slice event tracking is turned off (before any allocation): a session's work
//! is one stream, and the weights are uploaded and synchronised before any session exists.
//! Must not validate the file beyond what `validate` did.

use crate::error::{LoadError, RunError};
use crate::format::{Backend, Manifest, ModelFile, StepDesc};
use crate::profile::{LayerKind, Profile, StepProfile};
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaGraph, CudaModule, CudaSlice, CudaStream, LaunchConfig,
    PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::sync::Arc;

fn device_error(reason: impl std::fmt::Display) -> LoadError {
    LoadError::Device {
        backend: Backend::Cuda,
        reason: reason.to_string(),
    }
}

fn run_error(what: &str, e: impl std::fmt::Debug) -> RunError {
    RunError::Backend(format!("CUDA {what}: {e:?}"))
}

/// Opens the driver library as cudarc does (the first of its candidate names that loads) and
/// looks up every function the executor calls, so that neither a missing library nor an old
/// driver reaches cudarc's panics.
fn check_driver() -> Result<(), LoadError> {
    for name in cudarc::get_lib_name_candidates("cuda") {
        // SAFETY: loading the NVIDIA driver library runs its initialisers, as cudarc's own
        // load of the same name (which follows) does; nothing from it is called here.
        let Ok(lib) = (unsafe { libloading::Library::new(&name) }) else {
            continue;
        };
        return super::symbols::check(&name, |symbol| {
            // SAFETY: only the symbol's address is looked up; it is never called or read.
            unsafe { lib.get::<unsafe extern "C" fn()>(symbol.as_bytes()) }.is_ok()
        });
    }
    Err(device_error(
        "the NVIDIA driver library (libcuda.so) was not found",
    ))
}

/// A CUDA model on device 0: module loaded, weights resident. `Send + Sync`.
pub struct CudaModel {
    manifest: Manifest,
    ctx: Arc<CudaContext>,
    _module: Arc<CudaModule>,
    functions: Vec<Vec<CudaFunction>>,
    /// Each step's descriptor (for profiles).
    descriptors: Vec<StepDesc>,
    weights: CudaSlice<f32>,
    /// The step records every kernel reads (`table.rs`), and where each step's begins.
    table: CudaSlice<u64>,
    table_at: Vec<usize>,
    /// Which blob was loaded (`"sm_90"`, or `"ptx"`).
    blob: String,
}

impl std::fmt::Debug for CudaModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaModel")
            .field("name", &self.manifest.model_name)
            .field("blob", &self.blob)
            .finish_non_exhaustive()
    }
}

impl CudaModel {
    /// Loads a parsed CUDA model.bin onto device 0.
    pub fn load(file: &ModelFile<'_>) -> Result<CudaModel, LoadError> {
        let table = super::validate::step_table(file)?;
        let m = &file.manifest;
        let code = m
            .cuda
            .as_ref()
            .ok_or_else(|| device_error("no CUDA code"))?;
        check_driver()?;
        let ctx = CudaContext::new(0).map_err(|e| device_error(format!("no GPU 0: {e:?}")))?;
        // SAFETY: everything below uses one stream per session; the weights are uploaded and
        // synchronised here before any session can use them, and are freed only when the
        // model (which every session borrows) is dropped.
        unsafe { ctx.disable_event_tracking() };
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| device_error(format!("compute capability: {e:?}")))?;
        let native = format!("sm_{major}{minor}");
        let blob = |arch: &str| code.blobs.iter().find(|(a, _)| a == arch);
        let mut tried = Vec::new();
        let mut module = None;
        for (arch, section) in [blob(&native), blob("ptx")].into_iter().flatten() {
            let bytes = file.section(section);
            let ptx = if arch == "ptx" {
                // validate: NUL-free UTF-8.
                Ptx::from_src(String::from_utf8_lossy(bytes).into_owned())
            } else {
                Ptx::from_binary(bytes.to_vec())
            };
            match ctx.load_module(ptx) {
                Ok(mdl) => {
                    module = Some((arch.clone(), mdl));
                    break;
                }
                Err(e) => tried.push(format!("{arch}: {e:?}")),
            }
        }
        let Some((blob, module)) = module else {
            let have: Vec<&str> = code.blobs.iter().map(|(a, _)| a.as_str()).collect();
            return Err(device_error(format!(
                "no loadable code for this {native} GPU (the file has {have:?}, NVRTC {}); {}",
                code.nvrtc_version,
                tried.join("; ")
            )));
        };
        let functions = code
            .launches
            .iter()
            .map(|variants| {
                variants
                    .iter()
                    .map(|l| {
                        module
                            .load_function(&l.kernel)
                            .map_err(|e| device_error(format!("kernel {}: {e:?}", l.kernel)))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let host: Vec<f32> = file
            .weights()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let stream = ctx.default_stream();
        let weights = stream
            .clone_htod(&host)
            .map_err(|e| device_error(format!("uploading weights: {e:?}")))?;
        let table_at = table.at;
        let table = stream
            .clone_htod(&table.words)
            .map_err(|e| device_error(format!("uploading the step table: {e:?}")))?;
        stream
            .synchronize()
            .map_err(|e| device_error(format!("uploading weights: {e:?}")))?;
        let descriptors = (0..m.steps.len())
            .map(|i| {
                file.step_descriptor(i)
                    .ok_or_else(|| device_error(format!("step {i} has no descriptor")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CudaModel {
            manifest: m.clone(),
            descriptors,
            ctx,
            _module: module,
            functions,
            weights,
            table,
            table_at,
            blob,
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The blob that was loaded: `"sm_90"`, ..., or `"ptx"`.
    pub fn blob(&self) -> &str {
        &self.blob
    }

    /// A session: its own stream; the arena and graphs come with the first `run`.
    pub fn session(&self) -> CudaSession<'_> {
        CudaSession {
            model: self,
            stream: None,
            arena: None,
            arena_batch: 0,
            graphs: HashMap::new(),
            output: Vec::new(),
        }
    }
}

/// One thread's device arena, stream and captured graphs.
pub struct CudaSession<'m> {
    model: &'m CudaModel,
    stream: Option<Arc<CudaStream>>,
    arena: Option<CudaSlice<f32>>,
    arena_batch: usize,
    graphs: HashMap<usize, CudaGraph>,
    output: Vec<f32>,
}

impl std::fmt::Debug for CudaSession<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaSession")
            .field("model", &self.model)
            .field("arena_batch", &self.arena_batch)
            .finish_non_exhaustive()
    }
}

impl CudaSession<'_> {
    /// Runs a batch (the same contract as the CPU session's `run`).
    pub fn run(&mut self, input: &[f32], batch: usize) -> Result<&[f32], RunError> {
        let m = &self.model.manifest;
        m.check_input(input.len(), batch)?;
        let spec = &m.inputs[0];
        let stream = match &self.stream {
            Some(s) => s.clone(),
            None => {
                let s = self
                    .model
                    .ctx
                    .new_stream()
                    .map_err(|e| run_error("stream", e))?;
                self.stream = Some(s.clone());
                s
            }
        };
        if self.arena.is_none() || self.arena_batch < batch {
            // Graphs hold the old arena's address: drop them with it.
            self.graphs.clear();
            self.arena = None;
            let floats = (m.arena_bytes_per_image as usize * batch)
                .div_ceil(4)
                .max(1);
            self.arena = Some(
                stream
                    .alloc_zeros::<f32>(floats)
                    .map_err(|e| run_error("arena allocation", e))?,
            );
            self.arena_batch = batch;
        }
        let Some(arena) = self.arena.as_mut() else {
            return Err(RunError::Backend("CUDA arena missing".into()));
        };
        let b = batch;
        let in_buf = m.buffers[spec.buffer as usize];
        let at = in_buf.offset_per_image as usize * b / 4;
        stream
            .memcpy_htod(input, &mut arena.slice_mut(at..at + input.len()))
            .map_err(|e| run_error("input copy", e))?;
        if !self.graphs.contains_key(&batch) {
            let graph = capture(self.model, &stream, arena, batch)?;
            self.graphs.insert(batch, graph);
        }
        let graph = &self.graphs[&batch];
        graph.launch().map_err(|e| run_error("graph launch", e))?;
        let out = &m.outputs[0];
        let out_buf = m.buffers[out.buffer as usize];
        let at = out_buf.offset_per_image as usize * b / 4;
        let len = out_buf.bytes_per_image as usize * b / 4;
        self.output.resize(len, 0.0);
        stream
            .memcpy_dtoh(&arena.slice(at..at + len), &mut self.output[..])
            .map_err(|e| run_error("output copy", e))?;
        stream
            .synchronize()
            .map_err(|e| run_error("synchronize", e))?;
        Ok(&self.output)
    }
}

impl CudaSession<'_> {
    /// Runs a batch like [`CudaSession::run`] (which leaves the input and every buffer in the
    /// arena), then times each step alone: `iters` back-to-back launches between two CUDA
    /// events, after one warm-up launch. Each step rewrites its own output from buffers that
    /// stay as `run` left them, so the output is `run`'s. `wall_seconds` is one graph replay.
    pub fn profile(
        &mut self,
        input: &[f32],
        batch: usize,
        iters: usize,
    ) -> Result<Profile, RunError> {
        self.run(input, batch)?;
        let model = self.model;
        let (Some(stream), Some(arena)) = (self.stream.clone(), self.arena.as_mut()) else {
            return Err(RunError::Backend("CUDA session not started".into()));
        };
        let iters = iters.max(1);
        let timing = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let event = |what: &str| stream.record_event(timing).map_err(|e| run_error(what, e));
        let m = &model.manifest;
        let mut steps = Vec::with_capacity(m.steps.len());
        for (i, step) in m.steps.iter().enumerate() {
            launch_step(model, &stream, arena, i, batch as u32)?;
            let start = event("profile event")?;
            for _ in 0..iters {
                launch_step(model, &stream, arena, i, batch as u32)?;
            }
            let end = event("profile event")?;
            let ms = start
                .elapsed_ms(&end)
                .map_err(|e| run_error("profile timing", e))?;
            let desc = model.descriptors[i];
            steps.push(StepProfile {
                label: step.label.clone(),
                kind: LayerKind::of(m, &desc, i),
                step_kind: step.kind,
                desc,
                flops: step.flops_per_image * batch as u64,
                seconds: f64::from(ms) * 1e-3 / iters as f64,
            });
        }
        let graph = self
            .graphs
            .get(&batch)
            .ok_or_else(|| RunError::Backend("no graph for the batch".into()))?;
        let start = event("profile event")?;
        graph.launch().map_err(|e| run_error("graph launch", e))?;
        let end = event("profile event")?;
        let ms = start
            .elapsed_ms(&end)
            .map_err(|e| run_error("profile timing", e))?;
        Ok(Profile {
            batch,
            threads: 1,
            wall_seconds: f64::from(ms) * 1e-3,
            steps,
        })
    }
}

/// Launches step `i` for `batch` on `stream`: the launch variant that serves the batch
/// (`CudaCode::variant`).
fn launch_step(
    model: &CudaModel,
    stream: &Arc<CudaStream>,
    arena: &mut CudaSlice<f32>,
    i: usize,
    batch: u32,
) -> Result<(), RunError> {
    let m = &model.manifest;
    let code = m.cuda.as_ref();
    let v = code.and_then(|c| c.variant(i, batch));
    let launch = code.zip(v).and_then(|(c, v)| c.launches[i].get(v));
    let function = model.functions.get(i).zip(v).and_then(|(f, v)| f.get(v));
    let record = model.table_at.get(i).map(|&at| model.table.slice(at..));
    let (Some(launch), Some(function), Some(record)) = (launch, function, record) else {
        return Err(RunError::Backend(format!("no CUDA launch for step {i}")));
    };
    let Some([gx, gy, gz]) = launch.grid(batch) else {
        return Err(RunError::Backend(format!(
            "step {i}: batch {batch} passes the grid's limits"
        )));
    };
    let cfg = LaunchConfig {
        grid_dim: (gx, gy, gz),
        block_dim: (launch.block, 1, 1),
        shared_mem_bytes: launch.shared_bytes,
    };
    let mut args = stream.launch_builder(function);
    args.arg(&mut *arena)
        .arg(&model.weights)
        .arg(&batch)
        .arg(&record);
    // Every kernel takes (float* arena, const float* weights, unsigned batch, const u64*
    // step record); `validate` checked each record (`table.rs`: weight ranges inside the
    // weights section, pieces and output inside their buffers, 32-bit indices at max_batch)
    // and that every variant's grid fits at max_batch, and the arena holds
    // `arena_bytes_per_image * batch` bytes or more, which bounds every buffer the records
    // address at this batch; kernels compute nothing for blocks past the batch.
    // SAFETY: the arguments match the kernel's signature and bounds (above).
    unsafe { args.launch(cfg) }.map_err(|e| RunError::Kernel {
        step: i,
        label: m.steps[i].label.clone(),
        status: e.0 as i32,
    })?;
    Ok(())
}

/// Captures every step's launch for `batch` into one graph.
fn capture(
    model: &CudaModel,
    stream: &Arc<CudaStream>,
    arena: &mut CudaSlice<f32>,
    batch: usize,
) -> Result<CudaGraph, RunError> {
    let m = &model.manifest;
    stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .map_err(|e| run_error("begin capture", e))?;
    let mut failed = None;
    for i in 0..m.steps.len() {
        if let Err(e) = launch_step(model, stream, arena, i, batch as u32) {
            failed = Some(e);
            break;
        }
    }
    let graph = stream.end_capture(CUgraphInstantiate_flags(0));
    if let Some(e) = failed {
        return Err(e);
    }
    graph
        .map_err(|e| run_error("end capture", e))?
        .ok_or_else(|| RunError::Backend("CUDA graph capture produced no graph".into()))
}

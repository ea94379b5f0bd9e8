//! `sparsec._sparsec`, the native half of the `sparsec` Python package: thin PyO3 wrappers over
//! the compiler library (`sparsec::driver`, `sparsec::stats`) and the runtime (`runtime::Model`,
//! `runtime::OwnedSession`). The Python-facing API (argument juggling, `state_dict` handling,
//! warnings) is `python/sparsec/__init__.py`; this file converts types and errors and releases
//! the GIL around every long computation.
//!
//! Must not implement any compiler or runtime logic: everything forwards to the Rust crates.

use numpy::{
    PyArray1, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyFileNotFoundError, PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use sparsec::backend::cpu::Winograd;
use sparsec::driver::{self, CompileOptions, CpuArch, DriverError, Target, WeightsSource};
use sparsec::kernel_select::KernelPolicy;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pyo3::create_exception!(
    _sparsec,
    CompileError,
    pyo3::exceptions::PyException,
    "The model could not be compiled; the message is the text the `sparsec` CLI prints."
);

/// A driver error as a Python exception: a missing file is `FileNotFoundError`, other I/O
/// `OSError`, everything else `CompileError` with the CLI's text.
fn compile_err(e: DriverError) -> PyErr {
    match &e {
        DriverError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(e.to_string())
        }
        DriverError::Io { .. } => PyOSError::new_err(e.to_string()),
        // Rendered diagnostics already end with the summary line, as the CLI prints them.
        DriverError::Source { .. } => CompileError::new_err(e.to_string()),
        _ => CompileError::new_err(format!("error: {e}")),
    }
}

fn load_err(e: runtime::LoadError) -> PyErr {
    match &e {
        runtime::LoadError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(e.to_string())
        }
        runtime::LoadError::Io { .. } => PyOSError::new_err(e.to_string()),
        _ => PyValueError::new_err(format!("not a loadable model.bin: {e}")),
    }
}

/// Parses and lowers a model given as a path or as source text named `name`.
fn graph_of(model: &str, is_path: bool, name: &str) -> Result<ir::Graph, DriverError> {
    if is_path {
        return driver::load(&PathBuf::from(model));
    }
    let (graph, errors) = sparsec::compile_source(name, model);
    match graph {
        Some(g) if errors.is_empty() => Ok(g),
        _ => Err(DriverError::Source {
            path: PathBuf::from(name),
            rendered: sparsec::diagnostics::render(name, model, &errors),
            count: errors.len(),
            diagnostics: errors,
        }),
    }
}

/// Weights as the driver takes them: exactly one of a safetensors path, named float32 arrays,
/// or a random seed.
fn weights_source(
    path: Option<PathBuf>,
    tensors: Option<Vec<(String, PyReadonlyArrayDyn<'_, f32>)>>,
    random_seed: Option<u64>,
) -> PyResult<WeightsSource> {
    match (path, tensors, random_seed) {
        (Some(p), None, None) => Ok(WeightsSource::Safetensors(p)),
        (None, Some(tensors), None) => Ok(WeightsSource::Tensors(
            tensors
                .into_iter()
                .map(|(name, a)| {
                    let shape = a.shape().to_vec();
                    let data = a.as_array().iter().copied().collect();
                    (name, shape, data)
                })
                .collect(),
        )),
        (None, None, Some(seed)) => Ok(WeightsSource::Random(seed)),
        _ => Err(PyValueError::new_err(
            "code generation needs weights: pass exactly one of weights=(a .safetensors path, a dict of arrays or a state_dict) or random_weights=SEED",
        )),
    }
}

fn kernel_policy(
    winograd: Option<&str>,
    tolerance: Option<f64>,
    calibration: Option<Vec<f32>>,
) -> PyResult<KernelPolicy> {
    let fixed = |w| {
        if tolerance.is_some() || calibration.is_some() {
            Err(PyValueError::new_err(
                "tolerance= and calibration= apply to winograd=\"auto\" only",
            ))
        } else {
            Ok(KernelPolicy::Fixed(w))
        }
    };
    match winograd.unwrap_or("auto") {
        "auto" => Ok(KernelPolicy::Guarded {
            tolerance,
            calibration,
        }),
        "4x4" => fixed(Winograd::F4x4),
        "2x2" => fixed(Winograd::F2x2),
        "off" => fixed(Winograd::Off),
        other => Err(PyValueError::new_err(format!(
            "winograd must be \"auto\", \"4x4\", \"2x2\" or \"off\", got {other:?}"
        ))),
    }
}

/// The accuracy guard's one-line report and whether its budget was met.
type Report = (String, bool);

/// Compiles a model to model.bin bytes. Returns the bytes and the accuracy guard's one-line
/// report with whether it met its budget (CPU, `winograd="auto"`), or `None`.
#[pyfunction]
#[pyo3(signature = (model, is_path, name, weights_path, tensors, random_seed, target, max_batch, winograd, tolerance, calibration, cuda_archs, ptx, precision, verify))]
#[expect(
    clippy::too_many_arguments,
    reason = "the keyword arguments of `sparsec.compile`, forwarded one to one by __init__.py"
)]
fn compile<'py>(
    py: Python<'py>,
    model: &str,
    is_path: bool,
    name: &str,
    weights_path: Option<PathBuf>,
    tensors: Option<Vec<(String, PyReadonlyArrayDyn<'py, f32>)>>,
    random_seed: Option<u64>,
    target: &str,
    max_batch: u32,
    winograd: Option<&str>,
    tolerance: Option<f64>,
    calibration: Option<PyReadonlyArrayDyn<'py, f32>>,
    cuda_archs: Vec<String>,
    ptx: bool,
    precision: &str,
    verify: bool,
) -> PyResult<(Bound<'py, PyBytes>, Option<Report>)> {
    let weights = weights_source(weights_path, tensors, random_seed)?;
    let calibration = calibration.map(|c| c.as_array().iter().copied().collect());
    let target = match target {
        "cpu" => Target::Cpu(kernel_policy(winograd, tolerance, calibration)?),
        // Cross compilation (docs/aarch64.md): the kernel choice is measured on this machine.
        "cpu-x86_64" => Target::CpuFor(
            CpuArch::X86_64,
            kernel_policy(winograd, tolerance, calibration)?,
        ),
        "cpu-aarch64" => Target::CpuFor(
            CpuArch::Aarch64,
            kernel_policy(winograd, tolerance, calibration)?,
        ),
        "cuda" => Target::Cuda {
            archs: cuda_archs,
            ptx,
            cache: true,
            precision: precision.parse().map_err(PyValueError::new_err)?,
        },
        other => {
            return Err(PyValueError::new_err(format!(
                "target must be \"cpu\", \"cpu-x86_64\", \"cpu-aarch64\" or \"cuda\", got {other:?}"
            )));
        }
    };
    if max_batch == 0 {
        return Err(PyValueError::new_err("max_batch must be at least 1, got 0"));
    }
    let options = CompileOptions {
        weights,
        target,
        max_batch,
        verify,
    };
    let compiled = py
        .detach(|| graph_of(model, is_path, name).and_then(|g| driver::compile(g, &options)))
        .map_err(compile_err)?;
    let report = compiled.selection.map(|s| (s.to_string(), s.met));
    Ok((PyBytes::new(py, &compiled.bytes), report))
}

/// `sparsec stats --json` of a model (no weights needed), as JSON text.
#[pyfunction]
fn stats_json(
    py: Python<'_>,
    model: &str,
    is_path: bool,
    name: &str,
    batch: u64,
) -> PyResult<String> {
    if batch == 0 {
        return Err(PyValueError::new_err("batch must be at least 1, got 0"));
    }
    let stats = py
        .detach(|| graph_of(model, is_path, name).and_then(|g| sparsec::stats::full(&g, batch)))
        .map_err(compile_err)?;
    serde_json::to_string(&stats).map_err(|e| PyRuntimeError::new_err(e.to_string()))
}

/// A loaded model.bin: validated, code mapped, shared by every session (and thread).
#[pyclass(frozen, module = "sparsec")]
struct Model {
    inner: Arc<runtime::Model>,
}

#[pymethods]
impl Model {
    /// Loads a model.bin from a path (`str` or `os.PathLike`) or from `bytes`.
    #[staticmethod]
    fn load(py: Python<'_>, source: &Bound<'_, PyAny>) -> PyResult<Model> {
        let model = if let Ok(bytes) = source.cast::<PyBytes>() {
            let bytes = bytes.as_bytes();
            py.detach(|| runtime::Model::from_bytes(bytes))
        } else {
            let path: PathBuf = source.extract().map_err(|_| {
                PyTypeError::new_err(format!(
                    "Model.load takes a path or bytes, got {}",
                    type_name(source)
                ))
            })?;
            py.detach(|| runtime::Model::load(&path))
        };
        Ok(Model {
            inner: Arc::new(model.map_err(load_err)?),
        })
    }

    /// `(C, H, W)` of one input image.
    #[getter]
    fn input_shape(&self) -> (usize, usize, usize) {
        let [c, h, w] = self.inner.input().shape;
        (c as usize, h as usize, w as usize)
    }

    /// Values per image in the output: the number of classes.
    #[getter]
    fn num_classes(&self) -> usize {
        self.inner
            .output()
            .shape
            .iter()
            .map(|&d| d as usize)
            .product()
    }

    #[getter]
    fn max_batch(&self) -> usize {
        self.inner.max_batch()
    }

    /// `"cpu"` or `"cuda"`.
    #[getter]
    fn target(&self) -> &'static str {
        match self.inner.backend() {
            runtime::format::Backend::Cpu => "cpu",
            runtime::format::Backend::Cuda => "cuda",
        }
    }

    #[getter]
    fn name(&self) -> &str {
        self.inner.name()
    }

    /// A session: one caller's working memory and threads (all cores when `threads` is None).
    #[pyo3(signature = (threads=None))]
    fn session(&self, threads: Option<usize>) -> PyResult<Session> {
        if threads == Some(0) {
            return Err(PyValueError::new_err("threads must be at least 1, got 0"));
        }
        Ok(Session {
            inner: Mutex::new(runtime::OwnedSession::new(Arc::clone(&self.inner), threads)),
            model: Arc::clone(&self.inner),
        })
    }

    fn __repr__(&self) -> String {
        let (c, h, w) = self.input_shape();
        format!(
            "<sparsec.Model {:?} target={} input=({c}, {h}, {w}) classes={} max_batch={}>",
            self.inner.name(),
            self.target(),
            self.num_classes(),
            self.inner.max_batch()
        )
    }
}

/// One caller's session. Several Python threads may share one (they take turns); for
/// parallelism give each thread its own.
#[pyclass(frozen, module = "sparsec")]
struct Session {
    inner: Mutex<runtime::OwnedSession>,
    model: Arc<runtime::Model>,
}

fn type_name(x: &Bound<'_, PyAny>) -> String {
    x.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

#[pymethods]
impl Session {
    /// Runs a float32 NCHW batch `[N, C, H, W]`; returns a new `[N, classes]` float32 array.
    /// A C-contiguous array is read in place, any other layout copied once. The GIL is
    /// released while the model runs.
    fn run<'py>(&self, py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let array = x.cast::<PyUntypedArray>().map_err(|_| {
            PyTypeError::new_err(format!(
                "run takes a numpy.ndarray of float32, got {}",
                type_name(x)
            ))
        })?;
        let dtype = array.dtype();
        if !dtype.is_equiv_to(&numpy::dtype::<f32>(py)) {
            return Err(PyValueError::new_err(format!(
                "input dtype must be float32, got {dtype}"
            )));
        }
        let (c, h, w) = {
            let [c, h, w] = self.model.input().shape;
            (c as usize, h as usize, w as usize)
        };
        let max = self.model.max_batch();
        let shape = array.shape();
        if shape.len() != 4 || shape[1..] != [c, h, w] {
            return Err(PyValueError::new_err(format!(
                "input shape must be [N, {c}, {h}, {w}] (NCHW), got {shape:?}"
            )));
        }
        let batch = shape[0];
        if batch == 0 || batch > max {
            return Err(PyValueError::new_err(format!(
                "batch must be between 1 and the model's max_batch {max}, got {batch}"
            )));
        }
        let array = array.cast::<PyArrayDyn<f32>>()?.try_readonly()?;
        let copied: Vec<f32>;
        // `as_slice` also accepts Fortran order, whose memory order is not NCHW: only a
        // C-contiguous array is read in place; `iter` walks any other in logical (C) order.
        let input = match array.as_slice() {
            Ok(s) if array.is_c_contiguous() => s,
            _ => {
                copied = array.as_array().iter().copied().collect();
                &copied
            }
        };
        let session = &self.inner;
        let output = py.detach(|| {
            let mut session = session
                .lock()
                .map_err(|_| PyRuntimeError::new_err("a previous run on this session panicked"))?;
            session
                .run(input, batch)
                .map(<[f32]>::to_vec)
                .map_err(|e| PyRuntimeError::new_err(e.to_string()))
        })?;
        let classes = output.len() / batch;
        Ok(PyArray1::from_vec(py, output)
            .reshape([batch, classes])?
            .into_any())
    }

    /// For the overhead benchmark (`scripts/python-overhead.py`): runs `x` (C-contiguous
    /// float32 NCHW, checked like `run`) `iterations` times with `Session::run` in a Rust loop,
    /// GIL released, and returns the seconds taken: the baseline a Python `run` call is
    /// compared with.
    fn _rust_run_seconds(
        &self,
        py: Python<'_>,
        x: PyReadonlyArrayDyn<'_, f32>,
        iterations: usize,
    ) -> PyResult<f64> {
        let batch = x.shape().first().copied().unwrap_or(0);
        let input = x
            .as_slice()
            .ok()
            .filter(|_| x.is_c_contiguous())
            .ok_or_else(|| PyValueError::new_err("x must be C-contiguous"))?;
        let session = &self.inner;
        py.detach(|| {
            let mut session = session
                .lock()
                .map_err(|_| PyRuntimeError::new_err("a previous run on this session panicked"))?;
            let start = std::time::Instant::now();
            for _ in 0..iterations {
                session
                    .run(input, batch)
                    .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
            }
            Ok(start.elapsed().as_secs_f64())
        })
    }

    /// The CPU threads this session runs on.
    #[getter]
    fn threads(&self) -> PyResult<usize> {
        let session = self
            .inner
            .lock()
            .map_err(|_| PyRuntimeError::new_err("a previous run on this session panicked"))?;
        Ok(session.threads())
    }

    /// How many runs used all of the session's threads and how many only the calling thread:
    /// a session chooses run by run from measured times, so that cores busy with other work
    /// never make more threads slower than one (`SPARSEC_ADAPTIVE_THREADS=0` keeps all).
    /// Returns `{"all_threads": n, "one_thread": m}`.
    fn thread_use(&self) -> PyResult<std::collections::BTreeMap<&'static str, u64>> {
        let session = self
            .inner
            .lock()
            .map_err(|_| PyRuntimeError::new_err("a previous run on this session panicked"))?;
        let u = session.thread_use();
        Ok([("all_threads", u.team), ("one_thread", u.caller)]
            .into_iter()
            .collect())
    }
}

#[pymodule]
fn _sparsec(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(compile, m)?)?;
    m.add_function(wrap_pyfunction!(stats_json, m)?)?;
    m.add_class::<Model>()?;
    m.add_class::<Session>()?;
    m.add("CompileError", m.py().get_type::<CompileError>())?;
    Ok(())
}

//! The C ABI of the sparsec runtime (`sparsec.h`, generated from this file by cbindgen): load a
//! model.bin from a path or bytes, query its shapes, create sessions, run, free.
//!
//! Every fallible call returns a [`SparsecStatus`]; on failure [`sparsec_last_error`] gives the
//! message (per thread). Every `extern "C"` function runs its body under `catch_unwind`, so no
//! Rust panic crosses the boundary. Handles: a model is a boxed `Arc<runtime::Model>`, a session
//! a boxed [`runtime::OwnedSession`] holding its own share of the model, so a model may be freed
//! before its sessions.
//!
//! Must not contain runtime logic: everything forwards to the `runtime` crate.

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

/// What a call did. Every function but the `_free` ones and `sparsec_last_error` returns one.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SparsecStatus {
    /// Success.
    Ok = 0,
    /// A required pointer argument was NULL.
    NullArgument = 1,
    /// An argument is out of range (a length, a batch, a non-UTF-8 path).
    InvalidArgument = 2,
    /// The model file could not be read.
    Io = 3,
    /// The bytes are not a model.bin this runtime can load (format, checksum, target, CPU).
    InvalidModel = 4,
    /// Running the model failed.
    Run = 5,
    /// An internal error (a caught panic): a bug, please report it.
    Internal = 6,
}

/// A loaded model (opaque). Thread-safe: sessions of one model may run on different threads.
pub struct SparsecModel {
    model: Arc<runtime::Model>,
}

/// One caller's working memory and threads (opaque). Use a session from one thread at a time.
pub struct SparsecSession {
    session: runtime::OwnedSession,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(message: String) {
    // An interior NUL cannot be represented: cut the message there.
    let message = CString::new(message).unwrap_or_else(|e| {
        let end = e.nul_position();
        let mut bytes = e.into_vec();
        bytes.truncate(end);
        CString::new(bytes).unwrap_or_default()
    });
    LAST_ERROR.with(|e| *e.borrow_mut() = message);
}

/// Runs `body`, turning an `Err` and a panic into a status with its message recorded.
fn guard(body: impl FnOnce() -> Result<(), (SparsecStatus, String)>) -> SparsecStatus {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => SparsecStatus::Ok,
        Ok(Err((status, message))) => {
            set_error(message);
            status
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_error(format!("internal error (panic): {what}"));
            SparsecStatus::Internal
        }
    }
}

fn null(what: &str) -> (SparsecStatus, String) {
    (SparsecStatus::NullArgument, format!("`{what}` is NULL"))
}

fn load_error(e: runtime::LoadError) -> (SparsecStatus, String) {
    let status = match e {
        runtime::LoadError::Io { .. } => SparsecStatus::Io,
        _ => SparsecStatus::InvalidModel,
    };
    (status, e.to_string())
}

fn store_model(
    out: *mut *mut SparsecModel,
    model: Result<runtime::Model, runtime::LoadError>,
) -> Result<(), (SparsecStatus, String)> {
    let model = Box::new(SparsecModel {
        model: Arc::new(model.map_err(load_error)?),
    });
    // SAFETY: the caller checked `out` is non-NULL; it points to writable storage for one
    // pointer (the documented contract).
    unsafe { out.write(Box::into_raw(model)) };
    Ok(())
}

/// The message of the last failed call on this thread ("" if none). The pointer stays valid
/// until the next failing call on the same thread; do not free it.
#[unsafe(no_mangle)]
pub extern "C" fn sparsec_last_error() -> *const c_char {
    catch_unwind(|| LAST_ERROR.with(|e| e.borrow().as_ptr())).unwrap_or(c"".as_ptr())
}

/// Loads a model.bin file. On success `*out` holds a model to free with `sparsec_model_free`.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `out` is NULL or points to writable storage.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sparsec_model_load(
    path: *const c_char,
    out: *mut *mut SparsecModel,
) -> SparsecStatus {
    guard(|| {
        if path.is_null() {
            return Err(null("path"));
        }
        if out.is_null() {
            return Err(null("out"));
        }
        // SAFETY: non-NULL and NUL-terminated by the caller's contract.
        let path = unsafe { CStr::from_ptr(path) };
        let path = path.to_str().map_err(|_| {
            (
                SparsecStatus::InvalidArgument,
                format!("path {path:?} is not UTF-8"),
            )
        })?;
        store_model(out, runtime::Model::load(path))
    })
}

/// Loads a model from `len` bytes of model.bin in memory (copied: the buffer may be freed
/// afterwards). On success `*out` holds a model to free with `sparsec_model_free`.
///
/// # Safety
/// `data` is NULL or points to `len` readable bytes; `out` is NULL or points to writable storage.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sparsec_model_from_bytes(
    data: *const u8,
    len: usize,
    out: *mut *mut SparsecModel,
) -> SparsecStatus {
    guard(|| {
        if data.is_null() {
            return Err(null("data"));
        }
        if out.is_null() {
            return Err(null("out"));
        }
        // SAFETY: non-NULL and `len` readable bytes by the caller's contract.
        let bytes = unsafe { std::slice::from_raw_parts(data, len) };
        store_model(out, runtime::Model::from_bytes(bytes))
    })
}

/// Frees a model (NULL is ignored). Sessions made from it stay valid: each holds its own share.
///
/// # Safety
/// `model` is NULL or a pointer from `sparsec_model_load`/`_from_bytes` not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sparsec_model_free(model: *mut SparsecModel) {
    // A panic while dropping leaves nothing to observe: the handle is gone either way.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if !model.is_null() {
            // SAFETY: made by `Box::into_raw` in `store_model`, freed once (caller's contract).
            drop(unsafe { Box::from_raw(model) });
        }
    }));
}

/// Borrows the model behind a handle.
///
/// # Safety
/// `model` is NULL or a live handle.
unsafe fn model_ref<'a>(
    model: *const SparsecModel,
) -> Result<&'a SparsecModel, (SparsecStatus, String)> {
    // SAFETY: NULL or a live handle (caller's contract); `as_ref` checks NULL.
    unsafe { model.as_ref() }.ok_or_else(|| null("model"))
}

/// Writes one `size_t` result.
fn store(out: *mut usize, value: usize, what: &str) -> Result<(), (SparsecStatus, String)> {
    if out.is_null() {
        return Err(null(what));
    }
    // SAFETY: non-NULL, and points to a writable `size_t` (caller's contract).
    unsafe { out.write(value) };
    Ok(())
}

/// The shape of one input image: `shape[0..3] = {C, H, W}` (input is NCHW float32).
///
/// # Safety
/// `model` is NULL or a live handle; `shape` is NULL or points to 3 writable `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sparsec_model_input_shape(
    model: *const SparsecModel,
    shape: *mut usize,
) -> SparsecStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let m = unsafe { model_ref(model) }?;
        if shape.is_null() {
            return Err(null("shape"));
        }
        for (i, &d) in m.model.input().shape.iter().enumerate() {
            // SAFETY: `shape` points to 3 writable `size_t` (caller's contract), i < 3.
            unsafe { shape.add(i).write(d as usize) };
        }
        Ok(())
    })
}

/// The number of output values per image (the classes).
///
/// # Safety
/// `model` is NULL or a live handle; `out` is NULL or points to a writable `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sparsec_model_num_classes(
    model: *const SparsecModel,
    out: *mut usize,
) -> SparsecStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let m = unsafe { model_ref(model) }?;
        let classes = m.model.output().shape.iter().map(|&d| d as usize).product();
        store(out, classes, "out")
    })
}

/// The largest batch the model accepts.
///
/// # Safety
/// `model` is NULL or a live handle; `out` is NULL or points to a writable `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sparsec_model_max_batch(
    model: *const SparsecModel,
    out: *mut usize,
) -> SparsecStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let m = unsafe { model_ref(model) }?;
        store(out, m.model.max_batch(), "out")
    })
}

/// Creates a session on `threads` CPU threads (0: every core, or `SPARSEC_THREADS`). Threads
/// and memory come with the first run. Free it with `sparsec_session_free`.
///
/// # Safety
/// `model` is NULL or a live handle; `out` is NULL or points to writable storage.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sparsec_session_new(
    model: *const SparsecModel,
    threads: usize,
    out: *mut *mut SparsecSession,
) -> SparsecStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let m = unsafe { model_ref(model) }?;
        if out.is_null() {
            return Err(null("out"));
        }
        let threads = (threads > 0).then_some(threads);
        let session = Box::new(SparsecSession {
            session: runtime::OwnedSession::new(Arc::clone(&m.model), threads),
        });
        // SAFETY: non-NULL, points to writable storage for one pointer (caller's contract).
        unsafe { out.write(Box::into_raw(session)) };
        Ok(())
    })
}

/// Frees a session (NULL is ignored).
///
/// # Safety
/// `session` is NULL or a pointer from `sparsec_session_new` not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sparsec_session_free(session: *mut SparsecSession) {
    // A panic while dropping leaves nothing to observe: the handle is gone either way.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if !session.is_null() {
            // SAFETY: made by `Box::into_raw` in `sparsec_session_new`, freed once.
            drop(unsafe { Box::from_raw(session) });
        }
    }));
}

/// Runs `batch` images: `input` holds `input_len = batch * C * H * W` floats (NCHW), and
/// `output` receives `batch * classes` floats (`output_len` must be at least that).
///
/// # Safety
/// `session` is NULL or a live handle used by no other thread now; `input` is NULL or points
/// to `input_len` readable floats; `output` is NULL or points to `output_len` writable floats.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sparsec_session_run(
    session: *mut SparsecSession,
    input: *const f32,
    input_len: usize,
    batch: usize,
    output: *mut f32,
    output_len: usize,
) -> SparsecStatus {
    guard(|| {
        // SAFETY: NULL or a live handle not used elsewhere now (caller's contract).
        let s = unsafe { session.as_mut() }.ok_or_else(|| null("session"))?;
        if input.is_null() {
            return Err(null("input"));
        }
        if output.is_null() {
            return Err(null("output"));
        }
        let model = Arc::clone(s.session.model());
        let classes: usize = model.output().shape.iter().map(|&d| d as usize).product();
        let needed = batch.saturating_mul(classes);
        if output_len < needed {
            return Err((
                SparsecStatus::InvalidArgument,
                format!(
                    "output holds {output_len} floats, a batch of {batch} needs {needed} ({classes} per image)"
                ),
            ));
        }
        // SAFETY: non-NULL and `input_len` readable floats (caller's contract).
        let input = unsafe { std::slice::from_raw_parts(input, input_len) };
        let result = s.session.run(input, batch).map_err(|e| {
            let status = match e {
                runtime::RunError::Kernel { .. } | runtime::RunError::Backend(_) => {
                    SparsecStatus::Run
                }
                _ => SparsecStatus::InvalidArgument,
            };
            (status, e.to_string())
        })?;
        if result.len() > output_len {
            return Err((
                SparsecStatus::Internal,
                format!(
                    "the model gave {} floats for {needed} expected",
                    result.len()
                ),
            ));
        }
        // SAFETY: non-NULL and at least `output_len` >= `result.len()` writable floats.
        let output = unsafe { std::slice::from_raw_parts_mut(output, result.len()) };
        output.copy_from_slice(result);
        Ok(())
    })
}

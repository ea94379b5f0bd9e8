//! The C ABI called from Rust: status codes and `sparsec_last_error` messages on every bad
//! argument, models freed before their sessions, and results equal to the runtime's own.

use sparsec::backend::cpu::Winograd;
use sparsec::driver::{self, CompileOptions, Target, WeightsSource};
use sparsec::kernel_select::KernelPolicy;
use sparsec_capi::*;
use std::ffi::{CStr, CString};
use std::ptr;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const TINY: &str = "model \"tiny\"\ninput [3, 8, 8]\n\
    stem { conv0 = conv(4, kernel = 3, pad = 1) }\n\
    head { norm = batch_norm()\n relu()\n global_avg_pool()\n fc = linear(5) }\n";

fn tiny_bin() -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let (graph, errors) = sparsec::compile_source("tiny", TINY);
    let graph = graph.ok_or(format!("{errors:?}"))?;
    let options = CompileOptions {
        weights: WeightsSource::Random(3),
        target: Target::Cpu(KernelPolicy::Fixed(Winograd::Off)),
        max_batch: 4,
        verify: true,
    };
    Ok(driver::compile(graph, &options)?.bytes)
}

fn last_error() -> String {
    // SAFETY: sparsec_last_error returns a valid NUL-terminated string.
    unsafe { CStr::from_ptr(sparsec_last_error()) }
        .to_string_lossy()
        .into_owned()
}

#[test]
fn runs_like_the_runtime_and_outlives_its_model() -> TestResult {
    let bytes = tiny_bin()?;
    let mut model = ptr::null_mut();
    // SAFETY: valid pointers for the duration of each call, handles freed once.
    unsafe {
        assert_eq!(
            sparsec_model_from_bytes(bytes.as_ptr(), bytes.len(), &mut model),
            SparsecStatus::Ok
        );
        let mut shape = [0usize; 3];
        let (mut classes, mut max) = (0usize, 0usize);
        assert_eq!(
            sparsec_model_input_shape(model, shape.as_mut_ptr()),
            SparsecStatus::Ok
        );
        assert_eq!(
            sparsec_model_num_classes(model, &mut classes),
            SparsecStatus::Ok
        );
        assert_eq!(sparsec_model_max_batch(model, &mut max), SparsecStatus::Ok);
        assert_eq!((shape, classes, max), ([3, 8, 8], 5, 4));

        let mut session = ptr::null_mut();
        assert_eq!(
            sparsec_session_new(model, 2, &mut session),
            SparsecStatus::Ok
        );
        sparsec_model_free(model);

        let input: Vec<f32> = (0..3 * 192).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut output = vec![0f32; 15];
        assert_eq!(
            sparsec_session_run(
                session,
                input.as_ptr(),
                input.len(),
                3,
                output.as_mut_ptr(),
                15
            ),
            SparsecStatus::Ok
        );
        sparsec_session_free(session);

        let reference = runtime::Model::from_bytes(&bytes)?;
        let expected = reference.session_with_threads(1).run(&input, 3)?.to_vec();
        assert_eq!(output, expected);
    }
    Ok(())
}

#[test]
fn every_bad_argument_is_a_status_with_a_message() -> TestResult {
    let bytes = tiny_bin()?;
    // SAFETY: every pointer passed is valid or deliberately NULL; handles freed once.
    unsafe {
        let mut model = ptr::null_mut();
        assert_eq!(
            sparsec_model_load(ptr::null(), &mut model),
            SparsecStatus::NullArgument
        );
        assert_eq!(last_error(), "`path` is NULL");

        let missing = CString::new("/nonexistent/model.bin")?;
        assert_eq!(
            sparsec_model_load(missing.as_ptr(), &mut model),
            SparsecStatus::Io
        );
        assert!(
            last_error().contains("/nonexistent/model.bin"),
            "{}",
            last_error()
        );

        let junk = b"not a model";
        assert_eq!(
            sparsec_model_from_bytes(junk.as_ptr(), junk.len(), &mut model),
            SparsecStatus::InvalidModel
        );
        assert!(!last_error().is_empty());
        assert!(model.is_null(), "a failed load must not hand out a model");

        assert_eq!(
            sparsec_model_from_bytes(bytes.as_ptr(), bytes.len(), ptr::null_mut()),
            SparsecStatus::NullArgument
        );
        assert_eq!(last_error(), "`out` is NULL");
        assert_eq!(
            sparsec_model_from_bytes(bytes.as_ptr(), bytes.len(), &mut model),
            SparsecStatus::Ok
        );
        assert_eq!(
            sparsec_model_num_classes(ptr::null(), &mut 0),
            SparsecStatus::NullArgument
        );
        assert_eq!(last_error(), "`model` is NULL");
        assert_eq!(
            sparsec_model_max_batch(model, ptr::null_mut()),
            SparsecStatus::NullArgument
        );

        let mut session = ptr::null_mut();
        assert_eq!(
            sparsec_session_new(model, 1, &mut session),
            SparsecStatus::Ok
        );
        let input = vec![0.5f32; 5 * 192];
        let mut output = vec![0f32; 25];
        assert_eq!(
            sparsec_session_run(
                session,
                input.as_ptr(),
                input.len(),
                5,
                output.as_mut_ptr(),
                25
            ),
            SparsecStatus::InvalidArgument
        );
        assert_eq!(last_error(), "batch 5 is larger than the maximum batch 4");
        assert_eq!(
            sparsec_session_run(session, input.as_ptr(), 191, 1, output.as_mut_ptr(), 5),
            SparsecStatus::InvalidArgument
        );
        assert!(last_error().contains("191"), "{}", last_error());
        assert_eq!(
            sparsec_session_run(session, input.as_ptr(), 384, 2, output.as_mut_ptr(), 9),
            SparsecStatus::InvalidArgument
        );
        assert_eq!(
            last_error(),
            "output holds 9 floats, a batch of 2 needs 10 (5 per image)"
        );
        assert_eq!(
            sparsec_session_run(session, ptr::null(), 0, 1, output.as_mut_ptr(), 5),
            SparsecStatus::NullArgument
        );
        assert_eq!(
            sparsec_session_run(
                ptr::null_mut(),
                input.as_ptr(),
                192,
                1,
                output.as_mut_ptr(),
                5
            ),
            SparsecStatus::NullArgument
        );
        assert_eq!(last_error(), "`session` is NULL");
        // Still usable after the errors.
        assert_eq!(
            sparsec_session_run(session, input.as_ptr(), 192, 1, output.as_mut_ptr(), 5),
            SparsecStatus::Ok
        );
        sparsec_session_free(session);
        sparsec_model_free(model);
        sparsec_session_free(ptr::null_mut());
        sparsec_model_free(ptr::null_mut());
    }
    Ok(())
}

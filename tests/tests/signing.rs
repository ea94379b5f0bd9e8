//! Signed model.bin through the runtime API: a file signed by a trusted key runs its native
//! code with the same bits as the data-only schedule; signed by another key, or changed after
//! signing (any byte, checksum recomputed as an attacker would), it is refused or runs
//! data-only, never native; `require_signature` makes every untrusted state a typed error. A
//! CUDA model signed by a trusted key passes the trust check (then `BackendNotBuilt` without
//! the `cuda` feature); unsigned, it is `UnsignedCode`. Keys are fixed test seeds.

use anyhow::{Result, bail};
use runtime::format::ModelFile;
use runtime::signature::{self, SignatureState, SigningKey};
use runtime::{LoadError, LoadOptions, Model};
use sparsec::artifact;
use sparsec::backend::cpu::Winograd;
use sparsec::backend::cuda::{self, nvrtc::Compiled};
use sparsec::driver::{self, WeightsSource};
use sparsec::kernel_select::KernelPolicy;
use sparsec_tests::random_input;
use std::path::PathBuf;

fn model_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/models/sparsenet-40-24.snet")
}

fn cpu_bytes() -> Result<Vec<u8>> {
    let graph = driver::load(&model_path())?;
    let policy = KernelPolicy::Fixed(Winograd::F2x2);
    let (_, bytes) = driver::compile_cpu_with(graph, &WeightsSource::Random(9), 4, true, &policy)?;
    Ok(bytes)
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn trusting(keys: &[&SigningKey]) -> LoadOptions {
    LoadOptions {
        trusted_keys: keys.iter().map(|k| k.verifying_key()).collect(),
        ..Default::default()
    }
}

fn output(model: &Model, batch: usize) -> Result<Vec<f32>> {
    let per_image: usize = model.input().shape.iter().map(|&d| d as usize).product();
    let x = random_input(per_image * batch, 11);
    Ok(model.session_with_threads(2).run(&x, batch)?.to_vec())
}

#[test]
fn signed_by_a_trusted_key_runs_native_code_with_the_same_bits() -> Result<()> {
    let unsigned = cpu_bytes()?;
    let mine = key(1);
    let signed = artifact::sign(&unsigned, &mine)?;
    // The manifest and sections are the unsigned file's.
    assert_eq!(
        ModelFile::parse(&signed)?.manifest,
        ModelFile::parse(&unsigned)?.manifest
    );

    let native = Model::from_bytes_with(&signed, &trusting(&[&key(7), &mine]))?;
    assert!(native.runs_native_code());
    assert!(native.signature().is_trusted(), "{}", native.signature());
    let data_only = Model::from_bytes(&signed)?;
    assert!(!data_only.runs_native_code());
    assert!(matches!(
        data_only.signature(),
        SignatureState::Untrusted { .. }
    ));
    let unsigned_model = Model::from_bytes(&unsigned)?;
    assert_eq!(unsigned_model.signature(), &SignatureState::Unsigned);
    for batch in [1, 3] {
        let want = output(&unsigned_model, batch)?;
        if output(&native, batch)? != want || output(&data_only, batch)? != want {
            bail!("batch {batch}: native code and the data-only schedule differ");
        }
    }
    Ok(())
}

#[test]
fn another_key_runs_data_only_or_is_refused_when_signatures_are_required() -> Result<()> {
    let signed = artifact::sign(&cpu_bytes()?, &key(2))?;
    let mut options = trusting(&[&key(3)]);
    let model = Model::from_bytes_with(&signed, &options)?;
    assert!(!model.runs_native_code());
    let fingerprint = signature::fingerprint(key(2).verifying_key().as_bytes());
    assert_eq!(
        model.signature(),
        &SignatureState::Untrusted {
            fingerprint: fingerprint.clone()
        }
    );
    options.require_signature = true;
    match Model::from_bytes_with(&signed, &options) {
        Err(LoadError::NotTrusted {
            signature: SignatureState::Untrusted { fingerprint: f },
        }) if f == fingerprint => {}
        other => bail!("expected NotTrusted, got {other:?}"),
    }
    // require_signature wins over allow_unsigned_code, for unsigned files too.
    options.allow_unsigned_code = true;
    let unsigned = cpu_bytes()?;
    match Model::from_bytes_with(&unsigned, &options) {
        Err(LoadError::NotTrusted {
            signature: SignatureState::Unsigned,
        }) => {}
        other => bail!("expected NotTrusted for an unsigned file, got {other:?}"),
    }
    // The trusted key with require_signature: native.
    let ok = Model::from_bytes_with(
        &signed,
        &LoadOptions {
            require_signature: true,
            ..trusting(&[&key(2)])
        },
    )?;
    assert!(ok.runs_native_code());
    Ok(())
}

/// Bytes all over the file (every byte of the header and the trailer, a stride through the
/// manifest and the sections), each flipped after signing with the checksum recomputed: an
/// error, or a model that does not run native code.
#[test]
fn a_byte_changed_after_signing_never_runs_native_code() -> Result<()> {
    let mine = key(4);
    let signed = artifact::sign(&cpu_bytes()?, &mine)?;
    let file = ModelFile::parse(&signed)?;
    let (data_base, len) = (file.data_base(), signed.len());
    let trailer = len - runtime::format::SIGNATURE_TRAILER_BYTES;
    let positions: Vec<usize> = (0..64)
        .chain((64..data_base).step_by(61))
        .chain((data_base..trailer).step_by(65_537))
        .chain(trailer..len)
        .collect();
    let options = trusting(&[&mine]);
    let (mut refused, mut data_only) = (0, 0);
    for &at in &positions {
        let mut bytes = signed.clone();
        bytes[at] ^= 0x01;
        reseal(&mut bytes);
        if bytes == signed {
            continue; // a checksum byte, restored by resealing
        }
        match Model::from_bytes_with(&bytes, &options) {
            Err(_) => refused += 1,
            Ok(m) if !m.runs_native_code() => data_only += 1,
            Ok(m) => bail!("byte {at} changed: native code runs ({})", m.signature()),
        }
    }
    // Both outcomes occur: the header's own checks refuse, a changed body runs data-only.
    assert!(
        refused > 0 && data_only > 0,
        "{refused} refused, {data_only} data-only"
    );
    Ok(())
}

/// Recomputes the xxh3 checksum over the sealed bytes, as an attacker can.
fn reseal(bytes: &mut [u8]) {
    let trailer = u32::from_le_bytes([bytes[40], bytes[41], bytes[42], bytes[43]]) as usize;
    let sealed = if trailer <= bytes.len() && bytes.len() - trailer >= 64 {
        bytes.len() - trailer
    } else {
        bytes.len()
    };
    let mut copy = bytes[..sealed].to_vec();
    copy[32..40].fill(0);
    let sum = xxhash_rust::xxh3::xxh3_64(&copy);
    bytes[32..40].copy_from_slice(&sum.to_le_bytes());
}

#[test]
fn cuda_models_pass_the_trust_check_only_when_signed_by_a_trusted_key() -> Result<()> {
    let graph = driver::load(&model_path())?;
    let opt = driver::optimize(graph, &WeightsSource::Random(3), 1, false)?;
    let program = cuda::generate(&opt.graph, &opt.plan, true)?;
    let compiled = Compiled {
        version: "12.9".into(),
        blobs: vec![("sm_90".into(), b"\x7fELF stand-in cubin".to_vec())],
        cache_hits: 0,
    };
    let unsigned = artifact::write_cuda(&opt.graph, &program, &compiled, 64)?;
    let mine = key(5);
    let signed = artifact::sign(&unsigned, &mine)?;
    for (what, bytes, options) in [
        ("unsigned", &unsigned, trusting(&[&mine])),
        ("signed by another key", &signed, trusting(&[&key(6)])),
    ] {
        match Model::from_bytes_with(bytes, &options) {
            Err(LoadError::UnsignedCode { .. }) => {}
            other => bail!("{what}: expected UnsignedCode, got {other:?}"),
        }
    }
    match Model::from_bytes_with(&signed, &trusting(&[&mine])) {
        #[cfg(not(feature = "gpu-tests"))]
        Err(LoadError::BackendNotBuilt {
            feature: "cuda", ..
        }) => Ok(()),
        // With the cuda feature the stand-in cubin reaches the driver (or there is none).
        #[cfg(feature = "gpu-tests")]
        Err(LoadError::Device { .. } | LoadError::Executable(_)) => Ok(()),
        other => bail!("signed and trusted: expected to pass the trust check, got {other:?}"),
    }
}

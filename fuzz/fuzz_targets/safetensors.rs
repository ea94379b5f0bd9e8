//! Fuzz target: a safetensors file: `sparsec run` input, and weights bound to a small model (`sparsec_tests::fuzz_entry::safetensors`, shared with the corpus regression test).
//!
//! Must not hold logic of its own: the entry function is the target.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sparsec_tests::fuzz_entry::safetensors(data));

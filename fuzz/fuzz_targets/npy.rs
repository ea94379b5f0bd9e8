//! Fuzz target: a `.npy` file as `sparsec run` reads it (`sparsec_tests::fuzz_entry::npy`, shared with the corpus regression test).
//!
//! Must not hold logic of its own: the entry function is the target.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sparsec_tests::fuzz_entry::npy(data));

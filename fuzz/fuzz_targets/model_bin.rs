//! Fuzz target: model.bin with its checksum recomputed: header, signature check, loader (data-only and `allow_unsigned_code`, never run), a run (`sparsec_tests::fuzz_entry::model_bin`, shared with the corpus regression test).
//!
//! Must not hold logic of its own: the entry function is the target.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sparsec_tests::fuzz_entry::model_bin(data));

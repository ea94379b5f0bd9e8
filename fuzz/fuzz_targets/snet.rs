//! Fuzz target: `.snet` source: parser, lowering, diagnostics (`sparsec_tests::fuzz_entry::snet`, shared with the corpus regression test).
//!
//! Must not hold logic of its own: the entry function is the target.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sparsec_tests::fuzz_entry::snet(data));

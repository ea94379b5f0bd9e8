//! End-to-end test helpers shared by the suites in `tests/tests/`.

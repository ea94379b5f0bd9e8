//! The sparsec runtime: loads a compiled `model.bin` and runs it. Filled by the CPU-backend issue.

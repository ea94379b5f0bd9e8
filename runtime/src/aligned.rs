//! [`AlignedBytes`]: 64-byte aligned, zero-initialised heap memory, for the weights, constants,
//! arenas and scratch the kernels read and write (aligned so that vector loads never split a
//! cache line at a buffer's start, and so that plan offsets, multiples of 64, stay aligned).
//!
//! Must not know what the bytes mean.

/// 64-byte aligned, zero-initialised bytes.
pub(crate) struct AlignedBytes {
    blocks: Vec<Block>,
    len: usize,
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Block([u8; 64]);

impl AlignedBytes {
    pub(crate) fn zeroed(len: usize) -> AlignedBytes {
        AlignedBytes {
            blocks: vec![Block([0; 64]); len.div_ceil(64).max(1)],
            len,
        }
    }

    pub(crate) fn from_slice(bytes: &[u8]) -> AlignedBytes {
        let mut a = AlignedBytes::zeroed(bytes.len());
        a.as_mut_slice()[..bytes.len()].copy_from_slice(bytes);
        a
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        let flat: &mut [[u8; 64]] =
            // SAFETY: `Block` is `repr(C)` around `[u8; 64]` (alignment only adds no padding to
            // a 64-byte array), so a slice of blocks is a slice of byte arrays.
            unsafe { std::slice::from_raw_parts_mut(self.blocks.as_mut_ptr().cast(), self.blocks.len()) };
        &mut flat.as_flattened_mut()[..self.len]
    }

    pub(crate) fn as_ptr(&self) -> *const u8 {
        self.blocks.as_ptr().cast()
    }

    pub(crate) fn as_mut_ptr(&mut self) -> *mut u8 {
        self.blocks.as_mut_ptr().cast()
    }
}

//! [`AlignedBytes`]: 64-byte aligned, zero-initialised heap memory, for the weights, constants,
//! arenas and scratch the kernels read and write (aligned so that vector loads never split a
//! cache line at a buffer's start, and so that plan offsets, multiples of 64, stay aligned).
//!
//! Large buffers (at least [`HUGE_PAGE`]) are, on Linux, anonymous mappings aligned to 2 MiB and
//! marked `MADV_HUGEPAGE` before their first touch, so that the kernel backs them with
//! transparent huge pages where it can (systems set THP to `madvise` by default). A batch-1
//! forward pass of a deep model streams megabytes of weights and arena: with 4 KiB pages that is
//! more pages than the core's second-level TLB holds, so every pass misses on most of them.
//! Elsewhere, or when the mapping fails, the bytes live in an ordinary allocation.
//!
//! Must not know what the bytes mean.

/// 64-byte aligned, zero-initialised bytes.
pub(crate) struct AlignedBytes {
    storage: Storage,
    len: usize,
}

enum Storage {
    Heap(Vec<Block>),
    /// An anonymous mapping of `len` bytes (a multiple of [`HUGE_PAGE`]) at `ptr`, owned.
    #[cfg(target_os = "linux")]
    Mapped {
        ptr: *mut u8,
        len: usize,
    },
}

// SAFETY: the mapping is owned memory like a `Vec`'s; `AlignedBytes` hands out pointers and
// slices under the same borrow rules as the heap variant.
unsafe impl Send for Storage {}
// SAFETY: as above; shared access only reads through `as_ptr`.
unsafe impl Sync for Storage {}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Block([u8; 64]);

/// The transparent huge page size on x86-64 and most aarch64 kernels; buffers from this size up
/// are mapped so that they can use such pages.
const HUGE_PAGE: usize = 2 << 20;

impl AlignedBytes {
    pub(crate) fn zeroed(len: usize) -> AlignedBytes {
        #[cfg(target_os = "linux")]
        if len >= HUGE_PAGE
            && let Some(storage) = map_huge(len)
        {
            return AlignedBytes { storage, len };
        }
        AlignedBytes {
            storage: Storage::Heap(vec![Block([0; 64]); len.div_ceil(64).max(1)]),
            len,
        }
    }

    /// Like [`AlignedBytes::zeroed`], but `None` instead of aborting the process when the
    /// memory cannot be had (sizes that come from a file go through here).
    pub(crate) fn try_zeroed(len: usize) -> Option<AlignedBytes> {
        #[cfg(target_os = "linux")]
        if len >= HUGE_PAGE
            && let Some(storage) = map_huge(len)
        {
            return Some(AlignedBytes { storage, len });
        }
        let blocks = len.div_ceil(64).max(1);
        let mut v: Vec<Block> = Vec::new();
        v.try_reserve_exact(blocks).ok()?;
        v.resize(blocks, Block([0; 64]));
        Some(AlignedBytes {
            storage: Storage::Heap(v),
            len,
        })
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
        let len = self.len;
        // SAFETY: the storage holds at least `len` bytes at this pointer (a heap vector of
        // `ceil(len / 64)` blocks, or a mapping of at least `len` bytes), owned by `self`,
        // which is borrowed mutably for the slice's life.
        unsafe { std::slice::from_raw_parts_mut(self.as_mut_ptr(), len) }
    }

    pub(crate) fn as_ptr(&self) -> *const u8 {
        match &self.storage {
            Storage::Heap(blocks) => blocks.as_ptr().cast(),
            #[cfg(target_os = "linux")]
            Storage::Mapped { ptr, .. } => *ptr,
        }
    }

    pub(crate) fn as_mut_ptr(&mut self) -> *mut u8 {
        match &mut self.storage {
            Storage::Heap(blocks) => blocks.as_mut_ptr().cast(),
            #[cfg(target_os = "linux")]
            Storage::Mapped { ptr, .. } => *ptr,
        }
    }
}

/// A zeroed anonymous mapping of at least `len` bytes, 2 MiB aligned, advised for huge pages;
/// `None` when the system refuses it (the caller falls back to the heap).
#[cfg(target_os = "linux")]
fn map_huge(len: usize) -> Option<Storage> {
    let len = len.checked_next_multiple_of(HUGE_PAGE)?;
    // Map one huge page more than needed, then unmap the unaligned head and tail.
    let span = len.checked_add(HUGE_PAGE)?;
    // SAFETY: an anonymous private mapping at an address the kernel picks touches no existing
    // memory.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            span,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return None;
    }
    let start = raw as usize;
    let head = start.next_multiple_of(HUGE_PAGE) - start;
    let tail = span - head - len;
    // SAFETY: both ranges lie inside the mapping just made and are not used by anything; a
    // failed unmap only leaves them mapped (leaked), never unsafe.
    unsafe {
        if head > 0 {
            libc::munmap(raw, head);
        }
        if tail > 0 {
            libc::munmap(raw.cast::<u8>().add(head + len).cast(), tail);
        }
    }
    let ptr = raw.cast::<u8>().wrapping_add(head);
    // SAFETY: advice on our own mapping; if the kernel ignores it (THP off) the pages are
    // ordinary ones and nothing else changes.
    unsafe { libc::madvise(ptr.cast(), len, libc::MADV_HUGEPAGE) };
    Some(Storage::Mapped { ptr, len })
}

impl Drop for AlignedBytes {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if let Storage::Mapped { ptr, len } = self.storage {
            // SAFETY: the mapping made by `map_huge`, owned by `self` and no longer used.
            unsafe { libc::munmap(ptr.cast(), len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_large_buffers_are_aligned_zeroed_and_writable() {
        for len in [
            0,
            1,
            63,
            64,
            4096,
            HUGE_PAGE - 1,
            HUGE_PAGE,
            3 * HUGE_PAGE + 5,
        ] {
            let mut a = AlignedBytes::zeroed(len);
            assert_eq!(a.len(), len);
            assert_eq!(a.as_ptr() as usize % 64, 0, "len {len}");
            assert!(a.as_mut_slice().iter().all(|&b| b == 0), "len {len}");
            a.as_mut_slice().iter_mut().for_each(|b| *b = 7);
            assert!(a.as_mut_slice().iter().all(|&b| b == 7), "len {len}");
        }
        let bytes: Vec<u8> = (0..HUGE_PAGE + 100).map(|i| (i % 251) as u8).collect();
        let mut a = AlignedBytes::from_slice(&bytes);
        assert_eq!(a.as_mut_slice(), &bytes[..]);
    }
}

//! Executable memory for generated code: copies the code into fresh pages mapped read+write,
//! then flips them to read+execute (never writable and executable at once), and unmaps them
//! on drop. The only place the runtime makes memory executable. On aarch64, whose instruction
//! and data caches are not coherent, the copied range is cleaned from the data cache and
//! invalidated in the instruction cache before it is made executable (`flush_icache`).
//!
//! Must not decide whether code may run: the loader validates the file (magic, version,
//! checksum, target, descriptors) before it asks for a mapping.

use crate::error::LoadError;

/// Pages holding a copy of generated machine code, read+execute.
pub struct ExecutableCode {
    ptr: *mut u8,
    len: usize,
}

// SAFETY (Send/Sync): the pages are immutable after construction (read+execute) and owned
// solely by this value; sharing a pointer to immutable code across threads is sound.
unsafe impl Send for ExecutableCode {}
unsafe impl Sync for ExecutableCode {}

impl ExecutableCode {
    pub fn new(code: &[u8]) -> Result<ExecutableCode, LoadError> {
        if code.is_empty() {
            return Err(LoadError::Executable("the code section is empty".into()));
        }
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .unwrap_or(4096)
            .max(4096);
        let len = code.len().div_ceil(page) * page;
        // SAFETY: an anonymous private mapping with no address hint; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(LoadError::Executable(format!(
                "mmap of {len} bytes failed: {}",
                std::io::Error::last_os_error()
            )));
        }
        let ptr = ptr.cast::<u8>();
        // SAFETY: `ptr` is a fresh writable mapping of `len >= code.len()` bytes that nothing
        // else references; the source slice cannot overlap it.
        unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), ptr, code.len()) };
        let mapped = ExecutableCode { ptr, len };
        flush_icache(ptr, code.len());
        // SAFETY: changes the protection of exactly the mapping made above.
        let rc = unsafe { libc::mprotect(ptr.cast(), len, libc::PROT_READ | libc::PROT_EXEC) };
        if rc != 0 {
            return Err(LoadError::Executable(format!(
                "mprotect to read+execute failed: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(mapped)
    }

    /// Address of `offset` within the code (the caller checked `offset < len` at load).
    pub fn at(&self, offset: usize) -> *const u8 {
        self.ptr.wrapping_add(offset)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Makes `len` freshly written bytes at `ptr` visible to instruction fetch: on aarch64, cleans
/// each data-cache line to the point of unification (`dc cvau`), then invalidates each
/// instruction-cache line (`ic ivau`), with the barriers the architecture requires (the
/// sequence of the Arm ARM, B2.4.4, and of libgcc's `__clear_cache`). The line sizes come from
/// `CTR_EL0`, which Linux lets user space read.
#[cfg(target_arch = "aarch64")]
fn flush_icache(ptr: *mut u8, len: usize) {
    let ctr: u64;
    // SAFETY: reading CTR_EL0 has no side effects; Linux traps and emulates it where needed.
    unsafe { core::arch::asm!("mrs {0}, ctr_el0", out(reg) ctr, options(nomem, nostack)) };
    let dline = 4usize << ((ctr >> 16) & 0xf);
    let iline = 4usize << (ctr & 0xf);
    let start = ptr as usize;
    let end = start + len;
    let mut addr = start & !(dline - 1);
    while addr < end {
        // SAFETY: `addr` lies in (or on the line of) the mapping just written, which is
        // readable; cleaning a cache line changes no memory contents.
        unsafe { core::arch::asm!("dc cvau, {0}", in(reg) addr, options(nostack)) };
        addr += dline;
    }
    // SAFETY: a barrier; no memory operands.
    unsafe { core::arch::asm!("dsb ish", options(nostack)) };
    let mut addr = start & !(iline - 1);
    while addr < end {
        // SAFETY: as above, for the instruction cache; invalidating changes no memory.
        unsafe { core::arch::asm!("ic ivau, {0}", in(reg) addr, options(nostack)) };
        addr += iline;
    }
    // SAFETY: barriers; no memory operands.
    unsafe { core::arch::asm!("dsb ish", "isb", options(nostack)) };
}

/// x86-64 keeps instruction fetch coherent with stores: nothing to do.
#[cfg(not(target_arch = "aarch64"))]
fn flush_icache(_ptr: *mut u8, _len: usize) {}

impl Drop for ExecutableCode {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping this value owns; no reference outlives `self`
        // (the `Model` that owns it outlives every session call).
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

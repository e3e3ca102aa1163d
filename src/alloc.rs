//! Allocator behaviour, chosen on purpose for a daemon that runs for months (issue 18).
//!
//! glibc's malloc gives every thread that meets contention its own arena (up to 8 per
//! core), and each arena keeps what it freed; its mmap threshold also rises after a large
//! block is freed, so later large bodies land in the heap and fragment it. On a gateway
//! that shows as RSS creeping up with nothing leaked. Two arenas (the async workers and
//! the database threads share them), a fixed mmap threshold (blocks over 1 MiB are mapped
//! and returned whole) and a fixed trim threshold keep the heap near what is
//! in use. Measured with `benches/soak.py`; see the README's measurement section.

/// Most malloc arenas (glibc's default is 8 × cores).
const ARENA_MAX: i32 = 2;
/// Blocks at least this large are mmap'd and unmapped on free (glibc's starts at 128 KiB
/// and grows up to 32 MiB; fixing it stops the growth). 1 MiB, the default body limit:
/// at 128 KiB every 500 KB group notification paid ~10 % of its CPU in page faults.
const MMAP_THRESHOLD: i32 = 1024 * 1024;
/// Free memory at the top of the heap beyond this is returned to the kernel.
const TRIM_THRESHOLD: i32 = 256 * 1024;

/// Call before the runtime starts its threads: arenas are assigned as threads first
/// allocate under contention.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub(crate) fn tune() {
    // SAFETY: mallopt only sets allocator parameters; it is called once, before any other
    // thread exists, with documented parameter values.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

/// Other C libraries (musl) have one allocator policy and no knobs.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn tune() {}

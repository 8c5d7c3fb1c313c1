//! A counting global allocator that measures the peak heap growth of one call on one thread.
//!
//! Each binary that wants the measurement installs it:
//! `#[global_allocator] static ALLOCATOR: CountingAllocator = CountingAllocator;`.
//! Without it [`measure`] reports 0 bytes, so callers check [`is_installed`] first.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Wraps the system allocator and counts live bytes per thread.
pub struct CountingAllocator;

thread_local! {
    /// Bytes allocated minus bytes freed by this thread (memory freed by another thread than the
    /// one that allocated it makes this drift, which only loosens the bound; the measured calls
    /// are single-threaded).
    static LIVE_BYTES: Cell<isize> = const { Cell::new(0) };
    /// The highest `LIVE_BYTES` since the last reset.
    static PEAK_BYTES: Cell<isize> = const { Cell::new(0) };
}

fn note_alloc(size: usize) {
    let size = isize::try_from(size).unwrap_or(isize::MAX);
    let _ = LIVE_BYTES.try_with(|live| {
        let now = live.get().saturating_add(size);
        live.set(now);
        let _ = PEAK_BYTES.try_with(|peak| {
            if now > peak.get() {
                peak.set(now);
            }
        });
    });
}

fn note_free(size: usize) {
    let size = isize::try_from(size).unwrap_or(isize::MAX);
    let _ = LIVE_BYTES.try_with(|live| live.set(live.get().saturating_sub(size)));
}

// SAFETY: every call is forwarded unchanged to the system allocator; the bookkeeping touches only
// const-initialized thread-locals without destructors, which never allocate.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            note_alloc(layout.size());
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let pointer = unsafe { System.alloc_zeroed(layout) };
        if !pointer.is_null() {
            note_alloc(layout.size());
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: the pointer came from `alloc` with this layout.
        unsafe { System.dealloc(pointer, layout) };
        note_free(layout.size());
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's pointer, layout and size.
        let moved = unsafe { System.realloc(pointer, layout, new_size) };
        if !moved.is_null() {
            // The old and the new block coexist while the data is copied.
            note_alloc(new_size);
            note_free(layout.size());
        }
        moved
    }
}

/// Runs `f` and returns its result with the peak heap growth, in bytes, seen on this thread
/// while it ran (0 when the counting allocator is not installed).
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let start_bytes = LIVE_BYTES.with(Cell::get);
    PEAK_BYTES.with(|peak| peak.set(start_bytes));
    let result = f();
    let peak_bytes = PEAK_BYTES.with(Cell::get);
    (
        result,
        usize::try_from(peak_bytes.saturating_sub(start_bytes)).unwrap_or(0),
    )
}

/// Whether this binary counts allocations (its global allocator is [`CountingAllocator`]).
pub fn is_installed() -> bool {
    let (boxed, grown_bytes) = measure(|| std::hint::black_box(vec![0u8; 4096]));
    drop(boxed);
    grown_bytes >= 4096
}

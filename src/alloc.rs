//! A counting global allocator: the CPU's measured peak heap, set beside the planned peak.
//! The `pdenet` binary installs it; elsewhere the counters stay at zero.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting live bytes and their high-water mark.
pub struct CountingAlloc;

fn grow(n: usize) {
    let live = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grow(new_size);
        }
        p
    }
}

/// Bytes allocated and not yet freed (0 unless [`CountingAlloc`] is installed).
pub fn heap_live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// The high-water mark since the last [`reset_heap_peak`].
pub fn heap_peak() -> usize {
    PEAK.load(Ordering::Relaxed)
}

/// Restarts the high-water mark at the bytes live now.
pub fn reset_heap_peak() {
    PEAK.store(heap_live(), Ordering::Relaxed);
}

/// Whether the counting allocator is installed in this process.
pub fn counting() -> bool {
    let before = heap_live();
    let v = std::hint::black_box(vec![0u8; 4096]);
    let counted = heap_live() >= before + 4096;
    drop(v);
    counted
}

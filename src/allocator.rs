//! The process's allocator: mimalloc, asked for plain blocks when the
//! alignment is one a plain block has anyway.
//!
//! The `mimalloc` crate passes every allocation to `mi_malloc_aligned`.
//! In mimalloc v3 that call's fast path covers only blocks up to 1 KiB;
//! a larger one whose size class is not a power of two is over-allocated
//! by its alignment and marked as holding an interior pointer, even for
//! the 8 bytes every Rust `String` or `Vec` asks for (v2 skipped this for
//! any alignment up to 16). A drain's futures, intents and rendered texts
//! are such blocks: ~9,000 of herald's ~102,000 instructions per event
//! went to `mi_malloc_aligned` (BENCHMARKS.md, ninth part).
//!
//! mimalloc's plain `mi_malloc` returns blocks aligned to 16 bytes from
//! 16 bytes up, and to 8 below; a Rust layout's size is a multiple of its
//! alignment, so any alignment up to 16 that is no larger than the size is
//! met by a plain block, as the standard library's `System` allocator
//! reasons for `malloc`. Larger alignments (tokio's 128-byte task cells)
//! still go to the aligned calls.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment every plain mimalloc block of at least that size has
/// (`MI_MAX_ALIGN_SIZE`).
const PLAIN_ALIGN: usize = 16;

/// mimalloc, with plain calls where they give the alignment asked for.
pub struct Allocator;

fn plain(layout: &Layout) -> bool {
    layout.align() <= PLAIN_ALIGN && layout.align() <= layout.size()
}

// SAFETY: every call is mimalloc's own; a block is freed by `mi_free`
// whichever call made it, and the plain calls are used only for layouts
// whose alignment a plain block is guaranteed to have.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain(&layout) {
            unsafe { mi::mi_malloc(layout.size()) as *mut u8 }
        } else {
            unsafe { mi::mi_malloc_aligned(layout.size(), layout.align()) as *mut u8 }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain(&layout) {
            unsafe { mi::mi_zalloc(layout.size()) as *mut u8 }
        } else {
            unsafe { mi::mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8 }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        unsafe { mi::mi_free(ptr as *mut c_void) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= PLAIN_ALIGN && layout.align() <= new_size {
            unsafe { mi::mi_realloc(ptr as *mut c_void, new_size) as *mut u8 }
        } else {
            unsafe {
                mi::mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every block has the alignment its layout asks for, across the size
    /// classes on both sides of mimalloc's 1 KiB small-block bound, and a
    /// grown block keeps its bytes and its alignment.
    #[test]
    fn every_block_has_its_layouts_alignment() {
        let sizes = [1, 8, 16, 24, 40, 48, 56, 80, 1024, 1040, 1280, 3000, 70_000];
        for align in [1usize, 2, 4, 8, 16, 32, 128, 4096] {
            for &size in &sizes {
                let size = size.max(align).next_multiple_of(align);
                let layout = Layout::from_size_align(size, align).unwrap();
                unsafe {
                    let p = Allocator.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    p.write_bytes(0xA5, size);
                    let grown = Allocator.realloc(p, layout, size * 2 + 8);
                    assert_eq!(grown as usize % align, 0, "grown {size} align {align}");
                    assert!((0..size).all(|i| *grown.add(i) == 0xA5));
                    Allocator.dealloc(grown, Layout::from_size_align(size * 2 + 8, align).unwrap());
                    let z = Allocator.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    Allocator.dealloc(z, layout);
                }
            }
        }
    }
}

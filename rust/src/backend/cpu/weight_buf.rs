//! Storage of CPU weight matrices. Large matrices live in 2 MiB-aligned allocations advised
//! as transparent huge pages before they are written: a decode step streams every weight once,
//! and with 4 KiB pages the TLB misses of that stream cost about a fifth of the step
//! (measured with every allocation on huge pages: 22.6 → 27.5 tok/s on SmolLM2-135M, see
//! NOTES.md). Small matrices stay in a `Vec`.

use std::alloc::{alloc, dealloc, Layout};
use std::ops::Deref;
use std::ptr::NonNull;

/// Size and alignment of a transparent huge page on x86-64 and aarch64 (4 KiB base pages).
const HUGE_PAGE: usize = 2 << 20;

/// Buffers from this size on are huge-page backed, rounded up to whole huge pages (so at most
/// half of such a buffer's footprint is padding). Smaller ones would pad more than they gain.
const MIN_HUGE_BYTES: usize = HUGE_PAGE;

/// An immutable buffer of `T` (f32 weights, or the bytes of quantized blocks), huge-page
/// backed when it is at least [`MIN_HUGE_BYTES`].
pub struct WeightBuf<T: Copy = f32> {
    storage: Storage<T>,
}

enum Storage<T> {
    Small(Vec<T>),
    /// `ptr` points to `len` initialized values at the start of an allocation of `layout`.
    Huge {
        ptr: NonNull<T>,
        len: usize,
        layout: Layout,
    },
}

// SAFETY: the buffer is never mutated after construction and owns its allocation of plain
// `Copy` values that are themselves `Send`.
unsafe impl<T: Copy + Send> Send for WeightBuf<T> {}
// SAFETY: as above; shared references only read.
unsafe impl<T: Copy + Sync> Sync for WeightBuf<T> {}

impl<T: Copy> WeightBuf<T> {
    /// Moves `data` into a huge-page-backed allocation when it is large enough (falling back
    /// to the `Vec` itself if the allocation fails).
    pub fn new(data: Vec<T>) -> Self {
        match Self::huge(&[&data]) {
            Some(storage) => WeightBuf { storage },
            None => WeightBuf {
                storage: Storage::Small(data),
            },
        }
    }

    /// `parts` concatenated, copied once, straight into a huge-page-backed allocation when
    /// the whole is large enough.
    pub fn from_slices(parts: &[&[T]]) -> Self {
        let storage = Self::huge(parts).unwrap_or_else(|| Storage::Small(parts.concat()));
        WeightBuf { storage }
    }

    /// `parts` concatenated in a new huge-page-advised allocation, or `None` when the whole
    /// is smaller than [`MIN_HUGE_BYTES`] or the allocation fails.
    fn huge(parts: &[&[T]]) -> Option<Storage<T>> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let bytes = len.checked_mul(std::mem::size_of::<T>())?;
        if bytes < MIN_HUGE_BYTES {
            return None;
        }
        let size = bytes.div_ceil(HUGE_PAGE) * HUGE_PAGE;
        let layout =
            Layout::from_size_align(size, HUGE_PAGE.max(std::mem::align_of::<T>())).ok()?;
        // SAFETY: `layout` has a non-zero size.
        let ptr = NonNull::new(unsafe { alloc(layout) } as *mut T)?;
        advise_huge_pages(ptr.as_ptr() as *mut u8, size);
        let mut at = 0;
        for p in parts {
            // SAFETY: the allocation holds `size >= len · size_of::<T>()` bytes, is aligned for
            // `T`, and `at + p.len() <= len`; it does not overlap `p`.
            unsafe { std::ptr::copy_nonoverlapping(p.as_ptr(), ptr.as_ptr().add(at), p.len()) };
            at += p.len();
        }
        Some(Storage::Huge { ptr, len, layout })
    }
}

impl<T: Copy> Deref for WeightBuf<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match &self.storage {
            Storage::Small(v) => v,
            // SAFETY: `ptr` points to `len` initialized values owned by `self`.
            Storage::Huge { ptr, len, .. } => unsafe {
                std::slice::from_raw_parts(ptr.as_ptr(), *len)
            },
        }
    }
}

impl<T: Copy> Drop for WeightBuf<T> {
    fn drop(&mut self) {
        if let Storage::Huge { ptr, layout, .. } = &self.storage {
            // SAFETY: allocated in `new` with this layout, freed once.
            unsafe { dealloc(ptr.as_ptr() as *mut u8, *layout) };
        }
    }
}

/// Asks the kernel to back `[ptr, ptr + len)` with transparent huge pages (a hint: failure
/// or a kernel with THP off only costs speed).
#[cfg(target_os = "linux")]
fn advise_huge_pages(ptr: *mut u8, len: usize) {
    // SAFETY: the range is one live allocation of `len` bytes; madvise does not touch its
    // contents.
    unsafe {
        libc::madvise(ptr as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_ptr: *mut u8, _len: usize) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_huge_buffers_keep_their_contents() {
        for n in [
            0usize,
            1,
            1000,
            MIN_HUGE_BYTES / 4 - 1,
            MIN_HUGE_BYTES / 4 + 3,
            HUGE_PAGE / 4,
            HUGE_PAGE / 4 * 3 + 7,
        ] {
            let data: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
            let buf = WeightBuf::new(data.clone());
            assert_eq!(&buf[..], &data[..], "n = {n}");
            if n * 4 >= MIN_HUGE_BYTES {
                assert_eq!(buf.as_ptr() as usize % HUGE_PAGE, 0);
            }
        }
    }

    #[test]
    fn slices_are_concatenated_in_order() {
        for n in [0usize, 5, MIN_HUGE_BYTES / 3 + 1] {
            let a: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let b: Vec<u8> = (0..2 * n + 1).map(|i| (i * 7) as u8).collect();
            let buf = WeightBuf::from_slices(&[&a, &b, &a]);
            assert_eq!(&buf[..], &[&a[..], &b[..], &a[..]].concat()[..], "n = {n}");
            if 4 * n + 1 >= MIN_HUGE_BYTES {
                assert_eq!(buf.as_ptr() as usize % HUGE_PAGE, 0);
            }
        }
    }
}

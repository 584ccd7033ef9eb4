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

/// An immutable f32 buffer, huge-page backed when it is at least [`MIN_HUGE_BYTES`].
pub struct WeightBuf {
    storage: Storage,
}

enum Storage {
    Small(Vec<f32>),
    /// `ptr` points to `len` initialized f32s at the start of an allocation of `layout`.
    Huge {
        ptr: NonNull<f32>,
        len: usize,
        layout: Layout,
    },
}

// SAFETY: the buffer is never mutated after construction and owns its allocation.
unsafe impl Send for WeightBuf {}
// SAFETY: as above; shared references only read.
unsafe impl Sync for WeightBuf {}

impl WeightBuf {
    /// Moves `data` into a huge-page-backed allocation when it is large enough (falling back
    /// to the `Vec` itself if the allocation fails).
    pub fn new(data: Vec<f32>) -> Self {
        let bytes = data.len() * std::mem::size_of::<f32>();
        if bytes < MIN_HUGE_BYTES {
            return WeightBuf {
                storage: Storage::Small(data),
            };
        }
        let size = bytes.div_ceil(HUGE_PAGE) * HUGE_PAGE;
        let Ok(layout) = Layout::from_size_align(size, HUGE_PAGE) else {
            return WeightBuf {
                storage: Storage::Small(data),
            };
        };
        // SAFETY: `layout` has a non-zero size.
        let raw = unsafe { alloc(layout) } as *mut f32;
        let Some(ptr) = NonNull::new(raw) else {
            return WeightBuf {
                storage: Storage::Small(data),
            };
        };
        advise_huge_pages(ptr.as_ptr() as *mut u8, size);
        // SAFETY: the allocation holds `size >= bytes` bytes, is aligned for f32 and does not
        // overlap `data`.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), ptr.as_ptr(), data.len()) };
        WeightBuf {
            storage: Storage::Huge {
                ptr,
                len: data.len(),
                layout,
            },
        }
    }
}

impl Deref for WeightBuf {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match &self.storage {
            Storage::Small(v) => v,
            // SAFETY: `ptr` points to `len` initialized f32s owned by `self`.
            Storage::Huge { ptr, len, .. } => unsafe {
                std::slice::from_raw_parts(ptr.as_ptr(), *len)
            },
        }
    }
}

impl Drop for WeightBuf {
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
}

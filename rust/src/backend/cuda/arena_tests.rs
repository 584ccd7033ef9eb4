//! The arena's hole bookkeeping alone (no device).

/// The hole bookkeeping alone (no device): first fit, coalescing, the top coming down.
fn holes_after(frees: &[(usize, usize)], top: usize) -> (Vec<(usize, usize)>, usize) {
    let mut holes: Vec<(usize, usize)> = Vec::new();
    let mut top = top;
    for &(offset, bytes) in frees {
        super::free_into(&mut holes, &mut top, offset, bytes);
    }
    (holes, top)
}

#[test]
fn freed_ranges_coalesce_and_lower_the_top() {
    // Four blocks of 256 at 0, 256, 512, 768; top 1024.
    let (holes, top) = holes_after(&[(256, 256), (0, 256)], 1024);
    assert_eq!((holes, top), (vec![(0, 512)], 1024));
    let (holes, top) = holes_after(&[(256, 256), (768, 256)], 1024);
    assert_eq!((holes, top), (vec![(256, 256)], 768));
    let (holes, top) = holes_after(&[(256, 256), (768, 256), (512, 256), (0, 256)], 1024);
    assert_eq!((holes, top), (vec![], 0));
}

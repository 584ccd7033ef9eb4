//! The arena's address bookkeeping alone (no device).

use super::Space;

/// The holes and the top after `frees`, from everything below `top` in use.
fn holes_after(frees: &[(usize, usize)], top: usize) -> (Vec<(usize, usize)>, usize) {
    let mut space = Space {
        top,
        holes: Vec::new(),
    };
    for &(offset, bytes) in frees {
        space.free(offset, bytes);
    }
    (space.holes, space.top)
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

#[test]
fn allocations_take_the_first_hole_that_holds_them() {
    let mut space = Space {
        top: 1024,
        holes: vec![(0, 128), (256, 512)],
    };
    assert_eq!(space.take_hole(256), Some(256));
    assert_eq!(space.holes, vec![(0, 128), (512, 256)]);
    assert_eq!(space.take_hole(128), Some(0));
    assert_eq!(space.take_hole(512), None);
    assert_eq!(space.take_hole(256), Some(512));
    assert_eq!((space.holes, space.top), (vec![], 1024));
}

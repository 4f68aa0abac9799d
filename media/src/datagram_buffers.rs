//! A per-thread free list of datagram buffers: the direct send path takes one per packet per viewer, the
//! core's send loop gives them back once the kernel has copied them.
//!
//! Why: at fan-out rates a `malloc` + `free` per datagram showed as ~3 % of the server's CPU. Each core is
//! one thread (glommio), so a thread-local list needs no locking and never crosses cores; a buffer given
//! back on another thread simply joins that thread's list.

use std::cell::RefCell;

/// Buffers kept per thread (beyond that they are freed): a few bursts of a busy core.
const MAX_KEPT: usize = 4096;
/// Larger buffers are not kept (an occasional big datagram shouldn't pin its memory).
const MAX_CAPACITY: usize = 4096;

thread_local! {
    static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer of at least `capacity` bytes.
pub fn take(capacity: usize) -> Vec<u8> {
    let reused = FREE.with(|f| f.borrow_mut().pop());
    match reused {
        Some(mut b) => {
            b.reserve(capacity);
            b
        }
        None => Vec::with_capacity(capacity.max(1500)),
    }
}

/// Returns a buffer for reuse.
pub fn give(mut buf: Vec<u8>) {
    if buf.capacity() == 0 || buf.capacity() > MAX_CAPACITY {
        return;
    }
    buf.clear();
    FREE.with(|f| {
        let mut f = f.borrow_mut();
        if f.len() < MAX_KEPT {
            f.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_cleared_and_bounded() {
        let mut b = take(100);
        b.extend_from_slice(b"datagram");
        let ptr = b.as_ptr();
        give(b);
        let again = take(100);
        assert_eq!((again.as_ptr(), again.len()), (ptr, 0), "the same allocation, empty");
        assert!(again.capacity() >= 100);
        give(Vec::with_capacity(MAX_CAPACITY + 1));
        give(Vec::new());
        assert!(FREE.with(|f| f.borrow().is_empty()), "oversized and empty buffers are not kept");
        for _ in 0..MAX_KEPT + 10 {
            give(Vec::with_capacity(64));
        }
        assert_eq!(FREE.with(|f| f.borrow().len()), MAX_KEPT);
        assert!(take(1000).capacity() >= 1000, "a kept buffer grows to what is asked");
    }
}

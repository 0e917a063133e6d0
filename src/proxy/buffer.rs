//! Fixed-size I/O buffers and the loop's pool of them. A session holds a buffer only while it
//! has bytes in flight; an idle keep-alive connection holds none.

use std::io::{self, Read};
use std::time::{Duration, Instant};

/// Size of a pooled buffer: one TCP read or write worth of data, as in HAProxy and sozu.
pub const BUF_SIZE: usize = 16 * 1024;

/// A byte buffer with a read cursor: `data[start..end]` holds the pending bytes.
pub struct Buf {
    mem: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Buf {
    fn with_mem(mem: Box<[u8]>) -> Buf {
        Buf {
            mem,
            start: 0,
            end: 0,
        }
    }

    /// Pending bytes.
    pub fn data(&self) -> &[u8] {
        &self.mem[self.start..self.end]
    }

    /// Number of pending bytes.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Total capacity.
    pub fn capacity(&self) -> usize {
        self.mem.len()
    }

    /// Room left for appending (after compacting).
    pub fn room(&self) -> usize {
        self.mem.len() - self.len()
    }

    /// Marks `n` pending bytes as consumed.
    pub fn consume(&mut self, n: usize) {
        self.start += n.min(self.len());
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Drops every pending byte.
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.mem.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// Appends as much of `bytes` as fits; returns how many were taken.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        if self.mem.len() - self.end < bytes.len() {
            self.compact();
        }
        let n = bytes.len().min(self.mem.len() - self.end);
        self.mem[self.end..self.end + n].copy_from_slice(&bytes[..n]);
        self.end += n;
        n
    }

    /// Grows the capacity to at least `cap` (for request heads larger than one buffer).
    pub fn grow(&mut self, cap: usize) {
        if cap <= self.mem.len() {
            return;
        }
        let mut mem = vec![0u8; cap].into_boxed_slice();
        mem[..self.len()].copy_from_slice(self.data());
        self.end = self.len();
        self.start = 0;
        self.mem = mem;
    }

    /// Appends all of `bytes`, growing past one buffer when needed (large heads).
    pub fn push_all(&mut self, bytes: &[u8]) {
        if self.room() < bytes.len() {
            self.grow(self.len() + bytes.len());
        }
        self.push(bytes);
    }

    /// One `read` into the free space: (bytes read, bytes asked for). `Ok((0, _))` = end of
    /// stream (or no room: check `room()` first).
    pub fn read_from(&mut self, r: &mut impl Read) -> io::Result<(usize, usize)> {
        if self.end == self.mem.len() {
            self.compact();
        }
        let asked = self.mem.len() - self.end;
        let n = r.read(&mut self.mem[self.end..])?;
        self.end += n;
        Ok((n, asked))
    }
}

/// How often `trim` looks at the pool's traffic (a trim window): a burst's spares are freed
/// a quarter to half a second after it ends, so RSS settles soon after a burst.
pub const TRIM_EVERY: Duration = Duration::from_millis(250);
/// Spares kept through a quiet window: enough for a trickle (health checks, a few clients)
/// without touching the allocator.
const QUIET_SPARES: usize = 4;

/// Spare values kept for reuse (buffers, request records), bounded so a burst does not pin
/// memory: the spares a burst leaves are freed after the first quiet window (`trim`).
pub struct Spares<T> {
    free: Vec<T>,
    max_free: usize,
    /// Spares kept through a quiet window, which is one with at most this many taken.
    quiet: usize,
    /// Values taken since the last trim window began.
    taken: usize,
    /// The current window saw more traffic than the quiet spares cover.
    busy: bool,
    /// Start of the next trim window.
    next_trim: Option<Instant>,
}

impl<T> Spares<T> {
    /// At most `max_free` spares, `quiet` of them kept through a quiet window.
    pub fn new(max_free: usize, quiet: usize) -> Spares<T> {
        Spares {
            free: Vec::new(),
            max_free,
            quiet,
            taken: 0,
            busy: false,
            next_trim: None,
        }
    }

    /// A spare, if one is kept (counted as taken either way).
    pub fn take(&mut self) -> Option<T> {
        self.taken += 1;
        self.free.pop()
    }

    /// Keeps `value` for reuse, unless the spares are full (then it is dropped).
    pub fn give(&mut self, value: T) {
        if self.free.len() < self.max_free {
            self.free.push(value);
        }
    }

    /// Spares held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.free.len()
    }

    /// Whether none is held.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.free.is_empty()
    }

    /// Whether more spares are held than a quiet window keeps (the loop then wakes up to
    /// trim them).
    pub fn has_excess(&self) -> bool {
        self.free.len() > self.quiet
    }

    /// Called from the loop's periodic tick (cheap when called more often): once a window
    /// with little traffic follows a busy one, drops the spares beyond the quiet count.
    /// Returns whether it dropped any.
    pub fn trim(&mut self, now: Instant) -> bool {
        let due = *self.next_trim.get_or_insert(now + TRIM_EVERY);
        if now < due {
            return false;
        }
        self.next_trim = Some(now + TRIM_EVERY);
        let quiet = self.taken <= self.quiet;
        self.taken = 0;
        if !quiet {
            self.busy = true;
            return false;
        }
        let had_burst = std::mem::take(&mut self.busy);
        if !had_burst && self.free.len() <= self.quiet {
            return false;
        }
        self.free.truncate(self.quiet);
        self.free.shrink_to_fit();
        true
    }
}

/// Free buffers kept for reuse ([`Spares`]).
pub struct BufPool {
    spares: Spares<Box<[u8]>>,
}

impl BufPool {
    /// A pool keeping at most `max_free` spare buffers.
    pub fn new(max_free: usize) -> BufPool {
        BufPool {
            spares: Spares::new(max_free, QUIET_SPARES),
        }
    }

    /// An empty buffer of [`BUF_SIZE`].
    pub fn get(&mut self) -> Buf {
        let mem = self
            .spares
            .take()
            .unwrap_or_else(|| vec![0u8; BUF_SIZE].into_boxed_slice());
        Buf::with_mem(mem)
    }

    /// Returns a buffer; oversized ones (grown heads) are freed instead of kept.
    pub fn put(&mut self, buf: Buf) {
        if buf.mem.len() == BUF_SIZE {
            self.spares.give(buf.mem);
        }
    }

    /// Returns the buffer in `slot`, if any.
    pub fn put_opt(&mut self, slot: &mut Option<Buf>) {
        if let Some(b) = slot.take() {
            self.put(b);
        }
    }

    /// Returns the buffer in `slot` if it holds no pending byte.
    pub fn put_if_empty(&mut self, slot: &mut Option<Buf>) {
        if slot.as_ref().is_some_and(|b| b.is_empty()) {
            self.put_opt(slot);
        }
    }

    /// [`Spares::has_excess`].
    pub fn has_excess(&self) -> bool {
        self.spares.has_excess()
    }

    /// [`Spares::trim`]: whether it dropped spares (then the loop calls
    /// [`release_free_pages`], once every spare list is trimmed).
    pub fn trim(&mut self, now: Instant) -> bool {
        self.spares.trim(now)
    }
}

/// Hands the allocator's free pages back to the kernel. glibc keeps freed 16 KiB blocks (below
/// its mmap threshold) in the heap, resident, until asked: without this, RSS after a burst
/// would stay at its peak. Call it after every spare list was trimmed: what is freed after
/// it stays resident until the next call.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release_free_pages() {
    // SAFETY: malloc_trim only walks the allocator's own free lists; the loop is the only
    // thread of an LB child, and the allocator is thread-safe anyway.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// Other allocators (musl's mallocng) unmap freed pages themselves.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_pages() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_consume_compact() {
        let mut pool = BufPool::new(4);
        let mut b = pool.get();
        assert_eq!(b.push(&[1u8; 100]), 100);
        b.consume(60);
        assert_eq!(b.data(), &[1u8; 40][..]);
        let big = vec![2u8; BUF_SIZE];
        // Compaction makes room for everything but the 40 pending bytes.
        assert_eq!(b.push(&big), BUF_SIZE - 40);
        assert_eq!(b.len(), BUF_SIZE);
        assert_eq!(b.room(), 0);
        b.consume(BUF_SIZE);
        assert!(b.is_empty());
        pool.put(b);
        assert_eq!(pool.spares.len(), 1);
    }

    #[test]
    fn grown_buffers_are_not_pooled() {
        let mut pool = BufPool::new(4);
        let mut b = pool.get();
        b.push(b"abc");
        b.grow(BUF_SIZE * 2);
        assert_eq!(b.data(), b"abc");
        pool.put(b);
        assert!(pool.spares.is_empty());
    }

    #[test]
    fn spares_are_trimmed_after_a_quiet_window_only() {
        let mut pool = BufPool::new(64);
        let t0 = Instant::now();
        assert!(!pool.trim(t0), "the first call only starts the window");
        let burst: Vec<Buf> = (0..40).map(|_| pool.get()).collect();
        burst.into_iter().for_each(|b| pool.put(b));
        assert_eq!(pool.spares.len(), 40);
        assert!(!pool.trim(t0 + TRIM_EVERY / 2), "not due yet");
        assert!(
            !pool.trim(t0 + TRIM_EVERY),
            "a busy window keeps its spares"
        );
        assert_eq!(pool.spares.len(), 40);
        let b = pool.get();
        pool.put(b);
        assert!(
            pool.trim(t0 + TRIM_EVERY * 2),
            "a quiet window after the burst"
        );
        assert_eq!(pool.spares.len(), QUIET_SPARES);
        assert!(!pool.trim(t0 + TRIM_EVERY * 3), "nothing left to trim");
        assert_eq!(pool.spares.len(), QUIET_SPARES);
    }
}

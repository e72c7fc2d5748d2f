//! Spreading connections over a generation's workers.
//!
//! All workers accept on the same inherited socket, and the kernel wakes every
//! one of them for each new connection; whichever calls `accept` first wins.
//! Under a burst (a client opening 32 keep-alive connections at once) one
//! worker often takes nearly all of them and its siblings idle, which caps the
//! generation at one core. SO_REUSEPORT groups would spread by hash, but a
//! group's sockets cannot be handed from one generation to the next without
//! dropping queued connections when the worker count changes.
//!
//! Instead the master gives each generation a small shared memory board (a
//! memfd): one open-connection counter per worker slot. Before accepting, a
//! worker that holds more connections than its least loaded sibling (plus a
//! little slack) waits a millisecond, at most [`MAX_DEFER`] times, so that the
//! sibling takes the connection. The bound keeps a stuck or dead sibling from
//! ever stopping this worker from accepting. A worker without siblings keeps
//! its count on a private board of one slot, so there is one counter either way.

use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::mman::{mmap, mmap_anonymous, munmap, MapFlags, ProtFlags};

use river_ipc::BALANCE_SLOT_BYTES as SLOT_BYTES;

/// How many more connections than the least loaded sibling a worker may hold
/// before it defers to that sibling.
const SLACK: u64 = 1;
/// How many times, one tick apart, a worker defers one accept at most.
pub const MAX_DEFER: u32 = 2;
const ONE_SLOT: NonZeroUsize = match NonZeroUsize::new(SLOT_BYTES) {
    Some(bytes) => bytes,
    None => panic!("a slot has bytes"),
};
/// One deferral tick.
pub const DEFER_TICK: Duration = Duration::from_millis(1);

#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    #[error("the balance board has {bytes} bytes, too small for worker {index} of {workers}")]
    TooSmall {
        bytes: u64,
        index: usize,
        workers: usize,
    },
    #[error("mapping the balance board: {0}")]
    Map(#[from] nix::Error),
}

/// This worker's view of its generation's board.
pub struct Board {
    counters: NonNull<AtomicU64>,
    workers: usize,
    me: usize,
}

// SAFETY: the mapping lives as long as `Board` and is only accessed through
// atomics, which are safe to share between threads and processes.
unsafe impl Send for Board {}
unsafe impl Sync for Board {}

impl Board {
    /// Map `fd`, a board for `workers` slots, as worker `index`, and zero this
    /// worker's slot (a predecessor in the same slot may have died holding some).
    pub fn map(fd: OwnedFd, workers: usize, index: usize) -> Result<Board, BoardError> {
        let bytes = u64::try_from(nix::sys::stat::fstat(&fd)?.st_size).unwrap_or(0);
        let length = workers
            .checked_mul(SLOT_BYTES)
            .and_then(NonZeroUsize::new)
            .filter(|length| index < workers && length.get() as u64 <= bytes)
            .ok_or(BoardError::TooSmall {
                bytes,
                index,
                workers,
            })?;
        // SAFETY: a fresh shared mapping of a file at least `length` long; no
        // Rust reference to its memory exists outside this type.
        let base = unsafe {
            mmap(
                None,
                length,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd.as_fd(),
                0,
            )?
        };
        Ok(Board::at(base, workers, index))
    }

    /// A board of one slot that no other process sees: the connection count of
    /// a worker without siblings, or whose board could not be mapped.
    pub fn alone() -> Result<Board, BoardError> {
        // SAFETY: a fresh private anonymous mapping, owned by the returned Board.
        let base = unsafe {
            mmap_anonymous(
                None,
                ONE_SLOT,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE,
            )?
        };
        Ok(Board::at(base, 1, 0))
    }

    fn at(base: NonNull<std::ffi::c_void>, workers: usize, me: usize) -> Board {
        let board = Board {
            counters: base.cast(),
            workers,
            me,
        };
        board.slot(me).store(0, Ordering::Release);
        board
    }

    fn slot(&self, index: usize) -> &AtomicU64 {
        debug_assert!(index < self.workers);
        // SAFETY: index < workers, and the mapping holds workers slots of
        // SLOT_BYTES each, page-aligned, so every slot is aligned for u64.
        unsafe {
            &*self
                .counters
                .as_ptr()
                .byte_add(index * SLOT_BYTES)
                .cast_const()
        }
    }

    /// This worker's open connections.
    pub fn open_connections(&self) -> u64 {
        self.slot(self.me).load(Ordering::Acquire)
    }

    pub fn opened(&self) {
        self.slot(self.me).fetch_add(1, Ordering::AcqRel);
    }

    pub fn closed(&self) {
        // Never below zero, whatever a predecessor left behind.
        let _ = self
            .slot(self.me)
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Whether a sibling holds fewer connections than this worker, by more than the slack.
    pub fn should_defer(&self) -> bool {
        let mine = self.slot(self.me).load(Ordering::Acquire);
        (0..self.workers)
            .filter(|&i| i != self.me)
            .map(|i| self.slot(i).load(Ordering::Acquire))
            .min()
            .is_some_and(|least| mine > least + SLACK)
    }
}

impl Drop for Board {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, of this length, unmapped once.
        unsafe {
            let _ = munmap(self.counters.cast(), self.workers * SLOT_BYTES);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use river_ipc::balance_board;

    #[test]
    fn a_worker_defers_only_to_a_less_loaded_sibling() {
        let fd = balance_board(3).unwrap();
        let a = Board::map(fd.try_clone().unwrap(), 3, 0).unwrap();
        let b = Board::map(fd.try_clone().unwrap(), 3, 1).unwrap();
        let c = Board::map(fd, 3, 2).unwrap();
        assert!(!a.should_defer());
        a.opened();
        assert!(!a.should_defer(), "within the slack of 1");
        a.opened();
        assert!(a.should_defer(), "2 against 0");
        b.opened();
        b.opened();
        assert!(a.should_defer(), "c still has 0");
        c.opened();
        assert!(!a.should_defer(), "2 against 1");
        assert!(!b.should_defer() && !c.should_defer());
        a.closed();
        a.closed();
        a.closed(); // one more than opened: stays at zero
        assert!(b.should_defer(), "2 against a's 0");
    }

    #[test]
    fn a_replacement_starts_its_slot_at_zero() {
        let fd = balance_board(2).unwrap();
        let dead = Board::map(fd.try_clone().unwrap(), 2, 1).unwrap();
        for _ in 0..5 {
            dead.opened();
        }
        let other = Board::map(fd.try_clone().unwrap(), 2, 0).unwrap();
        other.opened();
        other.opened();
        assert!(!other.should_defer());
        let _replacement = Board::map(fd, 2, 1).unwrap();
        assert!(other.should_defer(), "the replacement's slot was reset");
    }

    #[test]
    fn a_board_alone_counts_and_never_defers() {
        let board = Board::alone().unwrap();
        for _ in 0..5 {
            board.opened();
        }
        board.closed();
        assert_eq!(board.open_connections(), 4);
        assert!(!board.should_defer());
    }

    #[test]
    fn a_board_too_small_for_the_slot_is_refused() {
        let fd = balance_board(2).unwrap();
        assert!(matches!(
            Board::map(fd.try_clone().unwrap(), 3, 2),
            Err(BoardError::TooSmall { .. })
        ));
        assert!(matches!(
            Board::map(fd, 2, 2),
            Err(BoardError::TooSmall { .. })
        ));
    }
}

//! The one wake-up a connection waiting for a request head holds: its head
//! deadline and the worker's call to close (or hand over) idle connections
//! share a single `Notified`.
//!
//! Why not a `Sleep` per connection: a connection spends its life idle, and
//! its future is as large as the largest state it waits in. A tokio `Sleep`
//! is 112 bytes; with it, the idle wait pushed every connection's future
//! into the next allocator size class (issue 10: an idle keep-alive
//! connection must cost at most 2 × nginx). Here the deadlines are coarse
//! instead: time is cut into [`SLOT`]s, one `Notify` per slot on a ring, and
//! one ticking task per service wakes the slot whose time came. A deadline
//! fires between its instant and one slot later; config timeouts are whole
//! seconds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The resolution of head deadlines.
pub const SLOT: Duration = Duration::from_millis(250);
/// Slots on the ring: a deadline further away than this many slots wakes
/// its connection once per turn of the ring, which re-checks and waits on.
const RING: usize = 256;
const SLOT_NANOS: u64 = SLOT.as_nanos() as u64;

/// The wake-ups of one service's connections waiting for a request head.
pub struct Alarm {
    slots: Box<[Notify]>,
    /// Slot 0 starts here.
    epoch: Instant,
    /// A ticking task runs (it clears this when it ends, even when its
    /// runtime drops it).
    ticking: AtomicBool,
}

impl Alarm {
    pub fn new() -> Arc<Self> {
        Arc::new(Alarm {
            slots: (0..RING).map(|_| Notify::new()).collect(),
            epoch: Instant::now(),
            ticking: AtomicBool::new(false),
        })
    }

    /// What to wait on until `deadline`, or until [`wake_all`](Self::wake_all).
    /// It may also wake early (a turn of the ring): check the deadline, and
    /// wait again. Start the ticking first ([`ensure_ticking`](Self::ensure_ticking)).
    ///
    /// Created before the caller checks its state: a wake-up from then on
    /// is not lost.
    pub fn until(&self, deadline: Instant) -> Notified<'_> {
        self.slots[self.slot_of(deadline) % RING].notified()
    }

    /// Wake every waiting connection (to close, or to be handed over).
    pub fn wake_all(&self) {
        for slot in self.slots.iter() {
            slot.notify_waiters();
        }
    }

    /// Start the ticking task on the current runtime unless one runs.
    pub fn ensure_ticking(self: &Arc<Self>) {
        if self.ticking.load(Ordering::Acquire) || self.ticking.swap(true, Ordering::AcqRel) {
            return;
        }
        tokio::spawn(tick(TickingGuard(Arc::downgrade(self))));
    }

    /// The first slot that starts at or after `at`: it is woken no earlier
    /// than `at`.
    fn slot_of(&self, at: Instant) -> usize {
        self.nanos_since_epoch(at).div_ceil(SLOT_NANOS) as usize
    }

    /// The last slot whose start has passed at `now`.
    fn slot_passed(&self, now: Instant) -> usize {
        (self.nanos_since_epoch(now) / SLOT_NANOS) as usize
    }

    /// In u64 (584 years), so that `slot_of`, once per head read, divides
    /// by a constant the compiler turns into a multiplication, where u128
    /// nanoseconds would call a division routine.
    fn nanos_since_epoch(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(since).unwrap_or(u64::MAX)
    }
}

/// Clears `ticking` when the ticking task ends or its runtime drops it, so
/// that the next connection starts another. Holds no strong reference: the
/// task must not keep the service's alarm alive.
struct TickingGuard(Weak<Alarm>);

impl Drop for TickingGuard {
    fn drop(&mut self) {
        if let Some(alarm) = self.0.upgrade() {
            alarm.ticking.store(false, Ordering::Release);
        }
    }
}

/// Wake each slot once its start has passed, catching up on slots a busy
/// runtime made it miss. Ends when the service's `Alarm` is gone.
async fn tick(guard: TickingGuard) {
    let Some((epoch, mut fired)) = guard
        .0
        .upgrade()
        .map(|alarm| (alarm.epoch, alarm.slot_passed(Instant::now())))
    else {
        return;
    };
    loop {
        let next = SLOT.saturating_mul(u32::try_from(fired + 1).unwrap_or(u32::MAX));
        tokio::time::sleep_until(epoch + next).await;
        let Some(alarm) = guard.0.upgrade() else {
            return;
        };
        let now = alarm.slot_passed(Instant::now());
        // After a stall longer than the ring, every slot once.
        let from = (fired + 1).max(now.saturating_sub(RING - 1));
        for slot in from..=now {
            alarm.slots[slot % RING].notify_waiters();
        }
        fired = now.max(fired);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits as a connection does: until the deadline has passed.
    async fn wait_for(alarm: &Alarm, deadline: Instant) -> u32 {
        let mut wakeups = 0;
        loop {
            let woken = alarm.until(deadline);
            if Instant::now() >= deadline {
                return wakeups;
            }
            woken.await;
            wakeups += 1;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_fires_after_it_passes_and_within_a_slot() {
        let alarm = Alarm::new();
        alarm.ensure_ticking();
        for wait in [1, 7_300, 60_000, 61_001] {
            let start = Instant::now();
            let deadline = start + Duration::from_millis(wait);
            let wakeups = wait_for(&alarm, deadline).await;
            let late = Instant::now() - deadline;
            assert!(late <= SLOT, "{wait} ms: {late:?} late");
            // Within one turn of the ring: woken once, at the deadline.
            assert_eq!(wakeups, 1, "{wait} ms");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_beyond_the_ring_wakes_once_per_turn() {
        let alarm = Alarm::new();
        alarm.ensure_ticking();
        let turn = SLOT * RING as u32;
        let deadline = Instant::now() + turn * 3 + Duration::from_millis(10);
        let wakeups = wait_for(&alarm, deadline).await;
        assert!(Instant::now() - deadline <= SLOT);
        assert_eq!(wakeups, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn wake_all_reaches_every_waiter_and_nothing_is_lost_before_the_poll() {
        let alarm = Alarm::new();
        alarm.ensure_ticking();
        let far = Instant::now() + Duration::from_secs(30);
        let near = Instant::now() + Duration::from_secs(1);
        let waiters: Vec<_> = [far, near]
            .into_iter()
            .map(|deadline| {
                let alarm = alarm.clone();
                tokio::spawn(async move { alarm.until(deadline).await })
            })
            .collect();
        tokio::task::yield_now().await;
        // Created, not yet polled: still reached.
        let unpolled = alarm.until(far);
        alarm.wake_all();
        for waiter in waiters {
            tokio::time::timeout(Duration::from_millis(1), waiter)
                .await
                .expect("woken at once")
                .unwrap();
        }
        tokio::time::timeout(Duration::from_millis(1), unpolled)
            .await
            .expect("woken at once");
    }

    #[test]
    fn a_dropped_ticker_is_replaced_and_a_dropped_alarm_ends_its_ticker() {
        let alarm = Alarm::new();
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap()
        };
        let first = runtime();
        first.block_on(async { alarm.ensure_ticking() });
        assert!(alarm.ticking.load(Ordering::Acquire));
        // Its runtime gone, the task is dropped: the next connection starts
        // another, instead of waiting forever.
        drop(first);
        assert!(!alarm.ticking.load(Ordering::Acquire));
        let second = runtime();
        second.block_on(async {
            alarm.ensure_ticking();
            let deadline = Instant::now() + Duration::from_secs(2);
            wait_for(&alarm, deadline).await;
        });
        // The service goes: its ticker ends at its next tick.
        let weak = Arc::downgrade(&alarm);
        drop(alarm);
        second.block_on(async { tokio::time::sleep(SLOT * 2).await });
        assert!(weak.upgrade().is_none());
        assert_eq!(second.metrics().num_alive_tasks(), 0);
    }
}

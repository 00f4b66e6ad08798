//! A queue whose one consumer sleeps without spinning or yielding.
//!
//! Why: a blocking `crossbeam_channel::Receiver::recv` on an empty channel backs off
//! before it parks: about 127 spins, then `sched_yield` four times (and again inside its
//! wait). On a machine where a whole cluster shares two cores, every yield hands the
//! core to another thread and costs a context switch; the hand-off threads of a node go
//! idle once per batch, so `perf` counted ~25,000 `sched_yield` per 300,000 writes
//! across the apply and peer-send threads of a three-node cluster. A thread that runs
//! out of work here parks at once ([`std::thread::park`], a futex on Linux) and the
//! producer unparks it only if it is asleep.
//!
//! [`ringing`] pairs a bounded crossbeam channel (order, bounds and disconnection stay
//! crossbeam's) with a [`Doorbell`]: [`RingingSender::try_send`] rings after each
//! message, [`BellReceiver::recv`] sleeps on the bell when the channel is empty.

use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};

/// Wakes one consumer thread that sleeps on it.
#[derive(Default)]
pub struct Doorbell {
    /// The thread that sleeps on the bell, set the first time it sleeps.
    /// Invariant: only that one thread ever calls [`Doorbell::sleep_unless`].
    consumer: OnceLock<Thread>,
    /// True from just before the consumer checks for work until it is woken or gives
    /// up: a ring that finds it true clears it and unparks the consumer.
    sleeping: AtomicBool,
}

impl Doorbell {
    /// Wakes the consumer if it sleeps (or is about to); cheap when it is awake: one
    /// atomic swap, no system call. Call it after making the work visible.
    pub fn ring(&self) {
        // Orders the producer's publication of work before its look at `sleeping`;
        // pairs with the fence in `sleep_unless` (a Dekker-style handshake: either the
        // consumer sees the work or the producer sees it asleep).
        fence(Ordering::SeqCst);
        if self.sleeping.swap(false, Ordering::SeqCst) {
            if let Some(consumer) = self.consumer.get() {
                consumer.unpark();
            }
        }
    }

    /// Parks the calling thread until [`Doorbell::ring`], unless `has_work()` is already
    /// true. May return without work (a ring for work already taken, a spurious wake-up):
    /// callers check again in a loop.
    pub fn sleep_unless(&self, has_work: impl Fn() -> bool) {
        let me = self.consumer.get_or_init(std::thread::current);
        debug_assert_eq!(
            me.id(),
            std::thread::current().id(),
            "one consumer per bell"
        );
        self.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if has_work() {
            self.sleeping.store(false, Ordering::SeqCst);
            return;
        }
        // A ring clears `sleeping` before it unparks; an unpark left over from an
        // earlier ring makes `park` return at once, and the loop parks again.
        while self.sleeping.load(Ordering::SeqCst) {
            std::thread::park();
        }
    }
}

/// A bounded channel whose receiver sleeps on a [`Doorbell`] (module docs).
pub fn ringing<T>(capacity: usize) -> (RingingSender<T>, BellReceiver<T>) {
    let (sender, receiver) = crossbeam_channel::bounded(capacity);
    let shared = Arc::new(Shared {
        bell: Doorbell::default(),
        senders: AtomicUsize::new(1),
    });
    (
        RingingSender {
            sender: Some(sender),
            shared: Arc::clone(&shared),
        },
        BellReceiver { receiver, shared },
    )
}

/// What both sides of [`ringing`] share.
struct Shared {
    bell: Doorbell,
    /// Live [`RingingSender`]s. Invariant: decremented only after the sender's channel
    /// handle is dropped, so at 0 the channel reports disconnection.
    senders: AtomicUsize,
}

/// The sending side of [`ringing`]: never blocks. Dropping it wakes the receiver, which
/// then sees the channel disconnected once every sender is gone.
pub struct RingingSender<T> {
    /// Invariant: `Some` until dropped (taken in `drop` so that the channel is
    /// disconnected before the last ring).
    sender: Option<Sender<T>>,
    shared: Arc<Shared>,
}

impl<T> RingingSender<T> {
    /// Queues `message` and wakes the receiver, or gives it back if the queue is full
    /// or the receiver is gone.
    pub fn try_send(&self, message: T) -> Result<(), TrySendError<T>> {
        let Some(sender) = &self.sender else {
            return Err(TrySendError::Disconnected(message));
        };
        sender.try_send(message)?;
        self.shared.bell.ring();
        Ok(())
    }

    /// Messages queued and not yet received.
    pub fn len(&self) -> usize {
        self.sender.as_ref().map_or(0, Sender::len)
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> Clone for RingingSender<T> {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::SeqCst);
        RingingSender {
            sender: self.sender.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> Drop for RingingSender<T> {
    fn drop(&mut self) {
        drop(self.sender.take());
        if self.shared.senders.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.shared.bell.ring();
        }
    }
}

/// The receiving side of [`ringing`]; one thread receives.
pub struct BellReceiver<T> {
    receiver: Receiver<T>,
    shared: Arc<Shared>,
}

impl<T> BellReceiver<T> {
    /// The next message if one is queued (`Disconnected` once every sender is gone and
    /// the queue is empty).
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        self.receiver.try_recv()
    }

    /// Every message queued now, without sleeping.
    pub fn try_iter(&self) -> crossbeam_channel::TryIter<'_, T> {
        self.receiver.try_iter()
    }

    /// The next message, sleeping while there is none; `None` once every sender is
    /// gone and the queue is empty.
    pub fn recv(&self) -> Option<T> {
        loop {
            match self.receiver.try_recv() {
                Ok(message) => return Some(message),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => self.shared.bell.sleep_unless(|| {
                    // Work, or a disconnection to report.
                    !self.receiver.is_empty() || self.shared.senders.load(Ordering::SeqCst) == 0
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// Waits (generously) for a thread to finish; a lost wake-up would hang it.
    fn join_within<T>(thread: std::thread::JoinHandle<T>, what: &str) -> T {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !thread.is_finished() {
            assert!(
                Instant::now() < deadline,
                "{what}: the receiver was never woken"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        thread.join().expect("receiver thread")
    }

    #[test]
    fn a_receiver_that_sleeps_between_bursts_is_woken_for_each_and_keeps_the_order() {
        let (sender, receiver) = ringing::<u64>(8);
        let received = Arc::new(AtomicUsize::new(0));
        let consumer = {
            let received = Arc::clone(&received);
            std::thread::spawn(move || {
                let mut got = Vec::new();
                while let Some(message) = receiver.recv() {
                    got.push(message);
                    received.store(got.len(), Ordering::SeqCst);
                }
                got
            })
        };
        let mut next = 0u64;
        for burst in 0..2_000u64 {
            for _ in 0..=(burst % 8) {
                sender
                    .try_send(next)
                    .expect("the receiver drained the last burst");
                next += 1;
            }
            // Nothing else will ring: the receiver must have been woken by this burst.
            let deadline = Instant::now() + Duration::from_secs(60);
            while received.load(Ordering::SeqCst) < next as usize {
                assert!(
                    Instant::now() < deadline,
                    "burst {burst} never reached the receiver"
                );
                if burst % 64 == 0 {
                    std::thread::sleep(Duration::from_micros(200)); // let it park
                } else {
                    std::thread::yield_now();
                }
            }
        }
        drop(sender);
        let got = join_within(consumer, "burst");
        assert_eq!(got, (0..next).collect::<Vec<_>>());
    }

    #[test]
    fn dropping_the_last_sender_wakes_a_sleeping_receiver() {
        let (sender, receiver) = ringing::<u8>(4);
        let second = sender.clone();
        let consumer = std::thread::spawn(move || receiver.recv());
        std::thread::sleep(Duration::from_millis(20));
        drop(sender);
        std::thread::sleep(Duration::from_millis(20));
        assert!(!consumer.is_finished(), "one sender is still alive");
        drop(second);
        assert_eq!(join_within(consumer, "disconnect"), None);
    }

    #[test]
    fn a_full_queue_hands_the_message_back_and_a_gone_receiver_disconnects() {
        let (sender, receiver) = ringing::<u8>(1);
        sender.try_send(1).expect("room for one");
        assert!(matches!(sender.try_send(2), Err(TrySendError::Full(2))));
        assert_eq!(sender.len(), 1);
        drop(receiver);
        assert!(matches!(
            sender.try_send(3),
            Err(TrySendError::Disconnected(3))
        ));
    }
}

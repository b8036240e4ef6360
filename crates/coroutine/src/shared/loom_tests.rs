//! Model check of the doorbell protocol (`mproc_ipc::Doorbell`'s module docs) with loom: a
//! coroutine waiting as [`AsyncShared::until`](super::AsyncShared::until) does, and another
//! thread (or process) changing the state and ringing as a queue's `put` or an `Event`'s
//! `set` does. A lost wake leaves the waiter asleep with no one to wake it, which loom reports
//! as a deadlock.
//!
//! The model mirrors the orderings of `Doorbell::listen` (the count's increment, then a
//! `SeqCst` fence) and `Doorbell::ring` (a `SeqCst` fence, then the count's load), with the
//! state changed and read with the weakest orderings the protocol allows (`Release` and
//! `Acquire`): the fences carry the argument. (loom takes `SeqCst` *accesses* for `AcqRel`,
//! and so could not check the argument if it rested on them; it checks `SeqCst` fences.) The
//! eventfd and the reactor are modelled by a counter under a mutex (the kernel's lock on the
//! eventfd) and a condvar: a ring adds one and wakes; a wait notes the count (interest) and
//! sleeps until it moves.
//!
//! Run by `cargo xtask test` with the task cell's loom tests.

use loom::sync::atomic::{AtomicU32, Ordering, fence};
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;

/// A shared primitive: its state, its listener count, its doorbell.
#[derive(Default)]
struct Primitive {
    state: AtomicU32,
    listeners: AtomicU32,
    events: Mutex<u64>,
    rung: Condvar,
}

impl Primitive {
    /// The waker: change the state, then ring (`Doorbell::ring`).
    fn change_and_ring(&self, fences: bool) {
        self.state.store(1, Ordering::Release);
        if fences {
            fence(Ordering::SeqCst);
        }
        if self.listeners.load(Ordering::Relaxed) != 0 {
            *self.events.lock().unwrap() += 1;
            self.rung.notify_all();
        }
    }

    /// The waiter: a first look, then count itself in (`Doorbell::listen`), and loop: note the
    /// event count, check, sleep until a new event.
    fn wait(&self, fences: bool) {
        if self.state.load(Ordering::Acquire) != 0 {
            return;
        }
        self.listeners.fetch_add(1, Ordering::Relaxed);
        if fences {
            fence(Ordering::SeqCst);
        }
        loop {
            let noted = *self.events.lock().unwrap();
            if self.state.load(Ordering::Acquire) != 0 {
                break;
            }
            let mut events = self.events.lock().unwrap();
            while *events == noted {
                events = self.rung.wait(events).unwrap();
            }
        }
        self.listeners.fetch_sub(1, Ordering::Relaxed);
    }
}

fn check(fences: bool) {
    loom::model(move || {
        let primitive = Arc::new(Primitive::default());
        let waker = {
            let primitive = primitive.clone();
            thread::spawn(move || primitive.change_and_ring(fences))
        };
        primitive.wait(fences);
        waker.join().unwrap();
    });
}

/// Every interleaving and every value the memory model lets each load read: the waiter always
/// ends.
#[test]
fn the_doorbell_loses_no_wake() {
    check(true);
}

/// The model can fail: without the two fences, a waiter's check can miss the change while the
/// waker's load misses the waiter (store buffering), and loom finds the waiter asleep for
/// ever.
#[test]
fn without_the_fences_a_wake_is_lost() {
    let found = std::panic::catch_unwind(|| check(false));
    assert!(found.is_err(), "loom found no lost wake without the fences");
}

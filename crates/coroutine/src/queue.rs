//! Queues awaited instead of blocked on: `get`, `put` and their timed forms for an
//! [`AsyncShared`] queue.

use std::time::Duration;

use mproc_pool::ipc::{self, JoinableQueue, Queue};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::shared::AsyncShared;

/// The async `get`/`put` of an [`AsyncShared`] queue ([`Queue`] or [`JoinableQueue`]).
///
/// Each is the queue's non-blocking `try_get`/`try_put` retried after every ring of the
/// queue's doorbell (a put rings it, and so does a get of a bounded queue, while coroutines
/// listen). The thread never sleeps outside the reactor: an attempt takes the queue's lock
/// only for a copy and a commit, as a thread's `get` does.
macro_rules! async_queue {
    ($queue:ident) => {
        impl<T: Serialize + DeserializeOwned> AsyncShared<$queue<T>> {
            /// Takes the first item, waiting (as a coroutine) for one as long as it takes.
            ///
            /// Cancellation-safe: the item is taken in the poll that returns it, so dropping
            /// the future (or a [`timeout`](crate::timeout) around it) takes nothing.
            pub async fn get(&self) -> ipc::Result<T> {
                self.until(|queue| queue.try_get().transpose()).await
            }

            /// Takes the first item, waiting at most `timeout`: [`Error::Timeout`](ipc::Error::Timeout)
            /// if none came.
            pub async fn get_timeout(&self, timeout: Duration) -> ipc::Result<T> {
                match crate::time::timeout(timeout, self.get()).await {
                    Ok(got) => got,
                    Err(_) => self.get_ref().try_get()?.ok_or(ipc::Error::Timeout),
                }
            }

            /// Puts `value` at the end, waiting (as a coroutine) while the queue is full.
            /// When it returns `Ok`, the item is in the queue's shared memory.
            ///
            /// Cancellation-safe: an attempt that does not put returns nothing, so dropping
            /// the future while it waits puts nothing.
            pub async fn put(&self, value: &T) -> ipc::Result<()> {
                self.until(|queue| match queue.try_put(value) {
                    Ok(true) => Some(Ok(())),
                    Ok(false) => None,
                    Err(e) => Some(Err(e)),
                })
                .await
            }

            /// Puts `value`, waiting at most `timeout` for room: [`Error::Timeout`](ipc::Error::Timeout)
            /// if the queue stayed full (nothing put).
            pub async fn put_timeout(&self, value: &T, timeout: Duration) -> ipc::Result<()> {
                match crate::time::timeout(timeout, self.put(value)).await {
                    Ok(put) => put,
                    Err(_) if self.get_ref().try_put(value)? => Ok(()),
                    Err(_) => Err(ipc::Error::Timeout),
                }
            }
        }
    };
}

async_queue!(Queue);
async_queue!(JoinableQueue);

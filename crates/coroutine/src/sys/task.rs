//! Tasks: one allocation each, holding a header, the future, then its output.
//!
//! A task belongs to one executor, which lives in one thread. Its state has two parts:
//!
//! - what only that thread touches (`Cell`s: queued, running, woken while running, done, the
//!   handle's presence, the awaiter's waker), so the executor's own wakes, runs and yields
//!   cost no atomic operation;
//! - what any thread may touch: the reference count (wakers are `Send + Sync` and may be
//!   cloned, woken and dropped anywhere) and the "woken from another thread" flag. A wake from
//!   another thread takes a reference, puts the task in the executor's remote queue (under its
//!   lock) and wakes the executor; the executor's thread moves it to its run queue.
//!
//! References: the executor holds one while the task is unfinished (its run queue and task
//! list hold no references of their own, so queueing is free), the [`JoinHandle`] one, each
//! waker one, each remote-queue entry one. The last one out frees the cell. By then the future
//! and the output are gone (dropped in the executor's thread): freeing from another thread
//! touches only the header.
//!
//! This module is the bottom of the executor: it holds the task cell, the queues a task is
//! put in (the run queue, [`Tasks`], and the remote queue, [`Remote`]) and the thread-local
//! that says which executor's tasks run in this thread ([`Running`]); the executor drives
//! them. Its cross-thread protocol (reference counts, remote wakes racing runs, cancellation,
//! the executor's drop and sleep) is model-checked by the loom tests in `loom_tests.rs`: the
//! atomics, cells and mutex here come from [`crate::sync`], loom's in that build.
#![allow(unsafe_code)]

use std::alloc::Layout;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::ptr::NonNull;
use std::rc::Rc;
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};

use crate::reactor;
use crate::sync::{Arc, AtomicBool, AtomicUsize, Cell, Mutex, Ordering, UnsafeCell, fence};

/// In the run queue.
const QUEUED: u8 = 1;
/// Being polled.
const RUNNING: u8 = 2;
/// Woken while being polled: runs again.
const WOKEN: u8 = 4;
/// The future is gone (finished, panicked or cancelled); the output may wait in the cell.
const DONE: u8 = 8;
/// A [`JoinHandle`] exists (not detached).
const HANDLE: u8 = 16;
/// The executor's reference is still held.
const EXEC_REF: u8 = 32;
/// The handle was dropped while the task ran: drop the future when the poll returns.
const CANCELLED: u8 = 64;

/// The most references: past this, something leaks wakers in a loop; abort as `Arc` does.
const MAX_REFS: usize = isize::MAX as usize;

pub(crate) struct Header {
    refs: AtomicUsize,
    /// Sitting in the executor's remote queue (woken from another thread).
    remote_woken: AtomicBool,
    /// The executor this task belongs to: where wakes from other threads go.
    remote: Arc<Remote>,
    vtable: &'static TaskVTable,
    // Executor thread only:
    flags: Cell<u8>,
    /// Where this task is in the executor's list of unfinished tasks.
    live_index: Cell<usize>,
    /// Who awaits the output.
    awaiter: Cell<Option<Waker>>,
}

// SAFETY: other threads reach a header only through wakers and remote-queue entries, and touch
// only `refs`, `remote_woken`, `remote` and `vtable` (atomics, an `Arc` of a `Sync` type, a
// static), or, holding the last reference, the whole header (nobody else can then). The
// `Cell`s are used only by the executor's thread, which every other path checks for (the
// executor, its `JoinHandle`s and `TaskRef`s are `!Send`).
unsafe impl Sync for Header {}
// SAFETY: as above: what may move to another thread is a reference-counted pointer to it.
unsafe impl Send for Header {}

/// What differs with the future's type.
///
/// # Safety
///
/// Each function takes the header of a live task made by [`spawn`] for the future type the
/// vtable was made for, and is called in that task's executor thread while the task is not
/// being polled (except `dealloc`, called once, by whoever gives up the last reference).
struct TaskVTable {
    /// Polls the future: `true` once it is done (finished or panicked; the output stored, or
    /// dropped if no handle wants it).
    ///
    /// # Safety
    ///
    /// See [`TaskVTable`].
    poll: unsafe fn(NonNull<Header>, &mut Context<'_>) -> bool,
    /// Drops the future (a cancelled task).
    ///
    /// # Safety
    ///
    /// See [`TaskVTable`].
    drop_future: unsafe fn(NonNull<Header>),
    /// Drops the output if one waits in the cell.
    ///
    /// # Safety
    ///
    /// See [`TaskVTable`].
    drop_output: unsafe fn(NonNull<Header>),
    /// Moves the output (if one waits) into the `Option<Result<Output, String>>` at the pointer.
    ///
    /// # Safety
    ///
    /// See [`TaskVTable`].
    take_output: unsafe fn(NonNull<Header>, *mut ()),
    /// Frees the cell.
    ///
    /// # Safety
    ///
    /// See [`TaskVTable`].
    dealloc: unsafe fn(NonNull<Header>),
}

/// What a cell holds after its header.
enum Stage<F: Future> {
    Running(F),
    /// The output, or the panic message.
    Finished(Result<F::Output, String>),
    Empty,
}

/// The one allocation of a task.
#[repr(C)]
struct RawTask<F: Future> {
    header: Header,
    stage: UnsafeCell<Stage<F>>,
}

impl<F: Future> RawTask<F> {
    const VTABLE: TaskVTable = TaskVTable {
        poll: Self::poll,
        drop_future: Self::drop_future,
        drop_output: Self::drop_output,
        take_output: Self::take_output,
        dealloc: Self::dealloc,
    };

    /// Runs `f` on the stage of the task at `ptr`.
    ///
    /// # Safety
    /// `ptr` is the header of a live `RawTask<F>`, in its executor's thread, and nothing else
    /// uses its stage meanwhile (`f` neither).
    unsafe fn with_stage<R>(ptr: NonNull<Header>, f: impl FnOnce(&mut Stage<F>) -> R) -> R {
        // SAFETY: the header is the first field of a `repr(C)` `RawTask<F>`, so the cast gives
        // the live cell.
        let cell = unsafe { &*ptr.cast::<RawTask<F>>().as_ptr() };
        // SAFETY: only the executor's thread touches the stage, one use at a time (the caller's
        // promise), so this is the only reference to it.
        cell.stage.with_mut(|stage| f(unsafe { &mut *stage }))
    }

    /// # Safety
    ///
    /// As for [`TaskVTable`]: a live `RawTask<F>`, on its executor's thread, not being polled.
    unsafe fn poll(ptr: NonNull<Header>, cx: &mut Context<'_>) -> bool {
        // SAFETY: the header of a live task (the caller's promise).
        let header = unsafe { ptr.as_ref() };
        let poll_stage = |stage: &mut Stage<F>| {
            let Stage::Running(future) = stage else { return true };
            // SAFETY: the future lives in the cell, which never moves, until it is dropped in
            // place.
            let future = unsafe { Pin::new_unchecked(future) };
            let finished = match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
                Ok(Poll::Pending) => return false,
                Ok(Poll::Ready(output)) => Ok(output),
                Err(payload) => Err(mproc_pool::process::panic_message(&*payload)),
            };
            // The future goes first (a panic in its drop is caught: the output still counts).
            let _ = catch_unwind(AssertUnwindSafe(|| *stage = Stage::Empty));
            if header.flags.get() & HANDLE != 0 {
                *stage = Stage::Finished(finished);
            } else {
                let _ = catch_unwind(AssertUnwindSafe(move || drop(finished)));
            }
            true
        };
        // SAFETY: called by `run` on the executor's thread, on a live task; nothing in the poll
        // touches this task's stage (a task dropping its own handle only sets a flag).
        unsafe { Self::with_stage(ptr, poll_stage) }
    }

    /// # Safety
    ///
    /// As for [`TaskVTable`]: a live `RawTask<F>`, on its executor's thread, not being polled.
    unsafe fn drop_future(ptr: NonNull<Header>) {
        // SAFETY: called on the executor's thread, on a live task not being polled.
        unsafe {
            Self::with_stage(ptr, |stage| {
                if matches!(stage, Stage::Running(_)) {
                    let _ = catch_unwind(AssertUnwindSafe(|| *stage = Stage::Empty));
                }
            })
        }
    }

    /// # Safety
    ///
    /// As for [`TaskVTable`]: a live `RawTask<F>`, on its executor's thread, not being polled.
    unsafe fn drop_output(ptr: NonNull<Header>) {
        // SAFETY: called on the executor's thread, on a live task not being polled.
        unsafe {
            Self::with_stage(ptr, |stage| {
                if matches!(stage, Stage::Finished(_)) {
                    let _ = catch_unwind(AssertUnwindSafe(|| *stage = Stage::Empty));
                }
            })
        }
    }

    /// # Safety
    ///
    /// As for [`TaskVTable`], and `out` points at an `Option<Result<F::Output, String>>`.
    unsafe fn take_output(ptr: NonNull<Header>, out: *mut ()) {
        // SAFETY: called on the executor's thread, on a live task not being polled.
        let stage = unsafe { Self::with_stage(ptr, |stage| std::mem::replace(stage, Stage::Empty)) };
        if let Stage::Finished(output) = stage {
            // SAFETY: the caller passes an `Option<Result<F::Output, String>>` (see
            // `take_output` below, called with the handle's `T`, which is `F::Output`).
            unsafe { *out.cast::<Option<Result<F::Output, String>>>() = Some(output) };
        }
    }

    /// # Safety
    ///
    /// `ptr` is a `RawTask<F>` whose last reference was just given up.
    unsafe fn dealloc(ptr: NonNull<Header>) {
        let raw = ptr.cast::<RawTask<F>>().as_ptr();
        // SAFETY: the last reference is gone, so nothing else reaches the cell, which `spawn`
        // made with `RawTask<F>`'s layout.
        let cell = unsafe { &*raw };
        debug_assert!(cell.header.flags.get() & DONE != 0, "a task freed before it was done");
        cell.stage.with_mut(|stage| {
            // SAFETY: the last reference is ours: nothing else uses the stage.
            let stage = unsafe { &mut *stage };
            if !matches!(stage, Stage::Empty) {
                // Never so by the rules above; if it were, this may be the wrong thread to
                // drop a future or an output in: leak it rather.
                std::mem::forget(std::mem::replace(stage, Stage::Empty));
            }
        });
        let layout = Layout::new::<RawTask<F>>();
        let free = |tasks: Option<&Tasks>| {
            // SAFETY: nothing else reaches the cell (the last reference is gone) and it is
            // dropped once: its stage is empty, so this drops the header's parts (its
            // reference to the executor's remote side, a waker left by an awaiter).
            unsafe { std::ptr::drop_in_place(raw) };
            let cell = NonNull::new(raw.cast::<u8>()).expect("a task cell is never null");
            if !tasks.is_some_and(|tasks| tasks.keep_cell(layout, cell)) {
                // SAFETY: allocated with this layout by `spawn`, and no longer used.
                unsafe { std::alloc::dealloc(cell.as_ptr(), layout) };
            }
        };
        // In the executor's thread while it runs (nearly always), the memory is kept for its
        // next task; elsewhere it goes back to the allocator. `cell` is not used past here.
        if running_here(&cell.header.remote, |tasks| free(Some(tasks))).is_none() {
            free(None);
        }
    }
}

/// A task in its executor's thread: what the run queue and the task list hold (no reference
/// of their own: the executor's reference covers them).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct TaskRef(NonNull<Header>);

impl TaskRef {
    fn header(&self) -> &Header {
        // SAFETY: a `TaskRef` is only used while a reference keeps the cell alive: the
        // executor's (run queue, task list, handles), or a remote entry's (`take_remote`).
        unsafe { self.0.as_ref() }
    }
}

/// A reference-holding pointer to a task, sent to its executor's remote queue from another
/// thread.
pub(crate) struct RemoteRef(NonNull<Header>);

// SAFETY: it holds a reference of its own, and other threads only drop it (see `Header`).
unsafe impl Send for RemoteRef {}

impl Drop for RemoteRef {
    fn drop(&mut self) {
        // SAFETY: this entry's own reference.
        unsafe { drop_ref(self.0) }
    }
}

/// An executor's tasks, in its thread: the run queue, the list of unfinished tasks, and the
/// executor's remote side, where their wakes from other threads go.
pub(crate) struct Tasks {
    queue: RefCell<VecDeque<TaskRef>>,
    live: RefCell<Vec<TaskRef>>,
    remote: Arc<Remote>,
    /// The memory of finished tasks, kept for the next ones.
    free: RefCell<FreeCells>,
}

/// The most bytes of finished tasks' cells an executor keeps for its next tasks.
const KEEP_BYTES: usize = 256 << 10;
/// The most cell layouts (sizes of futures) it keeps cells of.
const KEEP_LAYOUTS: usize = 8;

/// Cells of finished tasks, by layout, each list threaded through the cells themselves (a
/// kept cell's first word points at the next): keeping and reusing one allocates nothing.
/// At most [`KEEP_BYTES`] in all; freed with the executor's [`Tasks`].
#[derive(Default)]
struct FreeCells {
    lists: Vec<(Layout, Option<NonNull<u8>>)>,
    bytes: usize,
}

impl FreeCells {
    fn take(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        let (_, head) = self.lists.iter_mut().find(|(kept, _)| *kept == layout)?;
        let cell = (*head)?;
        // SAFETY: a kept cell (`keep`), its first word the next one's address.
        *head = unsafe { cell.cast::<Option<NonNull<u8>>>().read() };
        self.bytes -= layout.size();
        Some(cell)
    }

    /// Keeps `cell`, unused memory of `layout` from the global allocator, unless that would
    /// pass the bounds (then the caller frees it): whether it was kept.
    fn keep(&mut self, layout: Layout, cell: NonNull<u8>) -> bool {
        if self.bytes + layout.size() > KEEP_BYTES {
            return false;
        }
        let index = match self.lists.iter().position(|(kept, _)| *kept == layout) {
            Some(index) => index,
            None if self.lists.len() < KEEP_LAYOUTS => {
                self.lists.push((layout, None));
                self.lists.len() - 1
            }
            None => return false,
        };
        let head = &mut self.lists[index].1;
        // SAFETY: the cell is unused memory of a task's layout: a header first, so room for
        // a pointer at its start, aligned for one.
        unsafe { cell.cast::<Option<NonNull<u8>>>().write(*head) };
        *head = Some(cell);
        self.bytes += layout.size();
        true
    }
}

impl Drop for FreeCells {
    fn drop(&mut self) {
        for (layout, mut next) in self.lists.drain(..) {
            while let Some(cell) = next {
                // SAFETY: a kept cell: its first word is the next one's address; it came from
                // the global allocator with `layout` and nothing else uses it.
                unsafe {
                    next = cell.cast::<Option<NonNull<u8>>>().read();
                    std::alloc::dealloc(cell.as_ptr(), layout);
                }
            }
        }
    }
}

impl Tasks {
    /// No tasks yet; wakes from other threads go to `remote`.
    pub(crate) fn new(remote: Arc<Remote>) -> Tasks {
        Tasks { queue: RefCell::default(), live: RefCell::default(), remote, free: RefCell::default() }
    }

    /// Memory for a new task's cell: a kept one, or the global allocator's.
    fn new_cell(&self, layout: Layout) -> NonNull<u8> {
        if let Some(cell) = self.free.borrow_mut().take(layout) {
            return cell;
        }
        // SAFETY: a task's layout is never zero-sized (its header).
        let cell = unsafe { std::alloc::alloc(layout) };
        NonNull::new(cell).unwrap_or_else(|| std::alloc::handle_alloc_error(layout))
    }

    /// Keeps the memory of a finished task's cell for the next task (see [`FreeCells::keep`]).
    fn keep_cell(&self, layout: Layout, cell: NonNull<u8>) -> bool {
        self.free.try_borrow_mut().is_ok_and(|mut free| free.keep(layout, cell))
    }

    /// Where wakes from other threads go.
    pub(crate) fn remote(&self) -> &Arc<Remote> {
        &self.remote
    }

    /// The next task to run.
    pub(crate) fn pop(&self) -> Option<TaskRef> {
        self.queue.borrow_mut().pop_front()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.borrow().is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.queue.borrow().len()
    }

    /// Queues the task if it is neither queued, running (then it runs again) nor done.
    fn wake(&self, task: TaskRef) {
        let header = task.header();
        let flags = header.flags.get();
        if flags & DONE != 0 {
            return;
        }
        if flags & RUNNING != 0 {
            header.flags.set(flags | WOKEN);
        } else if flags & QUEUED == 0 {
            header.flags.set(flags | QUEUED);
            self.queue.borrow_mut().push_back(task);
        }
    }

    /// Moves the tasks woken from other threads since the last call to the run queue.
    #[inline]
    pub(crate) fn take_remote_wakes(&self) {
        // Once per turn of the executor's loop: a load when nothing came, the rest out of line.
        if self.remote.queued.load(Ordering::Relaxed) {
            self.take_remote_queue();
        }
    }

    #[cold]
    fn take_remote_queue(&self) {
        if self.remote.queued.swap(false, Ordering::SeqCst) {
            let woken = std::mem::take(&mut self.remote.queue.lock().woken);
            for task in woken {
                self.take_remote(task);
            }
        }
    }

    /// Takes a task woken from another thread (out of the remote queue).
    fn take_remote(&self, woken: RemoteRef) {
        let task = TaskRef(woken.0);
        // Cleared first: a wake from elsewhere from now on queues the task again. A swap, not a
        // store: a wake that found the flag still set (and so queued nothing) made its changes
        // before its own swap, and the run below must see them; the acquire here does that.
        // (With a plain store, the run could miss them and the wake be lost: the loom test
        // `a_remote_wake_racing_the_runs_is_never_lost` finds that interleaving.)
        task.header().remote_woken.swap(false, Ordering::AcqRel);
        self.wake(task);
        drop(woken);
    }

    /// Runs a task from the queue once.
    pub(crate) fn run(&self, task: TaskRef) {
        let header = task.header();
        let flags = header.flags.get() & !QUEUED;
        if flags & DONE != 0 {
            header.flags.set(flags);
            self.settle(task);
            return;
        }
        header.flags.set(flags | RUNNING);
        // A borrowed waker: it takes no reference (it lives no longer than this call; a clone
        // takes one).
        let waker = ManuallyDrop::new(raw_waker(task.0));
        let mut cx = Context::from_waker(&waker);
        // SAFETY: a live task (the executor's reference), polled on its executor's thread.
        let finished = unsafe { (header.vtable.poll)(task.0, &mut cx) };
        let flags = header.flags.get() & !RUNNING;
        if finished || flags & CANCELLED != 0 {
            if !finished {
                // SAFETY: as above, and no longer being polled.
                unsafe { (header.vtable.drop_future)(task.0) };
            }
            header.flags.set((flags | DONE) & !WOKEN);
            if let Some(awaiter) = header.awaiter.take() {
                awaiter.wake();
            }
            self.settle(task);
        } else if flags & WOKEN != 0 {
            header.flags.set((flags & !WOKEN) | QUEUED);
            self.queue.borrow_mut().push_back(task);
        } else {
            header.flags.set(flags);
        }
    }

    /// Gives up the executor's reference of a task that is done and out of the queue.
    fn settle(&self, task: TaskRef) {
        let header = task.header();
        let flags = header.flags.get();
        if flags & DONE == 0 || flags & QUEUED != 0 || flags & EXEC_REF == 0 {
            return;
        }
        header.flags.set(flags & !EXEC_REF);
        let mut live = self.live.borrow_mut();
        let index = header.live_index.get();
        live.swap_remove(index);
        if let Some(moved) = live.get(index) {
            moved.header().live_index.set(index);
        }
        drop(live);
        // SAFETY: the executor's reference, given up once (EXEC_REF is now clear).
        unsafe { drop_ref(task.0) };
    }

    /// Drops every unfinished task's future (the executor is going away), until dropping them
    /// starts or wakes no more.
    pub(crate) fn close_all(&self) {
        loop {
            let queued = std::mem::take(&mut *self.queue.borrow_mut());
            for task in &queued {
                let header = task.header();
                header.flags.set(header.flags.get() & !QUEUED);
            }
            let live = self.live.borrow().clone();
            if live.is_empty() {
                return;
            }
            for task in live {
                let header = task.header();
                let flags = header.flags.get();
                if flags & DONE == 0 {
                    header.flags.set(flags | DONE);
                    // SAFETY: a live task on its executor's thread, not being polled.
                    unsafe { (header.vtable.drop_future)(task.0) };
                    if let Some(awaiter) = header.awaiter.take() {
                        awaiter.wake();
                    }
                }
                if header.flags.get() & QUEUED == 0 {
                    self.settle(task);
                }
            }
        }
    }
}

/// Starts a task for `future` on the executor whose tasks are `tasks`, queued to run. One
/// allocation.
pub(crate) fn spawn<F>(tasks: &Rc<Tasks>, future: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    let cell = tasks.new_cell(Layout::new::<RawTask<F>>()).cast::<RawTask<F>>();
    let task = RawTask {
        header: Header {
            // The executor's and the handle's.
            refs: AtomicUsize::new(2),
            remote_woken: AtomicBool::new(false),
            remote: Arc::clone(&tasks.remote),
            vtable: &RawTask::<F>::VTABLE,
            flags: Cell::new(HANDLE | EXEC_REF | QUEUED),
            live_index: Cell::new(0),
            awaiter: Cell::new(None),
        },
        stage: UnsafeCell::new(Stage::Running(future)),
    };
    // SAFETY: unused memory with `RawTask<F>`'s layout (`new_cell`).
    unsafe { cell.write(task) };
    // The header is the first field of the repr(C) cell.
    let task = TaskRef(cell.cast::<Header>());
    {
        let mut live = tasks.live.borrow_mut();
        task.header().live_index.set(live.len());
        live.push(task);
    }
    tasks.queue.borrow_mut().push_back(task);
    JoinHandle { task, tasks: Rc::clone(tasks), _output: PhantomData }
}

/// The handle of a task: awaits its output, cancels it on drop. `!Send`: it stays in the
/// executor's thread.
pub(crate) struct JoinHandle<T> {
    task: TaskRef,
    tasks: Rc<Tasks>,
    // `fn() -> T`: the handle is `Unpin` whatever `T` is (outputs are `'static`).
    _output: PhantomData<fn() -> T>,
}

impl<T> JoinHandle<T> {
    /// Whether the task is done (finished, panicked or cancelled).
    pub(crate) fn is_finished(&self) -> bool {
        self.task.header().flags.get() & DONE != 0
    }

    /// A waker of the task, as its future would clone from its context (for the loom tests).
    #[cfg(all(test, loom))]
    pub(crate) fn waker(&self) -> Waker {
        // SAFETY: a live task (the handle's reference); the clone takes a reference of its own.
        unsafe { Waker::from_raw(waker_clone(self.task.0.as_ptr().cast())) }
    }

    /// Lets the task run on with nobody awaiting it.
    pub(crate) fn detach(self) {
        let this = ManuallyDrop::new(self);
        this.release(false);
        // SAFETY: read once out of the ManuallyDrop, which is never used again.
        drop(unsafe { std::ptr::read(&this.tasks) });
    }

    /// Gives up the handle's reference; `cancel`: stops the task if it is unfinished.
    fn release(&self, cancel: bool) {
        let header = self.task.header();
        let flags = header.flags.get() & !HANDLE;
        header.flags.set(flags);
        header.awaiter.take();
        if flags & DONE != 0 {
            // SAFETY: a live task on its executor's thread, not being polled (it is done).
            unsafe { (header.vtable.drop_output)(self.task.0) };
        } else if cancel {
            if flags & RUNNING != 0 {
                // Dropped from inside its own poll: the poll's end drops the future.
                header.flags.set(flags | CANCELLED);
            } else {
                header.flags.set(flags | DONE);
                // SAFETY: a live task on its executor's thread, not being polled.
                unsafe { (header.vtable.drop_future)(self.task.0) };
                self.tasks.settle(self.task);
            }
        }
        // SAFETY: the handle's reference, given up once (the handle is consumed or dropped).
        unsafe { drop_ref(self.task.0) };
    }

    /// Polls for the output: `Ready(Some(..))` once finished (the panic message as `Err`),
    /// `Ready(None)` if it was cancelled (its executor went away).
    pub(crate) fn poll_output(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<T, String>>> {
        let header = self.task.header();
        if header.flags.get() & DONE == 0 {
            let stale = header.awaiter.take();
            match stale {
                Some(waker) if waker.will_wake(cx.waker()) => header.awaiter.set(Some(waker)),
                _ => header.awaiter.set(Some(cx.waker().clone())),
            }
            return Poll::Pending;
        }
        // SAFETY: this handle's task, made by `spawn` with a future whose output is `T`, is done,
        // and this is its executor's thread (the handle is `!Send`).
        Poll::Ready(unsafe { take_output::<T>(self.task) })
    }
}

impl<T> Drop for JoinHandle<T> {
    fn drop(&mut self) {
        self.release(true);
    }
}

/// Takes the output out of a done task's cell.
///
/// # Safety
/// `task` was made by [`spawn`] with a future whose output is `T`, is done, and is on its
/// executor's thread.
unsafe fn take_output<T>(task: TaskRef) -> Option<Result<T, String>> {
    let mut out: Option<Result<T, String>> = None;
    // SAFETY: forwarded: the vtable's `take_output` writes an `Option<Result<T, String>>`,
    // `T` being its future's output.
    unsafe { (task.header().vtable.take_output)(task.0, (&raw mut out).cast()) };
    out
}

/// Drops one reference; the last one frees the cell.
///
/// # Safety
/// The caller holds the reference it gives up.
unsafe fn drop_ref(ptr: NonNull<Header>) {
    // SAFETY: the caller's reference keeps the header alive until this decrement.
    let header = unsafe { ptr.as_ref() };
    // The last reference (the usual case for the second of the executor's and the handle's):
    // nobody else holds one, so nobody can take one (that needs a reference), and no atomic
    // read-modify-write is needed. The acquire load pairs with the release decrements of the
    // references given up before, as the fence below does.
    if header.refs.load(Ordering::Acquire) != 1 {
        if header.refs.fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        fence(Ordering::Acquire);
    }
    // SAFETY: that was the last reference.
    unsafe { (header.vtable.dealloc)(ptr) };
}

fn raw_waker(ptr: NonNull<Header>) -> Waker {
    // SAFETY: the vtable's functions uphold the `RawWaker` contract for task headers (see
    // each); `ptr` is a live task header.
    unsafe { Waker::from_raw(RawWaker::new(ptr.as_ptr().cast(), &WAKER_VTABLE)) }
}

static WAKER_VTABLE: RawWakerVTable =
    RawWakerVTable::new(waker_clone, waker_wake, waker_wake_by_ref, waker_drop);

/// # Safety
///
/// `ptr` is the header of a live task (the `RawWaker` contract: a waker's data pointer).
unsafe fn waker_clone(ptr: *const ()) -> RawWaker {
    // SAFETY: a waker's pointer is a live task header (the waker holds, or borrows, a reference).
    let header = unsafe { &*ptr.cast::<Header>() };
    if header.refs.fetch_add(1, Ordering::Relaxed) > MAX_REFS {
        std::process::abort();
    }
    RawWaker::new(ptr, &WAKER_VTABLE)
}

/// # Safety
///
/// `ptr` is the header of a live task, and the waker's reference is given up here.
unsafe fn waker_wake(ptr: *const ()) {
    // SAFETY: forwarded; then this waker's own reference is given up.
    unsafe {
        waker_wake_by_ref(ptr);
        waker_drop(ptr);
    }
}

/// # Safety
///
/// `ptr` is the header of a live task.
unsafe fn waker_wake_by_ref(ptr: *const ()) {
    // SAFETY: a waker's pointer is a live, non-null task header.
    let ptr = unsafe { NonNull::new_unchecked(ptr.cast_mut().cast::<Header>()) };
    // SAFETY: as above.
    let header = unsafe { ptr.as_ref() };
    // In the executor's thread, while it runs: straight onto its run queue, no atomics.
    if running_here(&header.remote, |tasks| tasks.wake(TaskRef(ptr))).is_some() {
        return;
    }
    if header.remote_woken.swap(true, Ordering::AcqRel) {
        return; // already in the remote queue
    }
    header.refs.fetch_add(1, Ordering::Relaxed);
    if let Err(refused) = header.remote.push_task(RemoteRef(ptr)) {
        // The executor is gone; the entry's reference goes with `refused`.
        drop(refused);
    }
}

/// # Safety
///
/// `ptr` is the header of a live task, and the waker's reference is given up here.
unsafe fn waker_drop(ptr: *const ()) {
    // SAFETY: a waker's pointer is a live, non-null task header, and this waker's reference is
    // given up once.
    unsafe { drop_ref(NonNull::new_unchecked(ptr.cast_mut().cast::<Header>())) }
}

/// What other threads reach of an executor: the queue their wakes go to, and how to wake the
/// executor when it sleeps in its reactor (the eventfd).
pub(crate) struct Remote {
    queue: Mutex<RemoteQueue>,
    /// `queue` may hold something.
    queued: AtomicBool,
    /// The executor sleeps (or is about to) in the reactor: wakes must write the eventfd.
    sleeping: AtomicBool,
    /// The future given to `block_on` was woken.
    main_woken: AtomicBool,
    eventfd: OwnedFd,
}

/// Tasks woken in other threads, and whether the executor is gone (then a task woken can
/// never run, and is refused).
#[derive(Default)]
struct RemoteQueue {
    woken: Vec<RemoteRef>,
    closed: bool,
}

impl Remote {
    /// The remote side of an executor whose reactor wakes when `eventfd` is written.
    pub(crate) fn new(eventfd: OwnedFd) -> Remote {
        Remote {
            queue: Mutex::new(RemoteQueue::default()),
            queued: AtomicBool::new(false),
            sleeping: AtomicBool::new(false),
            main_woken: AtomicBool::new(false),
            eventfd,
        }
    }

    /// Queues a task woken in another thread; gives it back if the executor is gone.
    fn push_task(&self, task: RemoteRef) -> Result<(), RemoteRef> {
        let mut queue = self.queue.lock();
        if queue.closed {
            return Err(task);
        }
        queue.woken.push(task);
        drop(queue);
        self.raise(&self.queued);
        Ok(())
    }

    /// Sets `flag` (one of this executor's "something to do" flags) and wakes the executor
    /// if it sleeps.
    ///
    /// With [`sleep_unless_woken`](Self::sleep_unless_woken), a store then a load on each
    /// side with a `SeqCst` fence between: at least one side sees the other's store, so the
    /// executor either sees the flag before it sleeps or is woken through the eventfd. (Fences
    /// rather than `SeqCst` accesses: loom checks fences, and takes `SeqCst` accesses for
    /// acquire/release only.)
    fn raise(&self, flag: &AtomicBool) {
        flag.store(true, Ordering::Release);
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) {
            reactor::notify(self.eventfd.as_fd());
        }
    }

    /// Wakes the future given to `block_on` (from any thread). In the executor's own thread
    /// (a task it runs finished, a local channel) it is not asleep: setting the flag is all.
    #[inline]
    pub(crate) fn wake_main(&self) {
        if running_here(self, |_| ()).is_some() {
            self.main_woken.store(true, Ordering::Relaxed);
        } else {
            self.raise(&self.main_woken);
        }
    }

    /// Whether the future given to `block_on` was woken since the last call (which clears it).
    #[inline]
    pub(crate) fn take_main_wake(&self) -> bool {
        self.main_woken.load(Ordering::Relaxed) && self.main_woken.swap(false, Ordering::SeqCst)
    }

    /// Whether the future given to `block_on` was woken and not polled since.
    #[inline]
    pub(crate) fn main_woken(&self) -> bool {
        self.main_woken.load(Ordering::SeqCst)
    }

    /// Runs `sleep` (the reactor's wait) unless a wake from another thread came first. A wake
    /// that comes while it runs writes the eventfd, which `sleep` must wake on.
    pub(crate) fn sleep_unless_woken(&self, sleep: impl FnOnce()) {
        self.sleeping.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        // A wake between the caller's checks and `sleeping` would not write the eventfd: look
        // again now that wakers will (see `raise`).
        if !self.queued.load(Ordering::Acquire) && !self.main_woken.load(Ordering::Acquire) {
            sleep();
        }
        self.sleeping.store(false, Ordering::Relaxed);
    }

    /// Refuses wakes from now on, and gives back the tasks queued so far.
    pub(crate) fn close(&self) -> Vec<RemoteRef> {
        let mut queue = self.queue.lock();
        queue.closed = true;
        std::mem::take(&mut queue.woken)
    }
}

#[cfg(not(loom))]
std::thread_local! {
    /// The tasks of the executor running in this thread now.
    static CURRENT_TASKS: RefCell<Option<Rc<Tasks>>> = const { RefCell::new(None) };
}

#[cfg(loom)]
loom::thread_local! {
    /// The tasks of the executor running in this thread now.
    static CURRENT_TASKS: RefCell<Option<Rc<Tasks>>> = RefCell::new(None);
}

/// Runs `f` on the tasks of the executor whose remote side is `remote`, if that executor is
/// running in this thread; `None` otherwise. (By address: the caller holds `remote` alive, so
/// no other executor's can be at that address.)
fn running_here<R>(remote: &Remote, f: impl FnOnce(&Tasks) -> R) -> Option<R> {
    CURRENT_TASKS
        .try_with(|running| {
            let running = running.try_borrow().ok()?;
            let tasks = running.as_ref()?;
            std::ptr::eq(&*tasks.remote, remote).then(|| f(tasks))
        })
        .ok()
        .flatten()
}

/// While it lives, the tasks it was made with are the ones running in this thread: their
/// wakes here go straight to their run queue.
pub(crate) struct Running {
    previous: Option<Rc<Tasks>>,
}

impl Running {
    pub(crate) fn enter(tasks: &Rc<Tasks>) -> Running {
        Running { previous: CURRENT_TASKS.with(|r| r.replace(Some(Rc::clone(tasks)))) }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let left = CURRENT_TASKS.with(|r| r.replace(self.previous.take()));
        drop(left);
    }
}

#[cfg(all(test, loom))]
mod loom_tests;

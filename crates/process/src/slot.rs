//! Where a `Fork` child leaves its value: a slot in a memfd of its parent's.
//!
//! A child that sent its value on a socket would wake its parent twice (the value, then the
//! exit), and a socket per child costs a `socketpair`. Instead the parent gives each forked
//! child a slot, a 4 KiB page of a memfd the parent creates and maps shared in chunks
//! ([`SharedMap`]): the child, which inherits the mapping, stores its [`Outcome`] there
//! and exits, and the parent, woken once by the exit, copies it out. No system call on either
//! side for a value that fits the page. A bigger one goes to a second memfd with `pwrite`,
//! at a range the child takes from a counter in shared memory ([`SharedCounter`]), so that
//! file is only as long as the big values not read yet; their pages are freed once read, their
//! ranges taken again by later values, and the file emptied when no slot is in use. Both files obey the file size limit
//! (`ulimit -f`), checked before each write or growth, so going past it is a clear error, not
//! the `SIGXFSZ` that would kill the writer. Slots are reused once their child is reaped, so
//! the page is already allocated and the child's store allocates nothing.
//!
//! The page starts with a header: a magic number, the *generation* (a count the parent
//! bumps each time it hands the slot out, so a value can only be taken by the start it
//! belongs to), whether the value is on the page or in the overflow file (and where), and
//! its length. The child writes the header last: a
//! child killed halfway leaves the previous generation, read as "no value". The page is
//! memory other processes can write: the parent checks what it reads there as it would
//! bytes from a socket.
//!
//! A value crossing this way cannot carry ipc ends (there is no socket to carry their fds);
//! serializing one fails, and the child reports that as the transfer error.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use parking_lot::Mutex;
use rustix::fs::{FallocateFlags, MemfdFlags};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bootstrap::Outcome;
use crate::error::{Error, Result};
use crate::global::PerProcess;
use crate::sys::shared::{CHUNK, SharedCounter, SharedMap};

/// The bytes of one slot's page.
const PAGE: u64 = 4096;
/// The most slots, and so the most `Fork` children running at once. Their pages are mapped in
/// chunks of 2 MiB (512 slots of 4 KiB pages each: see [`SharedMap`]), as
/// slots are first used.
const MAX_SLOTS: u32 = 1 << 18;
const HEADER: usize = 32;
const MAGIC: u32 = u32::from_le_bytes(*b"mpRs");
/// The largest value a `Fork` child can send back: 64 GiB.
const MAX_VALUE: u64 = 1 << 36;

/// This process's slots: the memfd of their pages and the chunks of it mapped, the overflow
/// memfd and the counter its ranges are taken from (all kept for the life of the process),
/// and the indexes not in use.
///
/// Two files, because only the parent sizes the first (grown as chunks are mapped), while
/// children extend the second as they write past its end.
struct Slots {
    pages_file: &'static OwnedFd,
    /// How long the pages' file is.
    size: u64,
    chunks: Vec<&'static SharedMap>,
    overflow: Overflow,
    free: Vec<(u32, u64)>,
    next: u32,
    /// The ranges of the overflow file whose values were read, below the counter, sorted and
    /// merged: the counter comes back below those that reach it (see
    /// [`free_overflow`](Self::free_overflow)).
    freed: Vec<(u64, u64)>,
    /// Whether a value was read from the overflow file since it was last emptied (it may
    /// then be long although the counter is back at 0).
    overflow_read: bool,
}

/// Where values too big for a page go: a memfd, and a counter in shared memory from which a
/// child takes the range it writes (so the file is only as long as the big values not read
/// yet, whatever the slots' indexes). Emptied whenever no slot is in use.
#[derive(Clone, Copy)]
struct Overflow {
    file: &'static OwnedFd,
    next: &'static SharedCounter,
}

impl Slots {
    /// The chunk slot `index` is in, mapped first if it is the next one; its page's offset in
    /// the chunk.
    fn place(&mut self, index: u32) -> Result<(&'static SharedMap, usize)> {
        let per_chunk = CHUNK / PAGE as usize;
        let (chunk, at) = (index as usize / per_chunk, index as usize % per_chunk);
        while self.chunks.len() <= chunk {
            let offset = (self.chunks.len() * CHUNK) as u64;
            let end = offset + CHUNK as u64;
            if end > self.size {
                // Checked first: past the limit, the kernel would kill this process with
                // `SIGXFSZ` rather than fail the call.
                if end > file_size_limit() {
                    return Err(Error::Io(std::io::Error::other(format!(
                        "the pages where Fork children leave their values need a {end}-byte memfd, \
                         past this process's file size limit (ulimit -f)"
                    ))));
                }
                rustix::fs::ftruncate(self.pages_file, end)?; // sparse: pages come as used
                self.size = end;
            }
            self.chunks.push(Box::leak(Box::new(SharedMap::map_chunk(self.pages_file, offset)?)));
        }
        Ok((self.chunks[chunk], at * PAGE as usize))
    }

    /// The range `start..end` of the overflow file was read: it joins the freed ranges
    /// (merged with those next to it), and while the last of them ends at the counter, the
    /// counter goes back to its start. So the space of values read is taken again by later
    /// ones whatever order they were read in, even while some child holds its slot for long
    /// (when none does, the file is emptied anyway). A child takes a range only by moving
    /// the counter up: one that took a range after the last freed one keeps the counter
    /// where it is until its own range is read and freed too.
    fn free_overflow(&mut self, start: u64, end: u64) {
        self.overflow_read = true;
        let at = self.freed.partition_point(|&(s, _)| s < start);
        self.freed.insert(at, (start, end));
        if at + 1 < self.freed.len() && self.freed[at].1 == self.freed[at + 1].0 {
            self.freed[at].1 = self.freed.remove(at + 1).1;
        }
        if at > 0 && self.freed[at - 1].1 == self.freed[at].0 {
            self.freed[at - 1].1 = self.freed.remove(at).1;
        }
        while let Some(&(start, end)) = self.freed.last() {
            if !self.overflow.next.rewind(end, start) {
                break;
            }
            self.freed.pop();
        }
    }
}

/// Shared by the slots handed out, which come back to it when their child is reaped.
type Pool = Arc<Mutex<Slots>>;

static POOL: PerProcess<Option<Pool>> = PerProcess::new();

/// One child's slot, held by the parent.
pub(crate) struct Slot {
    pool: Pool,
    overflow: Overflow,
    /// The chunk its page is in, and where.
    pages: &'static SharedMap,
    page: usize,
    index: u32,
    generation: u64,
}

/// What the child needs to write its value (plain data: it is used after a fork).
#[derive(Clone, Copy)]
pub(crate) struct SlotWriter<'a> {
    overflow: Overflow,
    pages: &'a SharedMap,
    page: usize,
    generation: u64,
}

impl Slot {
    /// A slot for the next child (creating this process's memfd on first use).
    pub(crate) fn take() -> Result<Slot> {
        let pool = POOL.with(|| None, |pool| pool.clone());
        let pool = match pool {
            Some(pool) => pool,
            None => {
                let pages_file = data_memfd("mproc-results")?;
                let overflow = Overflow {
                    file: Box::leak(Box::new(data_memfd("mproc-results-overflow")?)),
                    next: Box::leak(Box::new(SharedCounter::new()?)),
                };
                let fresh = Slots {
                    pages_file: Box::leak(Box::new(pages_file)),
                    size: 0,
                    chunks: Vec::new(),
                    overflow,
                    free: Vec::new(),
                    next: 0,
                    freed: Vec::new(),
                    overflow_read: false,
                };
                POOL.with(|| None, |pool| Arc::clone(pool.get_or_insert(Arc::new(Mutex::new(fresh)))))
            }
        };
        let mut slots = pool.lock();
        let (index, generation) = match slots.free.pop() {
            Some((index, generation)) => (index, generation + 1),
            None if slots.next < MAX_SLOTS => (slots.next, 1),
            None => return Err(Error::Io(std::io::Error::other("too many forked children at once"))),
        };
        // Maps the chunk of a new index first; the index counts as used once that worked.
        let (pages, page) = slots.place(index)?;
        if generation > 1 {
            // A reused slot (a new one's page is zeros of the sparse file): its last child is
            // reaped, but it may have left a header of any generation, this one's too (a buggy
            // or hostile child). Only what the next child writes may read as its value.
            pages.write(page, &[0; HEADER]);
        }
        slots.next = slots.next.max(index + 1);
        let overflow = slots.overflow;
        drop(slots);
        Ok(Slot { pool, overflow, pages, page, index, generation })
    }

    /// The child's side of this slot.
    pub(crate) fn writer(&self) -> SlotWriter<'static> {
        SlotWriter {
            overflow: self.overflow,
            pages: self.pages,
            page: self.page,
            generation: self.generation,
        }
    }

    /// The value the child left, once it has ended; `None` if it left none (it died first,
    /// or exited without returning). Call it once: an overflow's pages are freed on reading.
    pub(crate) fn read<R: DeserializeOwned>(&mut self) -> Result<Option<Outcome<R>>> {
        let mut head = [0u8; HEADER];
        if !self.pages.read(self.page, &mut head) {
            return Ok(None);
        }
        let Some(header) = Header::parse(&head) else { return Ok(None) };
        if header.generation != self.generation {
            return Ok(None);
        }
        // Most values are small: into a buffer on the stack (one that does not reach a stack
        // page shared with a child forked meanwhile, which a write would copy).
        let mut small = [0u8; 256];
        let mut large = Vec::new();
        let value: &[u8] = if header.overflow {
            // The range comes from the child: believe it only as far as the file goes (a
            // header garbled by a stray write must not make this allocate gigabytes).
            let file = self.overflow.file;
            let size = rustix::fs::fstat(file)?.st_size as u64;
            if header.offset.checked_add(header.len as u64).is_none_or(|end| end > size) {
                return Ok(None);
            }
            large.resize(header.len, 0);
            let n = read_at(file, &mut large, header.offset)?;
            let hole = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
            let _ = rustix::fs::fallocate(file, hole, header.offset, header.len as u64);
            // Its space serves later values (once the counter comes back below it).
            self.pool.lock().free_overflow(header.offset, header.offset + header.len as u64);
            if n < header.len {
                return Ok(None);
            }
            &large
        } else {
            if header.len > PAGE as usize - HEADER {
                return Ok(None);
            }
            let value = match small.get_mut(..header.len) {
                Some(small) => small,
                None => {
                    large.resize(header.len, 0);
                    &mut large
                }
            };
            if !self.pages.read(self.page + HEADER, value) {
                return Ok(None);
            }
            value
        };
        // With the ipc decoder's limits (depth, element counts): the page is bytes another
        // process wrote, as a frame from a socket is.
        Ok(Some(
            mproc_ipc::decode_bytes(value)
                .unwrap_or_else(|e| Outcome::Transfer(format!("the value sent back: {e}"))),
        ))
    }

    /// Gives the slot back for another child, once its own is reaped (or was never
    /// started): it writes nothing more. A slot merely dropped is never used again, since a
    /// child that may still run could write over the next child's value (its page stays
    /// allocated; the leak is 4 KiB).
    pub(crate) fn give_back(self) {
        let mut slots = self.pool.lock();
        slots.free.push((self.index, self.generation));
        // No slot in use, so no child that could still write to the overflow file and no big
        // value left to read there: empty it.
        if slots.free.len() == slots.next as usize && (self.overflow.next.get() != 0 || slots.overflow_read) {
            self.overflow.next.reset();
            slots.freed.clear();
            slots.overflow_read = false;
            let _ = rustix::fs::ftruncate(self.overflow.file, 0);
        }
    }
}

impl SlotWriter<'_> {
    /// In the child: writes `outcome` (or, if it cannot be encoded, a transfer error).
    #[inline(always)]
    pub(crate) fn write<R: Serialize>(self, outcome: &Outcome<R>) {
        // Encoded straight into the page, byte by byte: no buffer, no copy, no call into
        // `memcpy` (each page of code a forked child runs first costs it a fault).
        let page = PageOutput { pages: self.pages, page: self.page, len: 0 };
        // `postcard::serialize_with_flavor`, spelt out so that it is inlined too.
        let mut encoder = postcard::Serializer { output: page };
        match outcome.serialize(&mut encoder) {
            Ok(()) => self.write_header(false, encoder.output.len, 0),
            // Past the page (postcard says `CollectStrError` when a `collect_str` runs out of
            // room), or a real error, which encoding into a `Vec` reports.
            Err(_) => match postcard::to_stdvec(outcome) {
                Ok(bytes) if bytes.len() as u64 <= MAX_VALUE => self.write_value(&bytes),
                Ok(_) => self.write_failure("the value is larger than 64 GiB".into()),
                Err(e) => self.write_failure(describe(e)),
            },
        }
    }

    /// Writes a transfer error saying `why`. (Its encoding is the same whatever the value's
    /// type: `()` stands for it.)
    fn write_failure(self, why: String) {
        let outcome = Outcome::<()>::Transfer(format!("cannot send the value back: {why}"));
        if let Ok(bytes) = postcard::to_stdvec(&outcome) {
            self.write_value(&bytes);
        }
    }

    /// Writes an encoded value of at most [`MAX_VALUE`] bytes (on the page if it fits, else in
    /// a range of the overflow file), then the header that makes it count.
    fn write_value(self, value: &[u8]) {
        let len = value.len() as u64;
        if len <= PAGE - HEADER as u64 {
            if self.pages.write(self.page + HEADER, value) {
                self.write_header(false, value.len(), 0);
            }
            return;
        }
        let offset = self.overflow.next.fetch_add(len);
        // Checked first: past the limit, the kernel would kill this child with `SIGXFSZ`
        // rather than fail the write.
        if offset.checked_add(len).is_none_or(|end| end > file_size_limit()) {
            return self.write_failure(format!(
                "the value ({len} bytes) would end past this process's file size limit (ulimit -f), \
                 which the file it crosses in obeys"
            ));
        }
        if write_at(self.overflow.file, value, offset) {
            self.write_header(true, value.len(), offset);
        }
    }

    /// Writes the header, last: it makes the value written before it count.
    #[inline(always)]
    fn write_header(self, overflow: bool, len: usize, offset: u64) {
        let mut header = [0u8; HEADER];
        Header { generation: self.generation, overflow, len, offset }.put(&mut header);
        self.pages.write(self.page, &header);
    }
}

/// A postcard output that stores into the slot's page at `page` (after the header); its
/// output is the length written.
struct PageOutput<'a> {
    pages: &'a SharedMap,
    page: usize,
    len: usize,
}

impl postcard::ser_flavors::Flavor for PageOutput<'_> {
    type Output = usize;

    #[inline(always)]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        if self.len < PAGE as usize - HEADER && self.pages.write_byte(self.page + HEADER + self.len, byte) {
            self.len += 1;
            Ok(())
        } else {
            Err(postcard::Error::SerializeBufferFull)
        }
    }

    #[inline(always)]
    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        bytes.iter().try_for_each(|&byte| self.try_push(byte))
    }

    fn finalize(self) -> postcard::Result<usize> {
        Ok(self.len)
    }
}

/// The header at the start of a slot's page.
struct Header {
    generation: u64,
    overflow: bool,
    len: usize,
    /// Where in the overflow file the value is, if it is there.
    offset: u64,
}

impl Header {
    #[inline(always)]
    fn put(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        out[4..8].copy_from_slice(&u32::from(self.overflow).to_le_bytes());
        out[8..16].copy_from_slice(&self.generation.to_le_bytes());
        out[16..24].copy_from_slice(&(self.len as u64).to_le_bytes());
        out[24..32].copy_from_slice(&self.offset.to_le_bytes());
    }

    fn parse(page: &[u8]) -> Option<Header> {
        let word = |at: usize, n: usize| page.get(at..at + n);
        let magic = u32::from_le_bytes(word(0, 4)?.try_into().ok()?);
        let overflow = u32::from_le_bytes(word(4, 4)?.try_into().ok()?);
        let generation = u64::from_le_bytes(word(8, 8)?.try_into().ok()?);
        let len = u64::from_le_bytes(word(16, 8)?.try_into().ok()?);
        let offset = u64::from_le_bytes(word(24, 8)?.try_into().ok()?);
        if magic != MAGIC || overflow > 1 || len > MAX_VALUE {
            return None;
        }
        Some(Header { generation, overflow: overflow == 1, len: usize::try_from(len).ok()?, offset })
    }
}

/// Says why a value did not encode. postcard keeps no message for errors a type raises
/// itself, and the one a forked child meets is an ipc end inside its value.
fn describe(e: postcard::Error) -> String {
    match e {
        postcard::Error::SerdeSerCustom => {
            "the value failed to serialize (a Fork child's value cannot carry ipc ends, which need \
             a connection: send them on one passed to the child instead)"
                .into()
        }
        e => e.to_string(),
    }
}

/// A memfd for data, never to be executed: sealed so (which systems with
/// `vm.memfd_noexec = 2` require) where the kernel knows the flag (Linux 6.3).
fn data_memfd(name: &str) -> std::io::Result<OwnedFd> {
    match rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::NOEXEC_SEAL) {
        Err(rustix::io::Errno::INVAL) => Ok(rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC)?),
        made => Ok(made?),
    }
}

/// The largest file this process may write (`RLIMIT_FSIZE`, `ulimit -f`).
fn file_size_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Fsize).current.unwrap_or(u64::MAX)
}

/// Reads at `offset` until `buf` is full or the file ends; the bytes read.
fn read_at(file: &OwnedFd, buf: &mut [u8], offset: u64) -> Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::pread(file, &mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            // A short read of a regular file is its end.
            Ok(n) if done + n < buf.len() => return Ok(done + n),
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(done)
}

/// Writes all of `buf` at `offset`; whether it all went.
fn write_at(file: &OwnedFd, buf: &[u8], offset: u64) -> bool {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::pwrite(file, &buf[done..], offset + done as u64) {
            Ok(0) => return false,
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_reads_back_and_garbage_is_no_header() {
        let mut page = [0u8; HEADER];
        Header { generation: 7, overflow: true, len: 5000, offset: 9 }.put(&mut page);
        let header = Header::parse(&page).unwrap();
        assert_eq!((header.generation, header.overflow, header.len, header.offset), (7, true, 5000, 9));
        assert!(Header::parse(&page[..HEADER - 1]).is_none(), "a short page");
        assert!(Header::parse(&[0u8; HEADER]).is_none(), "a page never written");
        let mut bad = page;
        bad[4] = 2;
        assert!(Header::parse(&bad).is_none(), "an overflow flag that is neither 0 nor 1");
        let mut huge = page;
        huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Header::parse(&huge).is_none(), "a length past the largest value");
    }

    /// A header that claims more than the overflow file holds (a stray write) reads as no
    /// value, without allocating what it claims; so does a range that wraps around.
    #[test]
    fn a_garbled_length_or_offset_is_no_value_and_no_huge_allocation() {
        let mut slot = Slot::take().unwrap();
        let writer = slot.writer();
        for (len, offset) in [(40 << 30, 0), (5000, 1 << 40), (5000, u64::MAX - 10)] {
            let mut page = [0u8; HEADER];
            Header { generation: writer.generation, overflow: true, len, offset }.put(&mut page);
            assert!(writer.pages.write(writer.page, &page));
            assert!(slot.read::<u32>().unwrap().is_none(), "len {len} at {offset}");
        }
        slot.give_back();
    }

    /// Big values take ranges of the overflow file one after the other, whatever their slots'
    /// indexes, and the file is emptied once no slot is in use. (In a forked child, whose
    /// slots are its own: other tests here hold slots meanwhile.)
    #[test]
    fn overflow_ranges_are_dense_and_emptied_when_no_slot_is_in_use() {
        let seen = crate::Process::spawn(|| {
            let mut slots: Vec<Slot> = (0..3).map(|_| Slot::take().unwrap()).collect();
            for (i, slot) in slots.iter().enumerate() {
                slot.writer().write(&Outcome::Value(vec![i as u8; 10_000]));
            }
            let file = slots[0].overflow.file;
            let written = rustix::fs::fstat(file).unwrap().st_size;
            for (i, slot) in slots.iter_mut().enumerate() {
                let value = slot.read::<Vec<u8>>().unwrap();
                assert!(matches!(value, Some(Outcome::Value(v)) if v == vec![i as u8; 10_000]), "slot {i}");
            }
            for slot in slots {
                slot.give_back();
            }
            (written, rustix::fs::fstat(file).unwrap().st_size)
        })
        .unwrap()
        .join()
        .unwrap();
        assert!(seen.0 > 30_000 && seen.0 < 31_000, "three values of 10 kB, end to end: {} bytes", seen.0);
        assert_eq!(seen.1, 0, "emptied once every slot was given back");
    }

    /// A header on the page claiming a value longer than the page (without the overflow flag)
    /// reads as no value, and so does a slot whose page holds the previous generation.
    #[test]
    fn a_page_value_longer_than_the_page_or_of_another_generation_is_no_value() {
        let mut slot = Slot::take().unwrap();
        let (pages, at, generation) = (slot.pages, slot.page, slot.generation);
        let header = |generation, len| {
            let mut page = [0u8; HEADER];
            Header { generation, overflow: false, len, offset: 0 }.put(&mut page);
            assert!(pages.write(at, &page));
        };
        header(generation, 5000);
        assert!(slot.read::<u32>().unwrap().is_none());
        let value = postcard::to_stdvec(&Outcome::Value(7u32)).unwrap();
        assert!(pages.write(at + HEADER, &value));
        header(generation - 1, value.len());
        assert!(slot.read::<u32>().unwrap().is_none());
        header(generation, value.len());
        assert!(matches!(slot.read::<u32>().unwrap(), Some(Outcome::Value(7))));
        slot.give_back();
    }

    /// A page left holding a header of the next generation (a buggy or hostile child writes
    /// one before it is reaped) is no value for the slot's next child: a child that leaves
    /// nothing reads as nothing.
    #[test]
    fn a_header_left_for_the_next_generation_is_no_value_for_the_next_child() {
        let slot = Slot::take().unwrap();
        let index = slot.index;
        let value = postcard::to_stdvec(&Outcome::Value(7u32)).unwrap();
        let mut page = [0u8; HEADER];
        Header { generation: slot.generation + 1, overflow: false, len: value.len(), offset: 0 }
            .put(&mut page);
        assert!(slot.pages.write(slot.page + HEADER, &value));
        assert!(slot.pages.write(slot.page, &page));
        slot.give_back();
        // The same slot again (other tests of this binary take slots meanwhile).
        let mut others = Vec::new();
        let mut next = Slot::take().unwrap();
        while next.index != index {
            assert!(others.len() < 10_000, "slot {index} never came back");
            others.push(next);
            next = Slot::take().unwrap();
        }
        let read = next.read::<u32>().unwrap();
        assert!(read.is_none(), "a value no child of this generation wrote: {read:?}");
        next.give_back();
        others.into_iter().for_each(Slot::give_back);
    }

    /// Slots past the first chunk (511 with 4 KiB pages) get chunks of their own, and each
    /// keeps its own value.
    #[test]
    fn slots_across_chunks_keep_their_own_values() {
        let mut slots: Vec<Slot> = (0..1200).map(|_| Slot::take().unwrap()).collect();
        for (i, slot) in slots.iter().enumerate() {
            slot.writer().write(&Outcome::Value(i as u64 * 7));
        }
        for (i, slot) in slots.iter_mut().enumerate() {
            assert!(
                matches!(slot.read::<u64>().unwrap(), Some(Outcome::Value(v)) if v == i as u64 * 7),
                "slot {i}"
            );
        }
        for slot in slots {
            slot.give_back();
        }
    }

    proptest::proptest! {
        /// Whatever a child (buggy or hostile) leaves in its page, reading it gives a value or
        /// nothing: never a panic, never an allocation past what the files hold.
        #[test]
        fn prop_any_page_reads_as_a_value_or_nothing(
            flags in 0u32..3,
            len in proptest::prop_oneof![0u64..5000, proptest::num::u64::ANY],
            offset in proptest::prop_oneof![0u64..100_000, proptest::num::u64::ANY],
            same_generation in proptest::bool::ANY,
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        ) {
            let mut slot = Slot::take().unwrap();
            let mut page = [0u8; HEADER];
            page[0..4].copy_from_slice(&MAGIC.to_le_bytes());
            page[4..8].copy_from_slice(&flags.to_le_bytes());
            let generation = if same_generation { slot.generation } else { slot.generation + 1 };
            page[8..16].copy_from_slice(&generation.to_le_bytes());
            page[16..24].copy_from_slice(&len.to_le_bytes());
            page[24..32].copy_from_slice(&offset.to_le_bytes());
            assert!(slot.pages.write(slot.page, &page));
            assert!(slot.pages.write(slot.page + HEADER, &body));
            let _ = slot.read::<Vec<u8>>();
            let _ = slot.read::<(u8, String)>();
            slot.give_back();
        }
    }
}

//! Where a `Fork` child leaves its value: a slot in one memfd per parent process.
//!
//! A child that sent its value on a socket would wake its parent twice (the value, then the
//! exit), and a socket per child costs a `socketpair`. Instead the parent gives each forked
//! child a slot, a 4 KiB page of a memfd the parent creates and maps shared in chunks
//! ([`SharedMap`]): the child, which inherits the mapping, stores its [`Outcome`] there
//! and exits, and the parent, woken once by the exit, copies it out. No system call on either
//! side for a value that fits the page. A bigger one goes to the slot's overflow range far
//! out in the (sparse) file, with `pwrite`, and its pages are freed once read. Slots are
//! reused once their child is reaped, so the page is already allocated and the child's store
//! allocates nothing.
//!
//! The page starts with a header: a magic number, the *generation* (a count the parent
//! bumps each time it hands the slot out, so a value can only be taken by the start it
//! belongs to), where the value is, and its length. The child writes the header last: a
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
use crate::sys::shared::{CHUNK, SharedMap};

/// The bytes of one slot's page.
const PAGE: u64 = 4096;
/// The most slots, and so the most `Fork` children running at once. Their pages are mapped in
/// chunks of 2 MiB of address space (511 slots each with 4 KiB pages: see [`SharedMap`]), as
/// slots are first used.
const MAX_SLOTS: u32 = 1 << 18;
const HEADER: usize = 24;
const MAGIC: u32 = u32::from_le_bytes(*b"mpRs");
/// Where the overflow ranges start, and how far apart they are: a slot's value may be up to
/// 64 GiB. The last range ends below 2^63, the largest file offset.
const OVERFLOW_BASE: u64 = 1 << 40;
const OVERFLOW_SPAN: u64 = 1 << 36;
const _: () = assert!(OVERFLOW_BASE + MAX_SLOTS as u64 * OVERFLOW_SPAN <= i64::MAX as u64);

/// This process's slots: the memfd, the chunks of it mapped (both kept for the life of the
/// process), and the indexes not in use.
struct Slots {
    file: &'static OwnedFd,
    chunks: Vec<&'static SharedMap>,
    free: Vec<(u32, u64)>,
    next: u32,
}

impl Slots {
    /// The chunk slot `index` is in, mapped first if it is the next one; its page's offset in
    /// the chunk.
    fn place(&mut self, index: u32) -> Result<(&'static SharedMap, usize)> {
        let first = crate::sys::page_size();
        let per_chunk = (CHUNK - first) / PAGE as usize;
        let (chunk, at) = (index as usize / per_chunk, index as usize % per_chunk);
        while self.chunks.len() <= chunk {
            let offset = (self.chunks.len() * CHUNK) as u64;
            self.chunks.push(Box::leak(Box::new(SharedMap::map_chunk(self.file, offset)?)));
        }
        Ok((self.chunks[chunk], first + at * PAGE as usize))
    }
}

/// Shared by the slots handed out, which come back to it when their child is reaped.
type Pool = Arc<Mutex<Slots>>;

static POOL: PerProcess<Option<Pool>> = PerProcess::new();

/// One child's slot, held by the parent.
pub(crate) struct Slot {
    pool: Pool,
    file: &'static OwnedFd,
    /// The chunk its page is in, and where.
    pages: &'static SharedMap,
    page: usize,
    index: u32,
    generation: u64,
}

/// What the child needs to write its value (plain data: it is used after a fork).
#[derive(Clone, Copy)]
pub(crate) struct SlotWriter<'a> {
    file: &'a OwnedFd,
    pages: &'a SharedMap,
    page: usize,
    index: u32,
    generation: u64,
}

impl Slot {
    /// A slot for the next child (creating this process's memfd on first use).
    pub(crate) fn take() -> Result<Slot> {
        let pool = POOL.with(|| None, |pool| pool.clone());
        let pool = match pool {
            Some(pool) => pool,
            None => {
                let file = rustix::fs::memfd_create("mproc-results", MemfdFlags::CLOEXEC)?;
                // Sparse: pages come as slots are used. The chunks lie below the overflow
                // ranges, which lie past the end.
                rustix::fs::ftruncate(&file, OVERFLOW_BASE)?;
                let fresh =
                    Slots { file: Box::leak(Box::new(file)), chunks: Vec::new(), free: Vec::new(), next: 0 };
                POOL.with(|| None, |pool| Arc::clone(pool.get_or_insert(Arc::new(Mutex::new(fresh)))))
            }
        };
        let mut slots = pool.lock();
        let (index, generation) = match slots.free.pop() {
            Some((index, generation)) => (index, generation + 1),
            None if slots.next < MAX_SLOTS => {
                let index = slots.next;
                slots.place(index)?; // maps its chunk first if need be
                slots.next += 1;
                (index, 1)
            }
            None => return Err(Error::Io(std::io::Error::other("too many forked children at once"))),
        };
        let file = slots.file;
        let (pages, page) = slots.place(index)?;
        drop(slots);
        Ok(Slot { pool, file, pages, page, index, generation })
    }

    /// The child's side of this slot.
    pub(crate) fn writer(&self) -> SlotWriter<'static> {
        SlotWriter {
            file: self.file,
            pages: self.pages,
            page: self.page,
            index: self.index,
            generation: self.generation,
        }
    }

    /// The value the child left, once it has ended; `None` if it left none (it died first,
    /// or exited without returning). Call it once: an overflow's pages are freed on reading.
    pub(crate) fn read<R: DeserializeOwned>(&mut self) -> Result<Option<Outcome<R>>> {
        let mut head = [0u8; HEADER];
        if !self.pages.read(self.page_offset(), &mut head) {
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
            // The length comes from the child: believe it only as far as the file goes (a
            // header garbled by a stray write must not make this allocate gigabytes).
            let size = rustix::fs::fstat(self.file)?.st_size as u64;
            if self.overflow_offset() + header.len as u64 > size {
                return Ok(None);
            }
            large.resize(header.len, 0);
            let n = read_at(self.file, &mut large, self.overflow_offset())?;
            let hole = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
            let _ = rustix::fs::fallocate(self.file, hole, self.overflow_offset(), header.len as u64);
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
            if !self.pages.read(self.value_offset(), value) {
                return Ok(None);
            }
            value
        };
        Ok(Some(
            postcard::from_bytes(value)
                .unwrap_or_else(|e| Outcome::Transfer(format!("cannot decode the value sent back: {e}"))),
        ))
    }

    /// Gives the slot back for another child, once its own is reaped (or was never
    /// started): it writes nothing more. A slot merely dropped is never used again, since a
    /// child that may still run could write over the next child's value (its page stays
    /// allocated; the leak is 4 KiB).
    pub(crate) fn give_back(self) {
        self.pool.lock().free.push((self.index, self.generation));
    }

    fn page_offset(&self) -> usize {
        self.page
    }

    fn value_offset(&self) -> usize {
        self.page_offset() + HEADER
    }

    fn overflow_offset(&self) -> u64 {
        OVERFLOW_BASE + u64::from(self.index) * OVERFLOW_SPAN
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
            Ok(()) => self.write_header(false, encoder.output.len),
            Err(postcard::Error::SerializeBufferFull) => match postcard::to_stdvec(outcome) {
                Ok(bytes) if (bytes.len() as u64) < OVERFLOW_SPAN => self.write_value(&bytes),
                Ok(_) => self.write_failure::<R>("the value is larger than 64 GiB".into()),
                Err(e) => self.write_failure::<R>(describe(e)),
            },
            Err(e) => self.write_failure::<R>(describe(e)),
        }
    }

    fn write_failure<R: Serialize>(self, why: String) {
        let outcome = Outcome::<R>::Transfer(format!("cannot send the value back: {why}"));
        if let Ok(bytes) = postcard::to_stdvec(&outcome) {
            self.write_value(&bytes);
        }
    }

    /// Writes an encoded value of any size below [`OVERFLOW_SPAN`] (on the page if it fits,
    /// else in the overflow range), then the header that makes it count.
    fn write_value(self, value: &[u8]) {
        let overflow = value.len() > PAGE as usize - HEADER;
        let written = if overflow {
            write_at(self.file, value, OVERFLOW_BASE + u64::from(self.index) * OVERFLOW_SPAN)
        } else {
            self.pages.write(self.page + HEADER, value)
        };
        if written {
            self.write_header(overflow, value.len());
        }
    }

    /// Writes the header, last: it makes the value written before it count.
    #[inline(always)]
    fn write_header(self, overflow: bool, len: usize) {
        let mut header = [0u8; HEADER];
        Header { generation: self.generation, overflow, len }.put(&mut header);
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
}

impl Header {
    #[inline(always)]
    fn put(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        out[4..8].copy_from_slice(&u32::from(self.overflow).to_le_bytes());
        out[8..16].copy_from_slice(&self.generation.to_le_bytes());
        out[16..24].copy_from_slice(&(self.len as u64).to_le_bytes());
    }

    fn parse(page: &[u8]) -> Option<Header> {
        let word = |at: usize, n: usize| page.get(at..at + n);
        let magic = u32::from_le_bytes(word(0, 4)?.try_into().ok()?);
        let overflow = u32::from_le_bytes(word(4, 4)?.try_into().ok()?);
        let generation = u64::from_le_bytes(word(8, 8)?.try_into().ok()?);
        let len = u64::from_le_bytes(word(16, 8)?.try_into().ok()?);
        if magic != MAGIC || overflow > 1 || len >= OVERFLOW_SPAN {
            return None;
        }
        Some(Header { generation, overflow: overflow == 1, len: usize::try_from(len).ok()? })
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
        Header { generation: 7, overflow: true, len: 5000 }.put(&mut page);
        let header = Header::parse(&page).unwrap();
        assert_eq!((header.generation, header.overflow, header.len), (7, true, 5000));
        assert!(Header::parse(&page[..HEADER - 1]).is_none(), "a short page");
        assert!(Header::parse(&[0u8; HEADER]).is_none(), "a page never written");
        let mut bad = page;
        bad[4] = 2;
        assert!(Header::parse(&bad).is_none(), "an overflow flag that is neither 0 nor 1");
        let mut huge = page;
        huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Header::parse(&huge).is_none(), "a length past the overflow range");
    }

    /// A header that claims more than the file holds (a stray write) reads as no value,
    /// without allocating what it claims.
    #[test]
    fn a_garbled_length_is_no_value_and_no_huge_allocation() {
        let mut slot = Slot::take().unwrap();
        let writer = slot.writer();
        let mut page = [0u8; HEADER];
        Header { generation: writer.generation, overflow: true, len: 40 << 30 }.put(&mut page);
        assert!(writer.pages.write(writer.page, &page));
        assert!(slot.read::<u32>().unwrap().is_none());
        slot.give_back();
    }

    /// A header on the page claiming a value longer than the page (without the overflow flag)
    /// reads as no value, and so does a slot whose page holds the previous generation.
    #[test]
    fn a_page_value_longer_than_the_page_or_of_another_generation_is_no_value() {
        let mut slot = Slot::take().unwrap();
        let (pages, at, generation) = (slot.pages, slot.page_offset(), slot.generation);
        let header = |generation, len| {
            let mut page = [0u8; HEADER];
            Header { generation, overflow: false, len }.put(&mut page);
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
}

//! Python's `multiprocessing.shared_memory.SharedMemory`: a block of bytes shared between
//! processes, anonymous or named.

use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::sys::shm::Mapping;

/// A block of shared bytes: Python's `multiprocessing.shared_memory.SharedMemory`.
///
/// - [`SharedMemory::new`]: anonymous (a sealed memfd). It reaches other processes like an
///   ipc end (inherited by fork, sent inside a value over a duplex
///   [`Connection`](crate::Connection), in a process's arguments) and is freed when the last
///   process holding it drops it or ends.
/// - [`SharedMemory::create`] / [`SharedMemory::open`]: named, a POSIX shared-memory object
///   (`/dev/shm/<name>`), the very object Python's `SharedMemory(name)` opens: a Rust and a
///   Python process attach to one block in either direction. It stays until someone calls
///   [`unlink`](SharedMemory::unlink): never removed behind anyone's back (no resource
///   tracker), and opening it prints nothing.
///
/// [`size`](SharedMemory::size) is the size asked for at creation, never a page-rounded one:
/// the object is truncated to exactly that size, which is also what Python reads (it takes the
/// size from `fstat`).
///
/// ```
/// # fn main() -> mproc_ipc::Result<()> {
/// let block = mproc_ipc::SharedMemory::new(100)?;
/// block.write(10, b"shared");
/// let mut buf = [0; 6];
/// block.read(10, &mut buf);
/// assert_eq!((&buf, block.size()), (b"shared", 100));
/// # Ok(()) }
/// ```
///
/// A named block, which another process (or Python) attaches to by name:
///
/// ```
/// # fn main() -> mproc_ipc::Result<()> {
/// use mproc_ipc::SharedMemory;
/// let block = SharedMemory::create_unique(64)?; // or `create("my_name", 64)`
/// let name = block.name().expect("named").to_owned();
/// let other = SharedMemory::open(&name)?; // in any process: the same bytes
/// block.write(0, b"hi");
/// assert_eq!((&other.to_vec()[..2], other.size()), (&b"hi"[..], 64));
/// block.unlink()?; // only an explicit unlink removes the name
/// # Ok(()) }
/// ```
///
/// Python attaches to it by the same name (and a block Python makes, Rust opens with
/// [`open`](SharedMemory::open)). Python 3.11's resource tracker would unlink a block that
/// a Python process merely attached to when that process ends (gh-82300), so the script
/// unregisters it (3.13: `track=False`):
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # if std::process::Command::new("python3").arg("-V").output().is_err() { return Ok(()); }
/// let block = mproc_ipc::SharedMemory::create_unique(16)?;
/// let script = "import sys
/// from multiprocessing import shared_memory, resource_tracker
/// shm = shared_memory.SharedMemory(name=sys.argv[1])
/// resource_tracker.unregister(shm._name, 'shared_memory')
/// shm.buf[:6] = b'python'
/// shm.close()";
/// let name = block.name().expect("named");
/// let status = std::process::Command::new("python3").args(["-c", script, name]).status()?;
/// assert!(status.success());
/// assert_eq!(&block.to_vec()[..6], b"python");
/// block.unlink()?;
/// # Ok(()) }
/// ```
///
/// A block past the process's file size limit (`ulimit -f`) is an error naming the limit
/// (the kernel would otherwise kill the process with `SIGXFSZ` when the file is sized).
///
/// # Caveats
///
/// - The bytes are plain memory other processes write at any time: coordinate with a lock
///   (or accept torn copies).
/// - A named block can be truncated by any process that may open it; a mapped page past the
///   new end then raises `SIGBUS` on access (as in C and Python). An anonymous block is
///   sealed and cannot shrink.
#[derive(Clone)]
pub struct SharedMemory {
    map: Arc<Mapping>,
    name: Option<String>,
}

impl std::fmt::Debug for SharedMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedMemory").field("name", &self.name).field("size", &self.size()).finish()
    }
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what.into())
}

/// The path `shm_open` takes for Python's `name` (which Python keeps without the slash).
fn shm_path(name: &str) -> io::Result<String> {
    let bare = name.strip_prefix('/').unwrap_or(name);
    if bare.is_empty() || bare.contains('/') || bare.contains('\0') || bare.len() > 250 {
        return Err(invalid(format!("invalid shared memory name {name:?}")));
    }
    Ok(format!("/{bare}"))
}

impl SharedMemory {
    /// A new anonymous block of `size` zero bytes.
    pub fn new(size: usize) -> crate::Result<SharedMemory> {
        Ok(SharedMemory { map: Arc::new(Mapping::anonymous("mproc-shared-memory", size)?), name: None })
    }

    /// A new named block of `size` zero bytes; an error if the name exists or `size` is 0
    /// (as Python's `SharedMemory(name, create=True, size)`).
    pub fn create(name: &str, size: usize) -> crate::Result<SharedMemory> {
        use rustix::fs::Mode;
        if size == 0 {
            return Err(invalid("a new shared memory block needs a size above 0").into());
        }
        let path = shm_path(name)?;
        let fd = rustix::shm::open(
            path.as_str(),
            rustix::shm::OFlags::CREATE | rustix::shm::OFlags::EXCL | rustix::shm::OFlags::RDWR,
            Mode::RUSR | Mode::WUSR,
        )?;
        let made = crate::sys::shm::set_len(&fd, size as u64).and_then(|()| Mapping::map(fd, size));
        match made {
            Ok(map) => Ok(SharedMemory { map: Arc::new(map), name: Some(path[1..].to_owned()) }),
            Err(e) => {
                let _ = rustix::shm::unlink(path.as_str());
                Err(e.into())
            }
        }
    }

    /// A new named block with a fresh name (`psm_` and random hex, as Python's), which
    /// [`name`](SharedMemory::name) tells.
    pub fn create_unique(size: usize) -> crate::Result<SharedMemory> {
        loop {
            let mut random = [0u8; 8];
            rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty())?;
            let name = format!("psm_{}", random.iter().map(|b| format!("{b:02x}")).collect::<String>());
            match SharedMemory::create(&name, size) {
                Err(crate::Error::Io(e)) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                other => return other,
            }
        }
    }

    /// Attaches to the named block `name` (made by this program, another Rust program or
    /// Python), whatever its size.
    pub fn open(name: &str) -> crate::Result<SharedMemory> {
        let path = shm_path(name)?;
        let fd = rustix::shm::open(path.as_str(), rustix::shm::OFlags::RDWR, rustix::fs::Mode::empty())?;
        let size = usize::try_from(rustix::fs::fstat(&fd)?.st_size).map_err(|_| invalid("negative size"))?;
        Ok(SharedMemory { map: Arc::new(Mapping::map(fd, size)?), name: Some(path[1..].to_owned()) })
    }

    /// The name (without Python's leading slash), or `None` for an anonymous block.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The size in bytes: as asked at creation.
    pub fn size(&self) -> usize {
        self.map.len()
    }

    /// Copies `dst.len()` bytes from `offset`. Panics if the range is outside the block.
    pub fn read(&self, offset: usize, dst: &mut [u8]) {
        self.map.read(offset, dst);
    }

    /// Copies `src` to `offset`. Panics if the range is outside the block.
    pub fn write(&self, offset: usize, src: &[u8]) {
        self.map.write(offset, src);
    }

    /// A copy of every byte.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0; self.size()];
        self.read(0, &mut v);
        v
    }

    /// Removes the name (Python's `unlink()`): processes attached keep the memory until they
    /// drop it; no one can open it by name any more. An anonymous block has no name: `Ok`.
    pub fn unlink(&self) -> crate::Result<()> {
        match &self.name {
            Some(name) => Ok(rustix::shm::unlink(format!("/{name}").as_str())?),
            None => Ok(()),
        }
    }
}

/// Travels as its fd (so an unlinked or anonymous block still arrives), name and size.
impl Serialize for SharedMemory {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (crate::fdpass::FdOf(self.map.fd().as_fd()), &self.name, self.size() as u64).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SharedMemory {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (fd, name, size) = <(crate::fdpass::FdIn, Option<String>, u64)>::deserialize(deserializer)?;
        let size = usize::try_from(size).map_err(D::Error::custom)?;
        // An anonymous block is sealed against shrinking (so a mapping of it never faults);
        // a peer's file that is not could be shrunk under the mapping (`SIGBUS`).
        if name.is_none() && !Mapping::cannot_shrink(&fd.0) {
            return Err(crate::codec::refuse(
                "an anonymous shared memory block whose file is not sealed against shrinking".into(),
            ));
        }
        let map = Mapping::map(fd.0, size)
            .map_err(|e| D::Error::custom(format!("cannot map shared memory: {e}")))?;
        Ok(SharedMemory { map: Arc::new(map), name })
    }
}

//! Where a [`Listener`](crate::Listener) listens and a [`Client`](crate::Client) connects.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::path::{Path, PathBuf};

/// A socket address: a Unix socket path, a Linux abstract name, or a TCP host and port.
///
/// Python spells these a path string, a string starting with `'\0'`, and a `(host, port)`
/// tuple; the same three reach the same sockets from here.
///
/// ```
/// use mproc_ipc::Address;
/// use std::net::Ipv6Addr;
/// let tcp: Address = ("127.0.0.1".parse::<std::net::IpAddr>().unwrap(), 6000).into();
/// let tcp6: Address = (Ipv6Addr::LOCALHOST, 0).into(); // port 0: the kernel picks one
/// let path: Address = std::path::Path::new("/tmp/app.sock").into();
/// let hidden = Address::abstract_name("app"); // Python: '\0app'
/// assert_eq!(tcp.to_string(), "127.0.0.1:6000");
/// assert_eq!(hidden.to_string(), "@app");
/// # let _ = (tcp6, path);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Address {
    /// A Unix socket at a path in the file system (removed when its listener is dropped).
    Unix(PathBuf),
    /// A Unix socket in Linux's abstract namespace: a name, not a file (nothing to remove).
    Abstract(Vec<u8>),
    /// A TCP socket, IPv4 or IPv6.
    Tcp(SocketAddr),
}

impl Address {
    /// A name in Linux's abstract socket namespace (without the leading NUL byte Python puts
    /// in front).
    pub fn abstract_name(name: impl AsRef<[u8]>) -> Address {
        Address::Abstract(name.as_ref().to_vec())
    }

    /// Whether connections at this address can carry ends (file descriptors): Unix sockets
    /// can, TCP cannot.
    pub fn carries_fds(&self) -> bool {
        !matches!(self, Address::Tcp(_))
    }
}

impl fmt::Display for Address {
    /// A path as it is, an abstract name after `@` (as `ss` shows it), a TCP address as
    /// `host:port` (`[v6]:port`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(path) => write!(f, "{}", path.display()),
            Address::Abstract(name) => write!(f, "@{}", String::from_utf8_lossy(name)),
            Address::Tcp(addr) => write!(f, "{addr}"),
        }
    }
}

impl From<SocketAddr> for Address {
    fn from(addr: SocketAddr) -> Self {
        Address::Tcp(addr)
    }
}

impl From<SocketAddrV4> for Address {
    fn from(addr: SocketAddrV4) -> Self {
        Address::Tcp(addr.into())
    }
}

impl From<SocketAddrV6> for Address {
    fn from(addr: SocketAddrV6) -> Self {
        Address::Tcp(addr.into())
    }
}

impl From<(IpAddr, u16)> for Address {
    fn from(addr: (IpAddr, u16)) -> Self {
        Address::Tcp(addr.into())
    }
}

impl From<(Ipv4Addr, u16)> for Address {
    fn from(addr: (Ipv4Addr, u16)) -> Self {
        Address::Tcp(addr.into())
    }
}

impl From<(Ipv6Addr, u16)> for Address {
    fn from(addr: (Ipv6Addr, u16)) -> Self {
        Address::Tcp(addr.into())
    }
}

impl From<PathBuf> for Address {
    fn from(path: PathBuf) -> Self {
        Address::Unix(path)
    }
}

impl From<&Path> for Address {
    fn from(path: &Path) -> Self {
        Address::Unix(path.to_path_buf())
    }
}

impl From<&Address> for Address {
    fn from(address: &Address) -> Self {
        address.clone()
    }
}

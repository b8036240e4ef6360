//! Hosts as network namespaces, for the pool's remote-worker figures: one namespace for the
//! pool, one per worker host, each joined to the pool's by a veth pair (`10.77.K.1` on the
//! pool's side, `10.77.K.2` on host K's). Names are unique to this process; the namespaces
//! are deleted on drop. (The pool's tests have their own copy, with the fault helpers.)

use std::process::{Command, Stdio};

/// The namespaces made for one run.
#[derive(Debug)]
pub struct Hosts {
    /// The pool's namespace.
    pub pool: String,
    /// The worker hosts' namespaces.
    pub hosts: Vec<String>,
}

/// Runs `ip args`; its error output if it failed.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Hosts {
    /// `n` worker hosts and the pool's; `Err` (why) where they cannot be made.
    pub fn new(n: usize) -> Result<Hosts, String> {
        let tag = format!("{:x}b", std::process::id());
        ip(&["netns", "add", &format!("mproc-{tag}-pool")])?;
        let mut hosts = Hosts { pool: format!("mproc-{tag}-pool"), hosts: Vec::new() };
        for h in 1..=n {
            let host = format!("mproc-{tag}-h{h}");
            ip(&["netns", "add", &host])?;
            hosts.hosts.push(host.clone());
            let (ours, theirs) = (format!("m{tag}{h}p"), format!("m{tag}{h}h"));
            ip(&[
                "link",
                "add",
                &ours,
                "netns",
                &hosts.pool,
                "type",
                "veth",
                "peer",
                "name",
                &theirs,
                "netns",
                &host,
            ])?;
            for (ns, dev, addr) in
                [(&hosts.pool, &ours, format!("10.77.{h}.1/24")), (&host, &theirs, format!("10.77.{h}.2/24"))]
            {
                ip(&["-n", ns, "addr", "add", &addr, "dev", dev])?;
                ip(&["-n", ns, "link", "set", dev, "up"])?;
            }
        }
        Ok(hosts)
    }

    /// `f()` on a thread inside the pool's namespace (the sockets it makes are there).
    pub fn in_pool_ns<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.pool);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("the pool's namespace");
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&ns),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .expect("setns");
            f()
        })
        .join()
        .expect("the thread in the pool's namespace")
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain([&self.pool]) {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

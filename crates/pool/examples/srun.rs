//! A pool whose workers Slurm places: the README's "Beyond one machine" program.
//!
//! Run inside an allocation, e.g. from this batch script (`sbatch squares.sbatch`):
//!
//! ```sh
//! #!/bin/bash
//! #SBATCH --job-name=squares
//! #SBATCH --nodes=4
//! #SBATCH --ntasks-per-node=8     # one worker per task: 32 workers
//! #SBATCH --time=00:30:00
//! # This script runs on the allocation's first node: the program is the pool there, and
//! # starts its workers over the whole allocation with srun.
//! exec ./target/release/examples/srun
//! ```
//!
//! or interactively: `salloc --ntasks=4 ./target/release/examples/srun`.

use std::net::Ipv4Addr;
use std::process::Child;
use std::time::Duration;

use mproc_pool::Pool;

fn square(x: u64) -> u64 {
    x * x
}

/// Where the task ran: Slurm's node name and rank.
fn placement(_: ()) -> String {
    let var = |name| std::env::var(name).unwrap_or_else(|_| "?".into());
    format!("{} rank {}", var("SLURMD_NODENAME"), var("SLURM_PROCID"))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    mproc_pool::init(); // in a worker started by srun: serves the pool, then exits
    let workers: usize =
        std::env::var("SLURM_NTASKS").map_err(|_| "run me inside a Slurm allocation")?.parse()?;
    let pool = Pool::builder().processes(0).listen((Ipv4Addr::UNSPECIFIED, 0)).build()?;
    // Workers on the other nodes reach this one by its name (Slurm's, in a batch script).
    let host = match std::env::var("SLURMD_NODENAME") {
        Ok(node) => node,
        Err(_) => std::fs::read_to_string("/proc/sys/kernel/hostname")?.trim().to_owned(),
    };
    let launcher = pool.launcher().expect("the pool listens").connect_to_host(&host);
    // srun --ntasks=N --export=ALL,MPROC_POOL_ADDR=node01:PORT,MPROC_POOL_AUTHKEY=... PROGRAM
    // From here on every error path kills and reaps srun (see `Srun`).
    let mut srun = Srun::from(launcher.srun(workers, std::env::current_exe()?).spawn()?);
    pool.wait_for_workers(workers, Duration::from_secs(120))?;

    let squares = pool.map(square, 0..1_000_000u64)?;
    println!("sum of 1,000,000 squares: {}", squares.iter().sum::<u64>());
    let mut places = pool.map_chunked(placement, vec![(); 4 * workers], 1)?;
    places.sort();
    places.dedup();
    println!("ran on: {}", places.join(", "));

    drop(pool); // the workers leave with the pool, and srun returns
    let status = srun.wait()?;
    println!("srun: {status}");
    Ok(())
}

/// The `srun` child, killed and reaped if dropped before it is waited for: whatever fails
/// after the launch (`wait_for_workers` most likely: too few workers came in time), `main`
/// returns its error without leaving `srun` and its workers running.
struct Srun(Option<Child>);

impl From<Child> for Srun {
    fn from(child: Child) -> Srun {
        Srun(Some(child))
    }
}

impl Srun {
    /// Waits for `srun` to end (once the pool is dropped, its workers leave and it does).
    fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        let status = self.0.as_mut().expect("waited for once").wait()?;
        self.0 = None;
        Ok(status)
    }
}

impl Drop for Srun {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};

    use super::*;

    /// `main` returning an error after starting `srun` (here: `wait_for_workers` failing)
    /// leaves no `srun` behind: it is killed and reaped.
    #[test]
    fn an_error_after_the_launch_kills_and_reaps_srun() {
        // Stands for srun: runs until its stdin closes, which this test holds open.
        let mut child = Command::new("cat").stdin(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
        let stdin_held = child.stdin.take();
        let pid = child.id();
        let run = move || -> Result<(), Box<dyn std::error::Error>> {
            let mut srun = Srun::from(child);
            Err("no workers came")?;
            srun.wait()?;
            Ok(())
        };
        assert!(run().is_err());
        // Reaped: gone from /proc (a live child, or a zombie not waited for, is still there).
        let gone = !std::path::Path::new(&format!("/proc/{pid}")).exists();
        drop(stdin_held);
        assert!(gone, "srun (pid {pid}) left running or unreaped after the error");
    }
}

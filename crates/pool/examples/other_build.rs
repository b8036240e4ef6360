//! A program of its own that can serve a pool as a remote worker: started with the
//! environment of a pool's `Launcher`, it connects, and a pool built from another program
//! refuses it at the handshake, naming both builds (mproc-pool's tests start it so).
//!
//! `cargo run -p mproc-pool --example other_build` alone just says what it is.

fn main() {
    mproc_pool::init();
    println!("not started as a worker: run me with a pool launcher's environment");
}

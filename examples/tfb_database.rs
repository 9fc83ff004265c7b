//! A throwaway PostgreSQL with the TechEmpower schema, for
//! `scripts/bench-tfb`: starts the cluster (`examples/support/pg_cluster.rs`,
//! as the tests do), prints `tfb_database: url <connection string>` and the
//! server's pid file, and keeps it running until SIGINT or SIGTERM; then
//! stops the server and removes the cluster's directory.
//!
//! ```text
//! cargo run --example tfb_database
//! ```

#[path = "support/pg_cluster.rs"]
mod pg_cluster;

fn main() {
    let cluster = pg_cluster::PgCluster::start();
    cluster.create_tfb_schema();
    // From here on SIGINT and SIGTERM are only waited for, so the cluster's
    // destructor runs. (Blocked only now: the server, started above, does
    // not inherit the mask.)
    // SAFETY: `set` is a local, initialised by `sigemptyset` before use;
    // `sigwait` gets valid pointers to it and to `sig`.
    let sig = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        println!("tfb_database: url {}", cluster.url("hello_world"));
        println!(
            "tfb_database: pid file {}/data/postmaster.pid",
            cluster.socket_dir().display()
        );
        let mut sig = 0;
        libc::sigwait(&set, &mut sig);
        sig
    };
    eprintln!("tfb_database: signal {sig}, stopping");
    drop(cluster);
}

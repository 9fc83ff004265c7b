//! A throwaway PostgreSQL cluster for tests, examples and benchmarks: its
//! own data directory under the system temp dir, its own server process on
//! a free loopback port (its unix socket in that directory), stopped and
//! removed when the [`PgCluster`] is dropped — also when a test panics.
//!
//! ```text
//! let pg = PgCluster::start();          // initdb + postgres, waits until ready
//! pg.create_tfb_schema();               // World (10,000 rows) and Fortune (12)
//! let url = pg.url("hello_world");      // host=127.0.0.1 port=… user=postgres dbname=…
//! ```
//!
//! The server binaries are looked up on `PATH` and in Debian's
//! `/usr/lib/postgresql/<version>/bin` (newest first). If they are missing
//! this panics with the command that installs them: the tests that need a
//! database never skip.
//!
//! `initdb` and `postgres` refuse to run as root. Run as root, both run as
//! the `postgres` user (through `setpriv`, which `exec`s, so the child
//! process is the server itself and a signal reaches it), and the directory
//! is handed to that user; as anyone else they run as the caller.
//!
//! Shared by `tests/` (through `#[path]`) and `examples/` — it uses only std
//! and `libc`.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The command that installs the server binaries on Debian.
pub const INSTALL_HINT: &str = "apt-get install -y postgresql";

/// A running throwaway cluster; dropping it stops the server (fast
/// shutdown) and removes its directory.
pub struct PgCluster {
    /// The temp directory: `data/` (the cluster), the unix socket, the log.
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    /// `Some` of the `postgres` user's (uid, gid) when run as root.
    owner: Option<(u32, u32)>,
    server: Option<Child>,
}

impl PgCluster {
    /// Creates a cluster with `initdb` and starts its server; returns once
    /// it accepts connections.
    ///
    /// # Panics
    ///
    /// If the binaries are missing (the message names [`INSTALL_HINT`]), or
    /// `initdb` or the server fail (the message carries their output).
    pub fn start() -> PgCluster {
        let bin = find_bin_dir();
        let owner = if geteuid() == 0 {
            Some(postgres_user())
        } else {
            None
        };
        let dir = make_temp_dir();
        let mut cluster = PgCluster {
            dir,
            bin,
            port: free_port(),
            owner,
            server: None,
        };
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&cluster.dir, Some(uid), Some(gid))
                .expect("chown the cluster's temp dir to the postgres user");
        }
        let data = cluster.data_dir();
        let out = cluster
            .command("initdb")
            .args(["-D"])
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.start_server();
        cluster
    }

    /// The TCP port the server listens on (loopback only).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id of the running server (the postmaster), if running.
    pub fn server_pid(&self) -> Option<u32> {
        self.server.as_ref().map(Child::id)
    }

    /// The server's TCP address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The directory holding the server's unix socket
    /// (`.s.PGSQL.<port>`).
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// The path of the server's unix socket.
    pub fn socket_path(&self) -> PathBuf {
        self.dir.join(format!(".s.PGSQL.{}", self.port))
    }

    /// A libpq-style connection string for database `dbname` over TCP.
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={dbname}",
            self.port
        )
    }

    /// Runs `sql` through `psql` (as user `postgres`, stopping at the first
    /// error) in database `dbname`; returns its output (unaligned, tuples
    /// only). Panics with psql's error if a statement fails.
    pub fn psql(&self, dbname: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .arg("-h")
            .arg(&self.dir)
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", dbname])
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql failed ({}) on {sql:?}:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("psql output is UTF-8")
    }

    /// Creates database `hello_world` with the TechEmpower schema: `World`
    /// (10,000 rows, random numbers in 1..=10000) and `Fortune` (the 12
    /// published rows, with the `<script>` row and the Japanese one that
    /// test escaping and UTF-8).
    pub fn create_tfb_schema(&self) {
        self.psql("postgres", "CREATE DATABASE hello_world");
        self.psql("hello_world", TFB_SCHEMA);
    }

    /// Stops the server (fast shutdown: open connections are closed) and
    /// starts it again on the same port and data, as a database restart
    /// does. Returns once it accepts connections again.
    pub fn restart(&mut self) {
        self.stop_server();
        self.start_server();
    }

    /// Stops the server (fast shutdown) and leaves it stopped.
    pub fn stop(&mut self) {
        self.stop_server();
    }

    /// Starts the server again after [`stop`](Self::stop).
    pub fn start_again(&mut self) {
        self.start_server();
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// `bin/<name>`, run as the `postgres` user when we are root.
    fn command(&self, name: &str) -> Command {
        let exe = self.bin.join(name);
        match self.owner {
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--init-groups")
                    .arg("--")
                    .arg(exe)
                    // The caller's cwd may be unreadable for that user.
                    .current_dir(&self.dir);
                c
            }
            None => Command::new(exe),
        }
    }

    fn start_server(&mut self) {
        let log = std::fs::File::create(self.log_path()).expect("create the server log");
        if let Some((uid, gid)) = self.owner {
            let _ = std::os::unix::fs::chown(self.log_path(), Some(uid), Some(gid));
        }
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-k")
            .arg(&self.dir)
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            // A throwaway cluster: durability buys nothing here.
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=300"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup the log"))
            .stderr(log)
            .spawn()
            .expect("start postgres");
        self.server = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self
                .server
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.server = None;
                panic!(
                    "postgres exited at start ({status}); its log:\n{}",
                    std::fs::read_to_string(self.log_path()).unwrap_or_default()
                );
            }
            let ready = Command::new(self.bin.join("pg_isready"))
                .arg("-h")
                .arg(&self.dir)
                .args(["-p", &self.port.to_string(), "-U", "postgres", "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not accept connections within 60 s; its log:\n{}",
                std::fs::read_to_string(self.log_path()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGINT (fast shutdown), then SIGKILL if it has not exited in 20 s.
    fn stop_server(&mut self) {
        let Some(mut child) = self.server.take() else {
            return;
        };
        // SAFETY: `kill` with a valid signal on a pid we spawned and have
        // not yet reaped (so it cannot have been reused).
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop_server();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The TechEmpower schema and rows (as in the benchmark's
/// `create-postgres.sql`; unquoted names fold to lower case).
pub const TFB_SCHEMA: &str = r#"
CREATE TABLE World (
  id integer NOT NULL,
  randomNumber integer NOT NULL default 0,
  PRIMARY KEY (id)
);
INSERT INTO World (id, randomnumber)
SELECT x.id, least(floor(random() * 10000 + 1), 10000)
FROM generate_series(1, 10000) AS x(id);

CREATE TABLE Fortune (
  id integer NOT NULL,
  message varchar(2048) NOT NULL,
  PRIMARY KEY (id)
);
INSERT INTO Fortune (id, message) VALUES
  (1, 'fortune: No such file or directory'),
  (2, 'A computer scientist is someone who fixes things that aren''t broken.'),
  (3, 'After enough decimal places, nobody gives a damn.'),
  (4, 'A bad random number generator: 1, 1, 1, 1, 1, 4.33e+67, 1, 1, 1'),
  (5, 'A computer program does what you tell it to do, not what you want it to do.'),
  (6, 'Emacs is a nice operating system, but I prefer UNIX. — Tom Christaensen'),
  (7, 'Any program that runs right is obsolete.'),
  (8, 'A list is only as strong as its weakest link. — Donald Knuth'),
  (9, 'Feature: A bug with seniority.'),
  (10, 'Computers make very fast, very accurate mistakes.'),
  (11, '<script>alert("This should not be displayed in a browser alert box.");</script>'),
  (12, 'フレームワークのベンチマーク');
"#;

/// The directory holding `initdb`, `postgres`, `pg_isready` and `psql`:
/// `PATH` first, then Debian's versioned directories, newest first.
fn find_bin_dir() -> PathBuf {
    let has_all = |d: &Path| {
        ["initdb", "postgres", "pg_isready", "psql"]
            .iter()
            .all(|b| d.join(b).is_file())
    };
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<(u32, PathBuf)> = entries
            .flatten()
            .filter_map(|e| {
                let v = e.file_name().to_str()?.parse().ok()?;
                Some((v, e.path().join("bin")))
            })
            .collect();
        versions.sort_by_key(|v| std::cmp::Reverse(v.0));
        candidates.extend(versions.into_iter().map(|(_, p)| p));
    }
    candidates
        .into_iter()
        .find(|d| has_all(d))
        .unwrap_or_else(|| {
            panic!(
                "PostgreSQL's server binaries (initdb, postgres, pg_isready, psql) were not \
             found on PATH or in /usr/lib/postgresql/<version>/bin. Install them: \
             `{INSTALL_HINT}` (as root; scripts/test does it for you)"
            )
        })
}

/// The `postgres` system user's uid and gid (Debian's package creates it).
fn postgres_user() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("run id");
        assert!(
            out.status.success(),
            "running as root, the cluster runs as the `postgres` user, which does not \
             exist; `{INSTALL_HINT}` creates it"
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("numeric id")
    };
    (id("-u"), id("-g"))
}

fn geteuid() -> u32 {
    // SAFETY: `geteuid` has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// A new, empty directory under the system temp dir, unique to this process
/// and call.
fn make_temp_dir() -> PathBuf {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "greenhack-pg-{}-{}-{nanos}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir(&dir).expect("create the cluster's temp dir");
    dir
}

/// A loopback port that was free a moment ago (the OS picked it).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

//! The sync PostgreSQL layer of `examples/support/pg.rs` against a real
//! server: a throwaway cluster per test (`examples/support/pg_cluster.rs`),
//! tokio-postgres over greenhack's sockets on greenhack's loop.

#![cfg(feature = "tokio")]

#[path = "../examples/support/pg.rs"]
mod pg;
#[path = "../examples/support/pg_cluster.rs"]
mod pg_cluster;

use std::rc::Rc;
use std::time::{Duration, Instant};

use pg::{Client, Pool};
use pg_cluster::PgCluster;
use tokio_postgres::error::SqlState;

#[test]
fn queries_and_prepared_statements_over_tcp_and_unix_socket() {
    let cluster = PgCluster::start();
    let tcp = cluster.url("postgres");
    let unix = format!(
        "host={} port={} user=postgres dbname=postgres",
        cluster.socket_dir().display(),
        cluster.port()
    );
    greenhack::run(|| {
        let db = Client::connect(&tcp).unwrap();
        db.batch_execute("CREATE TABLE t (id int PRIMARY KEY, name text NOT NULL)")
            .unwrap();
        let n = db
            .execute(
                "INSERT INTO t VALUES ($1, $2), ($3, $4)",
                &[&1i32, &"one", &2i32, &"two"],
            )
            .unwrap();
        assert_eq!(n, 2);
        let rows = db.query("SELECT id, name FROM t ORDER BY id", &[]).unwrap();
        let got: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        assert_eq!(got, [(1, "one".to_owned()), (2, "two".to_owned())]);

        let by_id = db.prepare("SELECT name FROM t WHERE id = $1").unwrap();
        let name: String = db.query_one(&by_id, &[&2i32]).unwrap().get(0);
        assert_eq!(name, "two");
        assert!(db.query_opt(&by_id, &[&3i32]).unwrap().is_none());
        let err = db.query_one(&by_id, &[&3i32]).unwrap_err();
        assert!(
            err.to_string().contains("unexpected number of rows"),
            "{err}"
        );

        // prepare_cached: one statement per SQL text per connection.
        let prepared = || -> i64 {
            db.query_one("SELECT count(*) FROM pg_prepared_statements", &[])
                .unwrap()
                .get(0)
        };
        let before = prepared();
        db.prepare_cached("SELECT $1::int + 1").unwrap();
        let b = db.prepare_cached("SELECT $1::int + 1").unwrap();
        assert_eq!(prepared(), before + 1, "prepared once, then reused");
        assert_eq!(db.query_one(&b, &[&41i32]).unwrap().get::<_, i32>(0), 42);

        // A server-side error is the driver's error with its SQLSTATE.
        let err = db
            .execute("INSERT INTO t VALUES (1, 'again')", &[])
            .unwrap_err();
        assert_eq!(err.code(), Some(&SqlState::UNIQUE_VIOLATION));

        // The same over the unix socket.
        let local = Client::connect(&unix).unwrap();
        let count: i64 = local
            .query_one("SELECT count(*) FROM t", &[])
            .unwrap()
            .get(0);
        assert_eq!(count, 2);
    });
}

#[test]
fn cluster_is_stopped_and_removed_when_a_test_panics() {
    let mut seen = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let cluster = PgCluster::start();
        seen = Some((
            cluster.socket_dir().to_owned(),
            cluster.server_pid().expect("running"),
        ));
        panic!("a failing test");
    }));
    assert!(result.is_err());
    let (dir, pid) = seen.unwrap();
    assert!(!dir.exists(), "{dir:?} left behind");
    // The server was stopped and reaped by the cluster's destructor.
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "postgres (pid {pid}) still running"
    );
}

#[test]
fn connect_failure_is_the_drivers_error_naming_the_cause() {
    // A port nobody listens on (bound, then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = greenhack::run(|| {
        Client::connect(&format!("host=127.0.0.1 port={port} user=postgres"))
            .err()
            .expect("nothing listens there")
    });
    let source = std::error::Error::source(&err)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .expect("the io::Error is kept as the source");
    assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused);
    // tokio-postgres's Display says only "error communicating with the
    // server"; the cause is the source, as error-chain printers show it.
    assert!(format!("{err:?}").contains("ConnectionRefused"), "{err:?}");
}

#[test]
fn transactions_commit_roll_back_and_roll_back_on_drop() {
    let cluster = PgCluster::start();
    let url = cluster.url("postgres");
    greenhack::run(|| {
        let mut db = Client::connect(&url).unwrap();
        db.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
            .unwrap();

        let tx = db.transaction().unwrap();
        tx.execute("INSERT INTO t VALUES (1)", &[]).unwrap();
        tx.commit().unwrap();

        let tx = db.transaction().unwrap();
        tx.execute("INSERT INTO t VALUES (2)", &[]).unwrap();
        tx.rollback().unwrap();

        // An early return through `?` drops the transaction: rolled back.
        let failing = |db: &mut Client| -> Result<(), tokio_postgres::Error> {
            let tx = db.transaction()?;
            tx.execute("INSERT INTO t VALUES (3)", &[])?;
            tx.execute("INSERT INTO t VALUES (1)", &[])?; // duplicate: fails
            tx.commit()
        };
        let err = failing(&mut db).unwrap_err();
        assert_eq!(err.code(), Some(&SqlState::UNIQUE_VIOLATION));

        // A panic inside a transaction, in a greenlet: unwinding drops it.
        let panicked = greenhack::spawn({
            let url = url.clone();
            move || {
                let mut own = Client::connect(&url).unwrap();
                let tx = own.transaction().unwrap();
                tx.execute("INSERT INTO t VALUES (4)", &[]).unwrap();
                panic!("handler bug");
            }
        })
        .join()
        .unwrap_err();
        assert_eq!(
            panicked.into_panic().downcast_ref::<&str>(),
            Some(&"handler bug")
        );

        let ids: Vec<i32> = db
            .query("SELECT id FROM t ORDER BY id", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(ids, [1], "only the committed row remains");
    });
}

#[test]
fn pool_serves_200_concurrent_greenlets_on_few_connections() {
    let cluster = PgCluster::start();
    let url = cluster.url("postgres");
    let results = greenhack::run(|| {
        let pool = Rc::new(Pool::new(&url, 4).unwrap());
        pool.get()
            .unwrap()
            .batch_execute("CREATE TABLE t (id int PRIMARY KEY, doubled int)")
            .unwrap();
        let handles: Vec<_> = (0..200)
            .map(|i: i32| {
                let pool = pool.clone();
                greenhack::spawn(move || {
                    let db = pool.get().unwrap();
                    // Every greenlet waits in the server at the same time.
                    let sleep = db
                        .prepare_cached("SELECT $1::int * 2, pg_sleep(0.05)::text")
                        .unwrap();
                    let doubled: i32 = db.query_one(&sleep, &[&i]).unwrap().get(0);
                    db.execute("INSERT INTO t VALUES ($1, $2)", &[&i, &doubled])
                        .unwrap();
                    doubled
                })
            })
            .collect();
        let start = Instant::now();
        let results: Vec<i32> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let elapsed = start.elapsed();
        // 200 × 50 ms run pipelined on 4 connections: 50 per connection,
        // ~2.5 s; one at a time would take 10 s.
        assert!(
            elapsed < Duration::from_secs(8),
            "took {elapsed:?}: not concurrent"
        );
        let db = pool.get().unwrap();
        let stored: i64 = db
            .query_one("SELECT count(*) FROM t WHERE doubled = id * 2", &[])
            .unwrap()
            .get(0);
        assert_eq!(stored, 200);
        let backends: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'",
                &[],
            )
            .unwrap()
            .get(0);
        assert!(backends <= 4, "{backends} connections for a pool of 4");
        results
    });
    assert_eq!(results, (0..200).map(|i| i * 2).collect::<Vec<_>>());
}

#[test]
fn database_restart_fails_requests_in_flight_and_later_ones_reconnect() {
    let mut cluster = PgCluster::start();
    let url = cluster.url("postgres");
    greenhack::run(|| {
        let pool = Rc::new(Pool::new(&url, 2).unwrap());
        // Connect both slots, then put long queries in flight on them.
        let issued = Rc::new(std::cell::Cell::new(0));
        let in_flight: Vec<_> = (0..6)
            .map(|_| {
                let (pool, issued) = (pool.clone(), issued.clone());
                greenhack::spawn(move || {
                    let db = pool.get().unwrap();
                    issued.set(issued.get() + 1);
                    db.query_one("SELECT pg_sleep(30)::text", &[]).map(|_| ())
                })
            })
            .collect();
        // The queries reach the server: every greenlet has issued its query
        // and both connections are busy in pg_sleep (not a fixed delay: under
        // Valgrind 300 ms was not enough, and a query sent after the
        // restart succeeded).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            greenhack::sleep(Duration::from_millis(20));
            let sleeping = cluster.psql(
                "postgres",
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%'",
            );
            if issued.get() == 6 && sleeping.trim() == "2" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the queries never reached the server"
            );
        }
        greenhack::sleep(Duration::from_millis(50)); // the rest sit in the pipelines
        cluster.restart(); // blocks this thread: a restart outside our control
        for h in in_flight {
            let err = h
                .join()
                .unwrap()
                .expect_err("the server went away mid-query");
            assert!(
                err.code() == Some(&SqlState::ADMIN_SHUTDOWN) || err.is_closed(),
                "unexpected error: {err}"
            );
        }
        // Later requests succeed on new connections, with no intervention;
        // the 100 of them share the pool's 2 reconnected connections (one
        // greenlet reconnects a slot while the others wait for it).
        let later: Vec<_> = (0..100)
            .map(|i: i32| {
                let pool = pool.clone();
                greenhack::spawn(move || {
                    let db = pool.get().unwrap();
                    let row = db
                        .query_one("SELECT $1::int, pg_backend_pid()", &[&i])
                        .unwrap();
                    (row.get::<_, i32>(0), row.get::<_, i32>(1))
                })
            })
            .collect();
        let got: Vec<(i32, i32)> = later.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(
            got.iter().map(|g| g.0).collect::<Vec<_>>(),
            (0..100).collect::<Vec<_>>()
        );
        let backends: std::collections::HashSet<i32> = got.iter().map(|g| g.1).collect();
        assert_eq!(backends.len(), 2, "one new connection per pool slot");
    });
}

//! The examples, run as their own processes and driven like a user would.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A command running example `name` (built by `util::example_path`).
fn example(name: &str) -> Command {
    util::command(&util::example_path(name))
}

/// A one-shot HTTP server on a std thread: answers `count` requests with a
/// fixed body, then stops.
fn tiny_http_server(body: &'static str, count: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(count) {
            let mut stream = stream.unwrap();
            // Read the whole request head before answering and closing.
            let mut req = Vec::new();
            let mut byte = [0u8; 1];
            while !req.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                req.push(byte[0]);
            }
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

/// Kills the child when the test ends, passing or not.
struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a server example on an ephemeral port; returns it and its address
/// (parsed from its "listening on" line).
fn start_server(name: &str) -> (KillOnDrop, String) {
    start_server_with(name, &[])
}

/// [`start_server`] with more command line arguments.
fn start_server_with(name: &str, args: &[&str]) -> (KillOnDrop, String) {
    let mut child = example(name)
        .arg("127.0.0.1:0")
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .rsplit(' ')
        .next()
        .expect("listening line")
        .to_string();
    (KillOnDrop(child), addr)
}

#[test]
fn repl_runs_requests_concurrently_from_piped_stdin() {
    let a = tiny_http_server("alpha", 2);
    let b = tiny_http_server("bravo!", 1);
    let (_closed, refused) = util::closed_port();
    let refused = refused.to_string();
    let mut child = example("repl")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = format!("get {a} {b} {refused}\nbg get {a}\nsleep 50\nbogus\nquit\n");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Results in argument order, each with its status line and size.
    let lines: Vec<&str> = stdout.lines().collect();
    let pos = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle:?} missing from:\n{stdout}"))
    };
    let ia = pos(&format!("{a}: HTTP/1.1 200 OK ("));
    let ib = pos(&format!("{b}: HTTP/1.1 200 OK ("));
    let ir = pos(&format!("{refused}: error: Connection refused"));
    assert!(ia < ib && ib < ir, "{stdout}");
    assert!(
        stdout.contains(&format!("started background fetch of {a}")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("[bg] {a}: HTTP/1.1 200 OK")),
        "{stdout}"
    );
    assert!(
        stdout.contains("commands: get ADDR"),
        "help for a bad command:\n{stdout}"
    );
    assert!(stdout.trim_end().ends_with("bye"), "{stdout}");
}

#[test]
fn echo_example_echoes_for_concurrent_clients() {
    echo_for_concurrent_clients(&[]);
}

/// Each connection on a sliced greenlet (`Builder::sliced`).
#[test]
fn echo_example_on_sliced_greenlets_echoes_for_concurrent_clients() {
    echo_for_concurrent_clients(&["--sliced"]);
}

/// Two loops, one listener, connections handed to the least loaded loop.
#[test]
fn echo_example_balanced_over_two_loops_echoes_for_concurrent_clients() {
    echo_for_concurrent_clients(&["--threads", "2", "--balanced"]);
}

fn echo_for_concurrent_clients(args: &[&str]) {
    let (_server, addr) = start_server_with("echo", args);
    let clients: Vec<_> = (0..8u8)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(&addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let msg: Vec<u8> = (0..10_000u32).map(|j| (j as u8) ^ i).collect();
                s.write_all(&msg).unwrap();
                let mut back = vec![0u8; msg.len()];
                s.read_exact(&mut back).unwrap();
                assert_eq!(back, msg);
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
}

#[test]
fn http_example_keeps_alive_and_pipelines() {
    http_keeps_alive_and_pipelines(&[]);
}

#[test]
fn http_example_on_sliced_greenlets_balanced_over_two_loops_keeps_alive_and_pipelines() {
    http_keeps_alive_and_pipelines(&["--threads", "2", "--balanced", "--sliced"]);
}

/// The same server with its loop hosted inside tokio (issue 11).
#[cfg(feature = "tokio")]
#[test]
fn http_example_hosted_in_tokio_keeps_alive_and_pipelines() {
    http_keeps_alive_and_pipelines(&["--hosted"]);
}

fn http_keeps_alive_and_pipelines(args: &[&str]) {
    let (_server, addr) = start_server_with("http", args);
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Two pipelined requests on one connection, then a third after reading.
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /again HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let one =
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 13\r\n\r\nHello, world!";
    let mut buf = vec![0u8; one.len() * 2];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(String::from_utf8_lossy(&buf), one.repeat(2));
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut rest = String::new();
    s.read_to_string(&mut rest).unwrap();
    assert_eq!(
        rest,
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 13\r\nconnection: close\r\n\r\nHello, world!"
    );
}

#[cfg(feature = "tokio")]
#[test]
fn axum_sync_answers_orders_from_its_sync_handler() {
    let (_server, addr) = start_server("axum_sync");
    for (dish, id) in [("margherita", 1), ("quattro", 2)] {
        let mut conn = TcpStream::connect(&addr).unwrap();
        write!(
            conn,
            "POST /order/{dish} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut resp = String::new();
        conn.read_to_string(&mut resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 200 OK"), "{resp}");
        // The kitchen's minutes: 10 + the length of "ID DISH\n" modulo 20.
        let minutes = 10 + format!("{id} {dish}\n").len() % 20;
        assert!(
            resp.ends_with(&format!(
                "\r\n\r\norder {id}: {dish}, ready in {minutes} min\n"
            )),
            "{resp}"
        );
    }
}

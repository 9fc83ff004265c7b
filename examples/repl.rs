//! A line-oriented console tool with no event loop of its own: it calls
//! `greenhack::start_loop()` and from then on plain code runs network
//! requests concurrently with spawned greenlets.
//!
//! ```text
//! cargo run --example repl
//! > get 127.0.0.1:8080 127.0.0.1:8081      fetch several servers at once
//! > bg get 127.0.0.1:8080                  fetch in the background
//! > jobs                                   how many background fetches run
//! > sleep 100                              wait (background work continues)
//! > quit                                   (or end of input) waits for jobs
//! ```
//!
//! Standard input is read on a helper thread and handed over through a
//! channel, so that while the prompt waits for a line, background greenlets
//! keep running: `exempt(lines.recv())` is the only place the main code
//! waits for input.

use std::cell::Cell;
use std::io::{self, BufRead, Read, Write};
use std::rc::Rc;
use std::time::Duration;

use greenhack::net::TcpStream;

fn main() {
    greenhack::start_loop();

    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let background = Rc::new(Cell::new(0usize));
    let mut jobs = Vec::new();
    loop {
        prompt();
        let Some(line) = greenhack::exempt(lines.recv()) else {
            break;
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [] => {}
            ["quit"] | ["exit"] => break,
            ["get", addrs @ ..] if !addrs.is_empty() => {
                // One greenlet per address; results printed in order.
                let handles: Vec<_> = addrs
                    .iter()
                    .map(|a| {
                        let a = a.to_string();
                        greenhack::spawn(move || fetch(&a))
                    })
                    .collect();
                for (addr, h) in addrs.iter().zip(handles) {
                    println!("{addr}: {}", h.join().expect("fetch greenlet panicked"));
                }
            }
            ["bg", "get", addr] => {
                let addr = addr.to_string();
                let count = background.clone();
                count.set(count.get() + 1);
                jobs.push(greenhack::spawn(move || {
                    let result = fetch(&addr);
                    count.set(count.get() - 1);
                    println!("[bg] {addr}: {result}");
                }));
                println!("started background fetch of {}", words[2]);
            }
            ["jobs"] => println!("{} background fetch(es) running", background.get()),
            ["sleep", ms] => match ms.parse() {
                Ok(ms) => greenhack::sleep(Duration::from_millis(ms)),
                Err(_) => println!("usage: sleep MILLISECONDS"),
            },
            _ => println!("commands: get ADDR..., bg get ADDR, jobs, sleep MS, quit"),
        }
    }
    if background.get() > 0 {
        println!("waiting for {} background fetch(es)", background.get());
    }
    for job in jobs {
        let _ = job.join();
    }
    println!("bye");
}

fn prompt() {
    print!("> ");
    let _ = io::stdout().flush();
}

/// Sends `GET /` to `addr` and summarises the response: its status line and
/// size, or the error, as std would report it.
fn fetch(addr: &str) -> String {
    let attempt = || -> io::Result<String> {
        let mut stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        // One write: a server may answer (and close) after its first read.
        let request = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes())?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let status = response
            .split(|&b| b == b'\r' || b == b'\n')
            .next()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .unwrap_or_default();
        Ok(format!("{status} ({} bytes)", response.len()))
    };
    attempt().unwrap_or_else(|e| format!("error: {e}"))
}

//! The benchmark servers' command line: `[ADDR] [--threads N]`, shared by
//! greenhack's servers (through `threads.rs`) and their peers.

/// What the command line asked for.
pub struct ServerArgs {
    /// Where to listen.
    pub addr: String,
    /// `--threads N`: how many loops (greenhack), workers (may) or
    /// multi-thread workers (tokio); `None` when not given.
    pub threads: Option<usize>,
}

/// Parses `[ADDR] [--threads N]` (or `--threads=N`), in any order; on bad
/// input prints the usage and exits with status 2.
pub fn server_args(default_addr: &str) -> ServerArgs {
    let mut out = ServerArgs {
        addr: default_addr.to_owned(),
        threads: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = match arg.strip_prefix("--threads") {
            Some("") => args.next(),
            Some(v) if v.starts_with('=') => Some(v[1..].to_owned()),
            Some(_) => usage(&format!("unknown option {arg}")),
            None if arg.starts_with('-') => usage(&format!("unknown option {arg}")),
            None => {
                out.addr = arg;
                continue;
            }
        };
        match value.as_deref().map(str::parse::<usize>) {
            Some(Ok(n)) if n > 0 => out.threads = Some(n),
            _ => usage("--threads takes a positive number"),
        }
    }
    out
}

fn usage(why: &str) -> ! {
    let exe = std::env::args().next().unwrap_or_else(|| "server".into());
    eprintln!("{exe}: {why}\nusage: {exe} [ADDR] [--threads N]");
    std::process::exit(2)
}

//! The note greenhack adds after tokio's "there is no reactor running"
//! panic (feature `tokio`): a tokio future used on greenhack's standalone
//! loop (a `tokio::time::sleep` created in a greenlet, a tokio socket or
//! client exempted there) panics with tokio's message, which does not say
//! that the fix is to start the loop with tokio underneath. The first loop
//! of the process installs a panic hook that calls the hook it replaced,
//! then, for that one panic on a thread running greenhack's loop with no
//! tokio runtime underneath, prints the note. A hook set later replaces it,
//! as any hook does. (Here, not in `crate::tokio`: the loop installs it
//! when it is created, and the reactor does not call up into the layers
//! above it.)

/// The note added after tokio's missing-runtime panic.
const MISSING_RUNTIME_NOTE: &str = "note: greenhack: this thread runs greenhack's loop with no \
    tokio runtime underneath, so tokio's timers, sockets and clients cannot work in its \
    greenlets; start the loop with tokio underneath, on the same thread: \
    greenhack::tokio::run(|| ..) instead of greenhack::run, or greenhack::tokio::start_loop() \
    (for a Runtime's loops: greenhack::runtime::Builder::tokio(true))";

/// Installs, once per process, the panic hook that adds
/// [`MISSING_RUNTIME_NOTE`] after tokio's missing-runtime panic on a thread
/// whose greenhack loop has no tokio runtime underneath; every panic first
/// goes to the hook it replaced. Called when a thread's loop is created.
pub(super) fn install() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    // `set_hook` panics on a panicking thread: a loop created by a
    // destructor during an unwind leaves it to the next one.
    if std::thread::panicking() {
        return;
    }
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            if is_missing_runtime_panic(info.payload())
                && super::Reactor::try_current().is_some()
                && !super::hosted::HostRuntime::is_installed()
            {
                // Not `eprintln!`, which panics (in a panic hook: an
                // abort) if standard error is closed.
                let _ = std::io::Write::write_all(
                    &mut std::io::stderr(),
                    format!("{MISSING_RUNTIME_NOTE}\n").as_bytes(),
                );
            }
        }));
    });
}

/// True for the payload of tokio's panic when a tokio resource is used
/// outside any tokio runtime ("there is no reactor running, must be called
/// from the context of a Tokio 1.x runtime").
fn is_missing_runtime_panic(payload: &(dyn std::any::Any + Send)) -> bool {
    let msg = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("");
    msg.contains("must be called from the context of a Tokio 1.x runtime")
}

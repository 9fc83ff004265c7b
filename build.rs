//! Assembles the context switch for the target architecture.
//!
//! The switch and the greenlet entry trampoline are written in assembly
//! (`asm/<arch>.S`) rather than in `global_asm!` so that the frame drawings,
//! offset grid and CFI live in one file per architecture, readable on their
//! own. Only x86_64 (System V) and aarch64 (AAPCS64) are implemented; any other
//! target is refused here with a message, not at link time with an undefined
//! symbol.

use std::env;

fn main() {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let file = match arch.as_str() {
        "x86_64" => "asm/x86_64.S",
        "aarch64" => "asm/aarch64.S",
        other => {
            eprintln!(
                "greenhack: unsupported target architecture `{other}`: the context switch exists \
                 for x86_64 (System V) and aarch64 (AAPCS64) only"
            );
            std::process::exit(1);
        }
    };
    if !matches!(os.as_str(), "linux" | "android") {
        eprintln!(
            "greenhack: unsupported target OS `{os}`: stacks, guard pages and the overflow \
             handler are implemented for Linux only"
        );
        std::process::exit(1);
    }
    println!("cargo:rerun-if-changed={file}");
    println!("cargo:rerun-if-changed=build.rs");
    let mut build = cc::Build::new();
    build.file(file);
    // Save the floating-point control registers across switches (MXCSR and
    // the x87 control word; FPCR on aarch64): see the `fp-control` feature.
    if env::var_os("CARGO_FEATURE_FP_CONTROL").is_some() {
        build.define("GREENHACK_FP_CONTROL", None);
    }
    // The AddressSanitizer fiber annotations (src/asan.rs) are compiled in
    // only when the target is built with ASan (RUSTFLAGS=-Zsanitizer=address),
    // where the __sanitizer_* functions exist; `cfg(sanitize)` itself is
    // unstable, so it is passed on as a cfg of our own.
    println!("cargo:rustc-check-cfg=cfg(greenhack_asan)");
    let sanitize = env::var("CARGO_CFG_SANITIZE").unwrap_or_default();
    if sanitize.split(',').any(|s| s == "address") {
        println!("cargo:rustc-cfg=greenhack_asan");
    }
    build.compile("greenhack_switch");
}

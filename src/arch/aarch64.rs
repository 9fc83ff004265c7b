//! aarch64 AAPCS64: the asm! stubs around `asm/aarch64.S` (placeholder until
//! the aarch64 port lands).
compile_error!("greenhack: the aarch64 switch is not written yet");

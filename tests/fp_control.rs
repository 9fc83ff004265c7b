//! With the `fp-control` feature, each side of a switch keeps its own
//! floating-point control state (MXCSR/x87 CW on x86_64, FPCR on aarch64).

#![cfg(feature = "fp-control")]

use greenhack::greenlet::Greenlet;

/// The rounding-mode control as the ISA stores it.
#[cfg(target_arch = "x86_64")]
fn control() -> u64 {
    let mut mxcsr = 0u32;
    // SAFETY: stmxcsr stores 4 bytes into `mxcsr`.
    unsafe { std::arch::asm!("stmxcsr [{}]", in(reg) &mut mxcsr, options(nostack)) };
    mxcsr as u64
}

#[cfg(target_arch = "x86_64")]
fn set_round_toward_zero() {
    let mxcsr = (control() as u32) | (0b11 << 13);
    // SAFETY: loads a valid MXCSR (only the rounding field changed).
    unsafe { std::arch::asm!("ldmxcsr [{}]", in(reg) &mxcsr, options(nostack)) };
}

#[cfg(target_arch = "aarch64")]
fn control() -> u64 {
    let v: u64;
    // SAFETY: reading FPCR has no side effects.
    unsafe { std::arch::asm!("mrs {}, fpcr", out(reg) v, options(nomem, nostack)) };
    v
}

#[cfg(target_arch = "aarch64")]
fn set_round_toward_zero() {
    let v = control() | (0b11 << 22);
    // SAFETY: writes a valid FPCR (only the rounding field changed).
    unsafe { std::arch::asm!("msr fpcr, {}", in(reg) v, options(nomem, nostack)) };
}

#[test]
fn greenlet_rounding_mode_does_not_leak_into_the_resumer() {
    let outside = control();
    let mut g = Greenlet::<(), u64, u64>::new(|s, ()| {
        set_round_toward_zero();
        let changed = control();
        s.suspend(changed);
        // Our own mode survives the round trip through the resumer.
        control()
    });
    let inside = g.resume(()).into_yielded().unwrap();
    assert_ne!(inside, outside);
    assert_eq!(control(), outside, "the resumer's mode is restored");
    assert_eq!(g.resume(()).into_complete(), Some(inside));
    assert_eq!(control(), outside);
}

#[test]
fn greenlet_starts_with_its_creators_mode() {
    let outside = control();
    let mut g = Greenlet::<(), (), u64>::new(|_, ()| control());
    assert_eq!(g.resume(()).into_complete(), Some(outside));
}

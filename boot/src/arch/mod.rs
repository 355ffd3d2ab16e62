//! Architecture entry code and the few machine services the common code needs: UART output,
//! a nanosecond clock, interrupt masking, exit, and the deliberate-fault hooks of the self-tests.

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "aarch64")]
pub use aarch64::*;

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use self::x86_64::*;

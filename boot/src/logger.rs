//! defmt global logger: rzCOBS frames to the UART, with microsecond timestamps.
//!
//! The image runs on one CPU. A frame is written with interrupts masked; the lock is a plain
//! load/store flag (no exclusives: on aarch64 the MMU is off and memory is Device). If a CPU
//! exception or panic interrupts a frame, the logger ends the broken frame with a 0x00 (the
//! decoder drops it and resynchronises) and starts a new one, so the report of the exception
//! is never lost.

use core::sync::atomic::{AtomicBool, Ordering};

use crate::arch;

#[defmt::global_logger]
struct Logger;

static TAKEN: AtomicBool = AtomicBool::new(false);
#[cfg(target_arch = "x86_64")]
static mut RESTORE: bool = false;
#[cfg(target_arch = "aarch64")]
static mut RESTORE: u64 = 0;
static mut ENCODER: defmt::Encoder = defmt::Encoder::new();

fn write_uart(bytes: &[u8]) {
    arch::uart_write(bytes);
}

// SAFETY: `acquire` masks interrupts and takes the flag before any frame is written; the
// encoder is only touched between acquire and release, on the one CPU.
unsafe impl defmt::Logger for Logger {
    fn acquire() {
        let restore = arch::interrupts_save_disable();
        // SAFETY: interrupts are masked and the image is single-CPU, so nothing else runs.
        let encoder = unsafe { &mut *(&raw mut ENCODER) };
        if TAKEN.load(Ordering::Relaxed) {
            // Re-entered from an exception or panic inside a frame: terminate the broken
            // frame and start over rather than lose this message.
            write_uart(&[0]);
            *encoder = defmt::Encoder::new();
        } else {
            // SAFETY: as above; RESTORE belongs to the holder of the flag.
            unsafe { RESTORE = restore };
        }
        TAKEN.store(true, Ordering::Relaxed);
        encoder.start_frame(write_uart);
    }

    unsafe fn flush() {}

    unsafe fn release() {
        // SAFETY: called after `acquire` by defmt, with interrupts masked.
        let encoder = unsafe { &mut *(&raw mut ENCODER) };
        encoder.end_frame(write_uart);
        TAKEN.store(false, Ordering::Relaxed);
        // SAFETY: RESTORE was set by the matching `acquire`.
        arch::interrupts_restore(unsafe { RESTORE });
    }

    unsafe fn write(bytes: &[u8]) {
        // SAFETY: called between `acquire` and `release`.
        let encoder = unsafe { &mut *(&raw mut ENCODER) };
        encoder.write(bytes, write_uart);
    }
}

defmt::timestamp!("{=u64:us}", arch::now_ns() / 1000);

//! Checks the harness makes from outside: the image lists what it found, asks, and waits for a
//! one-byte verdict on its UART (`y` or `n`). See `qemu-tests/src/qmp.rs` for the other side.

use core::time::Duration;

use pcie_iommu::hal::poll;

use crate::arch;
use crate::checks::Checks;
use crate::platform::QemuPlatform;

/// Asks the harness to compare the `host-check pci` lines logged so far with QEMU's
/// `query-pci`, and records its answer as a check.
pub fn confirm_pci_tree(platform: &QemuPlatform, functions: usize, checks: &mut Checks) {
    // Drop anything already in the receive FIFO so only the answer to this request counts
    // (bounded: a 16550 FIFO holds 16 bytes, a PL011 FIFO 32).
    for _ in 0..64 {
        if arch::uart_try_read().is_none() {
            break;
        }
    }
    defmt::info!("host-check request: query-pci ({=usize} functions listed)", functions);
    // TIMEOUT: the harness answers after one QMP round trip (milliseconds); 20 s allows for a
    // loaded CI machine and stays inside the harness's 60 s bound for the whole run.
    let answer = poll(platform, "host-check answer on the UART", Duration::from_secs(20), || {
        arch::uart_try_read().filter(|b| matches!(b, b'y' | b'n'))
    });
    match answer {
        Ok(b'y') => {
            checks.check("the harness confirms the PCI tree equals QEMU's query-pci", true);
        }
        Ok(_) => {
            checks.check("the harness confirms the PCI tree equals QEMU's query-pci (it reported differences)", false);
        }
        Err(e) => {
            checks.ok("the harness answers the host check", Err::<(), _>(e));
        }
    }
}

//! The pcie-iommu firmware image for QEMU q35 (x86_64, PVH) and virt (aarch64, EL1 or EL2).
//!
//! One image serves every scenario: the command line (`-append`, which is the PVH command line
//! on x86 and DT `/chosen/bootargs` on Arm) picks the self-test with `test=NAME`. The image
//! logs with defmt over the first UART and leaves QEMU with status 33 when every check passed
//! and 35 otherwise (x86 `isa-debug-exit`, Arm semihosting).
#![no_std]
#![no_main]
#![allow(unreachable_pub, reason = "a binary: `pub` only marks what its modules share")]
#![allow(
    clippy::deref_addrof,
    reason = "`&mut *(&raw mut STATIC)` is how edition 2024 reaches a `static mut`; the suggested `&mut STATIC` is denied"
)]

mod arch;
mod boot_info;
mod checks;
mod cmdline;
mod core_test;
mod discover;
mod edu;
mod host_check;
mod logger;
mod pcie;
mod platform;
#[cfg(target_arch = "aarch64")]
mod smmu_test;
mod tree;
#[cfg(target_arch = "x86_64")]
mod vtd_test;

use boot_info::BootInfo;
use checks::Checks;
use cmdline::SelfTest;

/// How the run ends.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    Pass,
    Fail,
}

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Common entry, called by the architecture's entry code with everything it found.
pub fn firmware_main(mut info: BootInfo) -> ! {
    defmt::info!("pcie-iommu firmware {=str} on {=str}", VERSION, arch::ARCH);
    if info.exception_level != 0 {
        defmt::info!("running at EL{=u8}", info.exception_level);
    }
    if let Some((what, value)) = info.boot_error {
        defmt::error!("boot: bad {=str}: {=u64:#x}", what, value);
    }

    let mut checks = Checks::new();
    let machine = discover::Machine::open(&mut info, &mut checks);
    if info.cmdline_truncated {
        defmt::warn!("command line longer than the firmware keeps; it was cut");
    }
    defmt::info!("command line: \"{=str}\"", info.cmdline);
    let test = SelfTest::from_cmdline(info.cmdline);
    defmt::info!("self-test: {=str}", test.name());

    match test {
        SelfTest::Discover => discover::run(&info, machine, &mut checks, discover::Extra::None),
        SelfTest::Pcie => discover::run(&info, machine, &mut checks, discover::Extra::Pcie),
        SelfTest::Vtd => discover::run(&info, machine, &mut checks, discover::Extra::Vtd),
        SelfTest::Smmu => discover::run(&info, machine, &mut checks, discover::Extra::Smmu),
        SelfTest::Fail => {
            checks.check("deliberate failure (test=fail): this check is false on purpose", false);
        }
        SelfTest::Panic => panic!("deliberate panic (test=panic)"),
        SelfTest::Exception => {
            defmt::info!("raising a CPU exception on purpose (test=exception)");
            arch::trigger_exception()
        }
        SelfTest::Hang => {
            defmt::info!("hanging on purpose (test=hang): the harness must time out");
            arch::halt_forever()
        }
        SelfTest::Unknown(name) => {
            defmt::error!("unknown self-test \"{=str}\"; known: {=str}", name, SelfTest::KNOWN);
            checks.check("the command line names a known self-test", false);
        }
    }
    checks.finish(test.name())
}

/// `defmt::panic!`, `unwrap!` and failed `defmt::assert!`s end here after logging.
#[defmt::panic_handler]
fn defmt_panic() -> ! {
    arch::exit(ExitCode::Fail)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    static PANICKING: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
    if !PANICKING.load(core::sync::atomic::Ordering::Relaxed) {
        PANICKING.store(true, core::sync::atomic::Ordering::Relaxed);
        defmt::error!("panicked: {}", defmt::Display2Format(info));
    }
    arch::exit(ExitCode::Fail)
}

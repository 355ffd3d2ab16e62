//! x86_64 on QEMU q35: PVH entry, COM1, HPET clock, IDT, isa-debug-exit.

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use x86_64::instructions::port::Port;
use x86_64::instructions::tables::lidt;
use x86_64::structures::DescriptorTablePointer;
use x86_64::VirtAddr;

use crate::boot_info::{BootInfo, FirmwareTables, MemoryMap, RegionKind};
use crate::ExitCode;

global_asm!(include_str!("boot.s"), options(att_syntax));

/// Name printed in the banner.
pub const ARCH: &str = "x86_64";

const COM1: u16 = 0x3f8;
/// `isa-debug-exit` I/O port (the harness passes `iobase=0xf4`).
const DEBUG_EXIT: u16 = 0xf4;
/// QEMU exits with `(value << 1) | 1`: 0x10 gives 33 (pass), 0x11 gives 35 (fail).
const EXIT_PASS: u32 = 0x10;
const EXIT_FAIL: u32 = 0x11;

/// `hvm_start_info` magic (xen/include/public/arch-x86/hvm/start_info.h).
const HVM_START_MAGIC: u32 = 0x336e_c578;
/// Entries of the PVH memory map we keep; q35 gives about ten.
const MAX_E820: usize = 64;
/// Bytes of command line we keep (longer ones are cut, and the cut is logged).
const CMDLINE_MAX: usize = 512;

static mut CMDLINE: [u8; CMDLINE_MAX] = [0; CMDLINE_MAX];

/// Entry from `boot.s`, in long mode on the image's stack.
#[unsafe(no_mangle)]
extern "C" fn pvh_main(start_info: u32) -> ! {
    serial_init();
    install_idt();
    let info = read_start_info(start_info);
    crate::firmware_main(info)
}

fn serial_init() {
    // SAFETY: COM1 is the 16550 QEMU attaches `-serial` to; these writes only program it:
    // interrupts off, 115200 baud (divisor 1), 8N1, FIFOs on and cleared.
    unsafe {
        Port::<u8>::new(COM1 + 1).write(0x00);
        Port::<u8>::new(COM1 + 3).write(0x80);
        Port::<u8>::new(COM1).write(0x01);
        Port::<u8>::new(COM1 + 1).write(0x00);
        Port::<u8>::new(COM1 + 3).write(0x03);
        Port::<u8>::new(COM1 + 2).write(0xc7);
    }
}

/// Writes bytes to COM1.
pub fn uart_write(bytes: &[u8]) {
    for &b in bytes {
        // TIMEOUT: a 16550 empties its holding register in one character time (87 us at
        // 115200 baud); 100 000 status reads are far more. A missing UART reads 0xff (THRE set)
        // and a stuck one costs a bounded delay per byte instead of a hang.
        for _ in 0..100_000 {
            // SAFETY: reading the line status register of COM1 has no side effect.
            let lsr = unsafe { Port::<u8>::new(COM1 + 5).read() };
            if lsr & 0x20 != 0 {
                break;
            }
            core::hint::spin_loop();
        }
        // SAFETY: writing the transmit holding register of COM1 sends one byte.
        unsafe { Port::<u8>::new(COM1).write(b) };
    }
}

/// Leaves QEMU through `isa-debug-exit`. Without that device (a misconfigured run) the write
/// is ignored and the CPU halts with interrupts off, which the harness reports as a timeout.
pub fn exit(code: ExitCode) -> ! {
    let value = match code {
        ExitCode::Pass => EXIT_PASS,
        ExitCode::Fail => EXIT_FAIL,
    };
    // SAFETY: port 0xf4 is isa-debug-exit in every shape the harness runs; elsewhere it is
    // an unused ISA port.
    unsafe { Port::<u32>::new(DEBUG_EXIT).write(value) };
    halt_forever()
}

/// Stops the CPU for good.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: interrupts stay disabled, so `cli; hlt` parks the CPU.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// Masks interrupts and returns whether they were enabled, for the logger's critical section.
pub fn interrupts_save_disable() -> bool {
    let was = x86_64::instructions::interrupts::are_enabled();
    x86_64::instructions::interrupts::disable();
    was
}

/// Restores the state `interrupts_save_disable` returned.
pub fn interrupts_restore(was_enabled: bool) {
    if was_enabled {
        x86_64::instructions::interrupts::enable();
    }
}

/// Raises #UD, for the `exception` self-test.
pub fn trigger_exception() -> ! {
    // SAFETY: `ud2` raises #UD, which the IDT routes to `x86_exception`; nothing returns.
    unsafe { asm!("ud2", options(noreturn)) }
}

/// Shows that SSE works (CR0/CR4 set up by the stub): a round trip through an XMM register.
pub fn sse_round_trip(value: u64) -> u64 {
    let out: u64;
    // SAFETY: SSE2 `movq` between a GPR and xmm0, which is clobbered; the stub enabled
    // CR4.OSFXSR and cleared CR0.EM, else this would be #UD and reported as such.
    unsafe {
        asm!("movq xmm0, {v}", "pxor xmm1, xmm1", "por xmm0, xmm1", "movq {o}, xmm0",
             v = in(reg) value, o = out(reg) out, out("xmm0") _, out("xmm1") _,
             options(nomem, nostack));
    }
    out
}

// ---- Clock: HPET main counter --------------------------------------------------------------

static HPET_BASE: AtomicUsize = AtomicUsize::new(0);
/// Counter period in femtoseconds (HPET spec 1.0a §2.3.4, GCAP_ID[63:32]).
static HPET_PERIOD_FS: AtomicU64 = AtomicU64::new(0);

/// Starts the HPET found in ACPI and uses it as the clock. Returns the period in fs.
pub fn start_clock(hpet_base: u64) -> Result<u64, pcie_iommu::Error> {
    // The identity map covers the first 4 GiB; the HPET lives at 0xFED0_0000 on PCs.
    if hpet_base >= 1 << 32 || !hpet_base.is_multiple_of(8) {
        return Err(pcie_iommu::Error::InvalidField { what: "HPET base", value: hpet_base });
    }
    let base = hpet_base as usize;
    // SAFETY: `base` is the HPET register block from ACPI, identity-mapped uncached by the
    // boot stub; GCAP_ID at +0 is a read-only 64-bit register.
    let gcap = unsafe { ((base) as *const u64).read_volatile() };
    let period = gcap >> 32;
    // HPET spec: the period is non-zero and at most 100 ns (1e8 fs).
    if period == 0 || period > 100_000_000 {
        return Err(pcie_iommu::Error::Hardware { what: "HPET GCAP_ID.COUNTER_CLK_PERIOD", value: period });
    }
    // SAFETY: GEN_CONF at +0x10: setting ENABLE_CNF starts the main counter; no other state.
    unsafe {
        let conf = (base + 0x10) as *mut u64;
        conf.write_volatile(conf.read_volatile() | 1);
    }
    HPET_PERIOD_FS.store(period, Ordering::Relaxed);
    HPET_BASE.store(base, Ordering::Release);
    Ok(period)
}

/// Nanoseconds since the HPET started (0 before that).
pub fn now_ns() -> u64 {
    let base = HPET_BASE.load(Ordering::Acquire);
    if base == 0 {
        return 0;
    }
    // SAFETY: main counter at +0xF0 of the HPET block `start_clock` validated and mapped.
    let ticks = unsafe { ((base + 0xf0) as *const u64).read_volatile() };
    let fs = u128::from(ticks) * u128::from(HPET_PERIOD_FS.load(Ordering::Relaxed));
    // CAST: 2^64 ns is 584 years of uptime.
    (fs / 1_000_000) as u64
}

// ---- PVH start info --------------------------------------------------------------------------

fn read_start_info(addr: u32) -> BootInfo {
    let mut info = BootInfo::empty();
    let base = addr as usize;
    // SAFETY: EBX at entry points at hvm_start_info in RAM below 1 MiB, identity-mapped; the
    // fields are read by value before anything could reuse that memory (we allocate nothing
    // below 1 MiB).
    let read_u32 = |off: usize| unsafe { ((base + off) as *const u32).read_unaligned() };
    // SAFETY: as above.
    let read_u64 = |off: usize| unsafe { ((base + off) as *const u64).read_unaligned() };
    if base == 0 || read_u32(0) != HVM_START_MAGIC {
        info.boot_error = Some(("hvm_start_info magic", if base == 0 { 0 } else { u64::from(read_u32(0)) }));
        return info;
    }
    // Offsets from start_info.h: cmdline_paddr +24, rsdp_paddr +32, memmap_paddr +40,
    // memmap_entries +48 (bringup.md pitfall 5: not +16/+24).
    let cmdline = read_u64(24);
    let rsdp = read_u64(32);
    let memmap = read_u64(40);
    let entries = read_u32(48) as usize;

    if cmdline != 0 && cmdline < 1 << 32 {
        // SAFETY: CMDLINE is only written here, once, before anything reads it.
        let buf = unsafe { &mut *(&raw mut CMDLINE) };
        let mut len = 0;
        while len < CMDLINE_MAX {
            // SAFETY: the PVH loader put a NUL-terminated string at `cmdline`, identity-mapped;
            // we stop at NUL or at our buffer's size.
            let b = unsafe { ((cmdline as usize + len) as *const u8).read() };
            if b == 0 {
                break;
            }
            buf[len] = b;
            len += 1;
        }
        info.cmdline_truncated = len == CMDLINE_MAX;
        info.cmdline = core::str::from_utf8(&buf[..len]).unwrap_or("");
    }
    if rsdp != 0 {
        info.tables = FirmwareTables::Acpi { rsdp };
    }
    let mut map = MemoryMap::new();
    for i in 0..entries.min(MAX_E820) {
        let e = memmap as usize + i * 24;
        // SAFETY: the e820-style table (hvm_memmap_table_entry: addr, size, type, reserved)
        // sits below 1 MiB, identity-mapped; `entries` is bounded by MAX_E820.
        let (addr, size, ty) = unsafe {
            ((e as *const u64).read_unaligned(), ((e + 8) as *const u64).read_unaligned(), ((e + 16) as *const u32).read_unaligned())
        };
        let kind = match ty {
            1 => RegionKind::Ram,
            3 => RegionKind::AcpiReclaimable,
            _ => RegionKind::Reserved,
        };
        map.push(addr, size, kind);
    }
    info.memmap_dropped = entries.saturating_sub(MAX_E820);
    info.memory = map;
    info
}

// ---- Exceptions ------------------------------------------------------------------------------

/// What the stubs push: vector, error code, then the CPU's interrupt frame.
#[repr(C)]
struct ExceptionFrame {
    vector: u64,
    error: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

const EXCEPTION_NAMES: [&str; 32] = [
    "#DE divide error", "#DB debug", "NMI", "#BP breakpoint", "#OF overflow", "#BR bound range",
    "#UD invalid opcode", "#NM device not available", "#DF double fault", "coprocessor overrun",
    "#TS invalid TSS", "#NP segment not present", "#SS stack fault", "#GP general protection",
    "#PF page fault", "reserved 15", "#MF x87 error", "#AC alignment check", "#MC machine check",
    "#XM SIMD error", "#VE virtualization", "#CP control protection", "reserved 22", "reserved 23",
    "reserved 24", "reserved 25", "reserved 26", "reserved 27", "#HV hypervisor injection",
    "#VC VMM communication", "#SX security", "reserved 31",
];

#[unsafe(no_mangle)]
extern "C" fn x86_exception(frame: &ExceptionFrame) -> ! {
    let cr2: u64;
    // SAFETY: reading CR2 (the faulting address of a #PF) has no side effect.
    unsafe { asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack)) };
    let name = EXCEPTION_NAMES.get(frame.vector as usize).copied().unwrap_or("unknown");
    defmt::error!(
        "CPU exception {=u64} ({=str}) error {=u64:#x} at rip {=u64:#x} cs {=u64:#x} rflags {=u64:#x} rsp {=u64:#x} ss {=u64:#x} cr2 {=u64:#x}",
        frame.vector, name, frame.error, frame.rip, frame.cs, frame.rflags, frame.rsp, frame.ss, cr2
    );
    exit(ExitCode::Fail)
}

/// 256 16-byte interrupt gates; only the 32 exception vectors are filled in.
#[repr(C, align(16))]
struct Idt([u64; 512]);

static mut IDT: Idt = Idt([0; 512]);

unsafe extern "C" {
    static exception_stub_table: [u64; 32];
    static irq_stub_table: [u64; IRQ_VECTORS];
}

/// First vector with a returning interrupt stub, and how many there are.
pub const IRQ_BASE: u8 = 0x40;
const IRQ_VECTORS: usize = 16;

fn install_idt() {
    // SAFETY: the table is in .rodata, written by the assembler, never modified.
    let stubs = unsafe { &*(&raw const exception_stub_table) };
    // SAFETY: the IDT is written once, here, before it is loaded and before any other code
    // could take an exception through it.
    let idt = unsafe { &mut *(&raw mut IDT) };
    // SAFETY: as above, the interrupt stub table is assembler-written .rodata.
    let irq_stubs = unsafe { &*(&raw const irq_stub_table) };
    let gates = stubs.iter().enumerate().chain(irq_stubs.iter().enumerate().map(|(i, h)| (usize::from(IRQ_BASE) + i, h)));
    for (vector, &handler) in gates {
        // 64-bit interrupt gate (Intel SDM vol. 3 §6.14.1): offset 15:0, selector 0x08,
        // type 0xE with P=1 DPL=0, offset 31:16, then offset 63:32.
        let low = (handler & 0xffff)
            | (0x08 << 16)
            | (0x8e00u64 << 32)
            | ((handler >> 16) & 0xffff) << 48;
        idt.0[vector * 2] = low;
        idt.0[vector * 2 + 1] = handler >> 32;
    }
    let ptr = DescriptorTablePointer {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: VirtAddr::new(&raw const IDT as u64),
    };
    // SAFETY: the IDT is a static that lives forever and every gate points at a stub that
    // never returns.
    unsafe { lidt(&ptr) };
}

/// Reads configuration space through the legacy CF8/CFC mechanism (PCI Local Bus 3.0 §3.2.2.3.2),
/// which reaches the first 256 bytes of segment 0 independently of ECAM: the discovery uses it
/// to cross-check what it read through the MCFG window.
pub fn legacy_config_read32(bus: u8, dev: u8, func: u8, offset: u8) -> u32 {
    let address = 0x8000_0000
        | (u32::from(bus) << 16)
        | (u32::from(dev & 0x1f) << 11)
        | (u32::from(func & 7) << 8)
        | u32::from(offset & 0xfc);
    // SAFETY: CF8/CFC are the PC configuration mechanism #1 ports; writing the address and
    // reading the data register has no effect beyond the configuration read.
    unsafe {
        Port::<u32>::new(0xcf8).write(address);
        Port::<u32>::new(0xcfc).read()
    }
}

/// One byte from COM1 if one has arrived (LSR.DR), without waiting.
pub fn uart_try_read() -> Option<u8> {
    // SAFETY: reading LSR has no side effect; reading RBR when DR is set consumes that byte.
    unsafe {
        if Port::<u8>::new(COM1 + 5).read() & 0x01 != 0 {
            Some(Port::<u8>::new(COM1).read())
        } else {
            None
        }
    }
}


// ---- Interrupts: local APIC and handlers ------------------------------------------------------

/// Handlers for vectors IRQ_BASE..IRQ_BASE+16, as `fn()` addresses (0 = none).
static IRQ_HANDLERS: [AtomicUsize; IRQ_VECTORS] = [const { AtomicUsize::new(0) }; IRQ_VECTORS];
/// Interrupts taken per vector, for diagnostics and tests.
static IRQ_COUNTS: [AtomicU64; IRQ_VECTORS] = [const { AtomicU64::new(0) }; IRQ_VECTORS];
static LAPIC_BASE: AtomicUsize = AtomicUsize::new(0);

const LAPIC_ID: usize = 0x20;
const LAPIC_TPR: usize = 0x80;
const LAPIC_EOI: usize = 0xb0;
const LAPIC_SVR: usize = 0xf0;
const LAPIC_ICR_LOW: usize = 0x300;
const LAPIC_ICR_HIGH: usize = 0x310;

#[unsafe(no_mangle)]
extern "C" fn x86_irq(vector: u64) {
    let i = (vector as usize).wrapping_sub(usize::from(IRQ_BASE));
    if let (Some(slot), Some(count)) = (IRQ_HANDLERS.get(i), IRQ_COUNTS.get(i)) {
        count.fetch_add(1, Ordering::Relaxed);
        let f = slot.load(Ordering::Acquire);
        if f != 0 {
            // SAFETY: only `set_irq_handler` stores into the table, and it stores `fn()`s.
            let handler: fn() = unsafe { core::mem::transmute::<usize, fn()>(f) };
            handler();
        }
    }
    lapic_write(LAPIC_EOI, 0);
}

fn lapic_write(offset: usize, value: u32) {
    let base = LAPIC_BASE.load(Ordering::Acquire);
    if base != 0 {
        // SAFETY: the xAPIC register page from IA32_APIC_BASE, identity-mapped uncached below
        // 4 GiB by the boot stub; 32-bit aligned registers.
        unsafe { ((base + offset) as *mut u32).write_volatile(value) };
    }
}

fn lapic_read(offset: usize) -> u32 {
    let base = LAPIC_BASE.load(Ordering::Acquire);
    if base == 0 {
        return 0;
    }
    // SAFETY: as in `lapic_write`.
    unsafe { ((base + offset) as *const u32).read_volatile() }
}

/// Enables the local APIC in xAPIC mode (base from IA32_APIC_BASE, SDM vol. 3 §11.4.4), accepts
/// every priority, and returns (base, APIC ID) for building MSI addresses.
pub fn lapic_init() -> Result<(u64, u8), pcie_iommu::Error> {
    // SAFETY: reading IA32_APIC_BASE (MSR 0x1b) has no side effect.
    let msr = unsafe { x86_64::registers::model_specific::Msr::new(0x1b).read() };
    let base = msr & 0xf_ffff_f000;
    if msr & (1 << 11) == 0 || base == 0 || base >= 1 << 32 {
        return Err(pcie_iommu::Error::Hardware { what: "IA32_APIC_BASE (APIC disabled or above 4 GiB)", value: msr });
    }
    // Mask both 8259s first: SeaBIOS points the PIT's IRQ 0 at vector 8, the double-fault
    // gate, and the first `sti` would take it.
    // SAFETY: OCW1 writes to the 8259 interrupt mask registers; nothing else uses the PICs.
    unsafe {
        Port::<u8>::new(0x21).write(0xff);
        Port::<u8>::new(0xa1).write(0xff);
    }
    LAPIC_BASE.store(base as usize, Ordering::Release);
    lapic_write(LAPIC_TPR, 0);
    // Software enable (bit 8) with spurious vector 0xff.
    lapic_write(LAPIC_SVR, (1 << 8) | 0xff);
    // CAST: the xAPIC ID is bits 31:24.
    Ok((base, (lapic_read(LAPIC_ID) >> 24) as u8))
}

/// Routes vector `vector` (IRQ_BASE..IRQ_BASE+16) to `handler`.
pub fn set_irq_handler(vector: u8, handler: fn()) -> bool {
    match IRQ_HANDLERS.get(usize::from(vector.wrapping_sub(IRQ_BASE))) {
        Some(slot) => {
            slot.store(handler as usize, Ordering::Release);
            true
        }
        None => false,
    }
}

/// Interrupts taken on `vector` so far.
pub fn irq_count(vector: u8) -> u64 {
    IRQ_COUNTS.get(usize::from(vector.wrapping_sub(IRQ_BASE))).map_or(0, |c| c.load(Ordering::Relaxed))
}

/// Sends a fixed, edge-triggered IPI with `vector` to this CPU (ICR shorthand "self").
pub fn send_self_ipi(vector: u8) {
    lapic_write(LAPIC_ICR_HIGH, 0);
    lapic_write(LAPIC_ICR_LOW, (1 << 18) | u32::from(vector));
}

/// Lets interrupts in for a moment (`sti; nop; cli` window), so a pending one is taken here and
/// nowhere else: the rest of the image runs with interrupts masked.
pub fn interrupt_window() {
    // SAFETY: the IDT has a gate for every vector a device here may raise (exceptions and
    // IRQ_BASE..+16; the APIC's spurious vector 0xff has no device behind it and the 8259 is
    // never unmasked); handlers return with iretq.
    unsafe { core::arch::asm!("sti", "nop", "nop", "cli", options(nomem, nostack)) };
}

//! Tests of the SMMUv3 model. STEs, CDs, commands, page tables and expected records are
//! encoded here by hand from the specification's tables (IHI 0070 §4, §5, §7, §8; VMSAv8-64
//! descriptors), independently of the driver and of the model's own constants where a layout
//! is the thing under test.

use super::regs::{cr0, gerror, off};
use super::*;
use crate::sim::std;
use std::vec;
use std::vec::Vec;

// ---------------------------------------------------------------------------------------------
// Independent encodings.

/// STE dword 0: V (0), Config (3:1), S1Fmt (5:4), S1ContextPtr (51:6), S1CDMax (63:59).
fn ste_s1(ctx: u64, cdmax: u64, fmt: u64, s1dss: u64) -> [u64; 8] {
    let mut w = [0u64; 8];
    w[0] = 1 | 0b101 << 1 | fmt << 4 | ctx | cdmax << 59;
    w[1] = s1dss;
    w
}

/// STE with stage 2: S2VMID (2: 15:0), S2T0SZ (37:32), S2SL0 (39:38), S2PS (50:48), S2AA64 (51),
/// S2R (58); S2TTB in dword 3.
fn ste_s2(vmid: u16, ttb: u64, s2r: bool) -> [u64; 8] {
    let mut w = [0u64; 8];
    w[0] = 1 | 0b110 << 1;
    // IAS 39 bits (T0SZ 25), start at level 1 (SL0 1), 48-bit PS.
    w[2] = u64::from(vmid) | 25 << 32 | 1 << 38 | 5 << 48 | 1 << 51 | u64::from(s2r) << 58;
    w[3] = ttb;
    w
}

fn ste_nested(ctx: u64, vmid: u16, s2ttb: u64) -> [u64; 8] {
    let mut w = ste_s2(vmid, s2ttb, true);
    w[0] = 1 | 0b111 << 1 | ctx;
    w
}

fn ste_config(config: u64) -> [u64; 8] {
    let mut w = [0u64; 8];
    w[0] = 1 | config << 1;
    w
}

/// CD dword 0: T0SZ (5:0) = 16, TG0 (7:6) = 4 KiB, EPD1 (30), V (31), IPS (34:32) = 48-bit,
/// AA64 (41), R (45), A (46), ASID (63:48); TTB0 in dword 1; MAIR in dword 3.
fn cd(asid: u16, ttb0: u64, r: bool) -> [u64; 8] {
    let mut w = [0u64; 8];
    w[0] = 16
        | 1 << 30
        | 1 << 31
        | 5 << 32
        | 1 << 41
        | u64::from(r) << 45
        | 1 << 46
        | u64::from(asid) << 48;
    w[1] = ttb0;
    w[3] = 0x0000_0000_0044_ff04;
    w
}

const VALID: u64 = 1;
const TABLE: u64 = 0b11;
const PAGE: u64 = 0b11;
const BLOCK: u64 = 0b01;
const AF: u64 = 1 << 10;
/// Stage-1 AP[1]: unprivileged access; AP[2]: read-only.
const AP_USER: u64 = 1 << 6;
const AP_RO: u64 = 1 << 7;
const NG: u64 = 1 << 11;
const PXN: u64 = 1 << 53;
const UXN: u64 = 1 << 54;
/// Stage-2 S2AP: read (6), write (7).
const S2_R: u64 = 1 << 6;
const S2_W: u64 = 1 << 7;

/// Maps `va` to `pa` in 4 KiB-granule tables rooted at `root`, `levels` levels (start level 4 -
/// levels), the leaf at `leaf_level` (3: page, 2: 2 MiB block, 1: 1 GiB block) with `attrs`.
fn map(mem: &Memory, root: u64, levels: u32, va: u64, pa: u64, leaf_level: u32, attrs: u64) -> u64 {
    let mut table = root;
    for level in (4 - levels)..=3 {
        let shift = 12 + 9 * (3 - level);
        let at = table + ((va >> shift) & 511) * 8;
        if level == leaf_level {
            let kind = if level == 3 { PAGE } else { BLOCK };
            mem.write_u64(at, pa | kind | attrs);
            return at;
        }
        let d = mem.read_u64(at).unwrap();
        table = if d & VALID != 0 {
            d & 0x0000_ffff_ffff_f000
        } else {
            let t = mem.alloc_page().0;
            mem.write_u64(at, t | TABLE);
            t
        };
    }
    unreachable!()
}

fn cmd_cfgi_ste(sid: u32) -> [u64; 2] {
    [0x03 | u64::from(sid) << 32, 1]
}
fn cmd_cfgi_cd(sid: u32, ssid: u32) -> [u64; 2] {
    [0x05 | u64::from(ssid) << 12 | u64::from(sid) << 32, 1]
}
fn cmd_cfgi_all() -> [u64; 2] {
    [0x04, 31]
}
fn cmd_tlbi_nh_asid(vmid: u16, asid: u16) -> [u64; 2] {
    [0x11 | u64::from(vmid) << 32 | u64::from(asid) << 48, 0]
}
fn cmd_tlbi_nh_va(vmid: u16, asid: u16, va: u64) -> [u64; 2] {
    [0x12 | u64::from(vmid) << 32 | u64::from(asid) << 48, va | 1]
}
fn cmd_tlbi_s2_ipa(vmid: u16, ipa: u64) -> [u64; 2] {
    [0x2a | u64::from(vmid) << 32, ipa]
}
fn cmd_sync(cs: u64, data: u32, addr: u64) -> [u64; 2] {
    [0x46 | cs << 12 | u64::from(data) << 32, addr]
}
fn cmd_pri_resp(sid: u32, ssid: Option<u32>, prgi: u16, resp: u64) -> [u64; 2] {
    let ss = ssid.map_or(0, |s| 1 << 11 | u64::from(s) << 12);
    [0x41 | ss | u64::from(sid) << 32, u64::from(prgi) | resp << 12]
}

// ---------------------------------------------------------------------------------------------
// A fixture that plays the driver with raw register writes.

struct Fix {
    smmu: Smmu,
    mem: Memory,
    strtab: u64,
    cmdq: u64,
    evtq: u64,
    priq: u64,
    qs: u32,
}

impl Fix {
    fn new(cfg: Config) -> Self {
        let mem = Memory::new();
        let smmu = Smmu::new(&mem, cfg);
        let strtab = mem.alloc(256 * 64, 4096).0.0;
        let cmdq = mem.alloc_page().0;
        let evtq = mem.alloc_page().0;
        let priq = mem.alloc_page().0;
        Fix { smmu, mem, strtab, cmdq, evtq, priq, qs: 4 }
    }

    /// A linear stream table of 256 STEs, queues of 2^qs entries, everything enabled.
    fn enable(&self) {
        self.enable_with(self.strtab, 8);
    }

    fn enable_with(&self, strtab: u64, strtab_cfg: u32) {
        let s = &self.smmu;
        s.write64(off::STRTAB_BASE, strtab);
        s.write32(off::STRTAB_BASE_CFG, strtab_cfg);
        // RECINVSID (bit 1): record C_BAD_STREAMID, as Linux sets it.
        s.write32(off::CR2, 1 << 1);
        s.write64(off::CMDQ_BASE, self.cmdq | u64::from(self.qs));
        s.write64(off::EVENTQ_BASE, self.evtq | u64::from(self.qs));
        let pri = self.smmu.config().pri();
        if pri {
            s.write64(off::PRIQ_BASE, self.priq | u64::from(self.qs));
        }
        s.step();
        let mut en = cr0::CMDQEN | cr0::EVENTQEN | cr0::SMMUEN;
        if pri {
            en |= cr0::PRIQEN;
        }
        s.write32(off::CR0, en);
        s.step();
        assert_eq!(s.read32(off::CR0ACK), en);
    }

    fn ste(&self, sid: u32, w: [u64; 8]) {
        write8(&self.mem, self.strtab + u64::from(sid) * 64, w);
    }

    /// Writes commands at CMDQ_PROD, moves PROD past them (with wrap) and steps.
    fn submit(&self, cmds: &[[u64; 2]]) {
        let mut prod = self.smmu.read32(off::CMDQ_PROD);
        for c in cmds {
            let at = self.cmdq + u64::from(prod & ((1 << self.qs) - 1)) * 16;
            self.mem.write_u64(at, c[0]);
            self.mem.write_u64(at + 8, c[1]);
            prod = (prod + 1) & ((2 << self.qs) - 1);
        }
        self.smmu.write32(off::CMDQ_PROD, prod);
        self.smmu.step();
    }

    fn cons(&self) -> u32 {
        self.smmu.read32(off::CMDQ_CONS)
    }

    /// The event record at queue index `i`.
    fn record(&self, i: u64) -> [u64; 4] {
        let at = self.evtq + i * 32;
        [0, 1, 2, 3].map(|k| self.mem.read_u64(at + 8 * k).unwrap())
    }

    fn dma_w(
        &self,
        sid: u32,
        ssid: Option<u32>,
        iova: u64,
        data: &[u8],
    ) -> Result<bool, Termination> {
        self.smmu.dma_write(sid, ssid, iova, data)
    }

    fn fault_code(
        &self,
        sid: u32,
        ssid: Option<u32>,
        iova: u64,
        access: Access,
    ) -> Option<(u8, EventOutcome)> {
        match self.smmu.translate(sid, ssid, iova, access) {
            Err(Termination::Fault(e)) => Some((e.code, e.outcome)),
            _ => None,
        }
    }
}

fn write8(mem: &Memory, at: u64, w: [u64; 8]) {
    for (i, v) in w.iter().enumerate() {
        mem.write_u64(at + 8 * i as u64, *v);
    }
}

/// A stage-1 setup for `sid`: CD with `asid` (R set), 4-level tables; returns the table root.
fn s1_setup(f: &Fix, sid: u32, asid: u16) -> u64 {
    let root = f.mem.alloc_page().0;
    let cdt = f.mem.alloc_page().0;
    write8(&f.mem, cdt, cd(asid, root, true));
    f.ste(sid, ste_s1(cdt, 0, 0, 0));
    root
}

// ---------------------------------------------------------------------------------------------
// Registers.

/// The model's layout constants against Linux's `arm-smmu-v3.h` definitions, typed here from
/// the header (`GENMASK(h, l)` written as (dword, l, h - l + 1) for STE/CD fields).
#[test]
fn layout_constants_match_linux_definitions() {
    use super::regs::{cd, event, op, priq, queue, ste};
    // ARM_SMMU_* offsets; EVTQ/PRIQ PROD/CONS are page-1 relative there.
    assert_eq!(
        [
            off::CR0,
            off::GBPA,
            off::IRQ_CTRL,
            off::GERROR,
            off::GERRORN,
            off::STRTAB_BASE,
            off::STRTAB_BASE_CFG
        ],
        [0x20, 0x44, 0x50, 0x60, 0x64, 0x80, 0x88]
    );
    assert_eq!(
        [off::CMDQ_BASE, off::CMDQ_PROD, off::CMDQ_CONS, off::EVENTQ_BASE, off::PRIQ_BASE],
        [0x90, 0x98, 0x9c, 0xa0, 0xc0]
    );
    assert_eq!(
        [off::EVENTQ_PROD, off::EVENTQ_CONS, off::PRIQ_PROD, off::PRIQ_CONS],
        [0x10000 + 0xa8, 0x10000 + 0xac, 0x10000 + 0xc8, 0x10000 + 0xcc]
    );
    assert_eq!(
        [off::EVENTQ_IRQ_CFG0, off::PRIQ_IRQ_CFG0, off::GERROR_IRQ_CFG0],
        [0xb0, 0xd0, 0x68]
    );
    // STRTAB_STE_0_CFG GENMASK(3, 1), S1FMT (5, 4), S1CDMAX (63, 59); STE_1_S1DSS (1, 0),
    // EATS (29, 28), STRW (31, 30); STE_2_S2VMID (15, 0), VTCR at 32 (S2T0SZ 5:0, S2SL0 7:6,
    // S2TG 15:14, S2PS 18:16), S2AA64 51, S2ENDI 52, S2S 57, S2R 58.
    assert_eq!([ste::CONFIG, ste::S1FMT, ste::S1CDMAX], [(0, 1, 3), (0, 4, 2), (0, 59, 5)]);
    assert_eq!([ste::S1DSS, ste::EATS, ste::STRW], [(1, 0, 2), (1, 28, 2), (1, 30, 2)]);
    assert_eq!(
        [ste::S2VMID, ste::S2T0SZ, ste::S2SL0, ste::S2TG, ste::S2PS],
        [(2, 0, 16), (2, 32, 6), (2, 38, 2), (2, 46, 2), (2, 48, 3)]
    );
    assert_eq!(
        [ste::S2AA64, ste::S2ENDI, ste::S2S, ste::S2R],
        [(2, 51, 1), (2, 52, 1), (2, 57, 1), (2, 58, 1)]
    );
    // CTXDESC_CD_0_*: T0SZ (5, 0), TG0 (7, 6), EPD0 14, ENDI 15, EPD1 30, V 31, IPS (34, 32),
    // AA64 41, HD 42, HA 43, S 44, R 45, A 46, ASET 47, ASID (63, 48).
    assert_eq!(
        [cd::T0SZ, cd::TG0, cd::EPD0, cd::ENDI, cd::EPD1, cd::V],
        [(0, 0, 6), (0, 6, 2), (0, 14, 1), (0, 15, 1), (0, 30, 1), (0, 31, 1)]
    );
    assert_eq!(
        [cd::IPS, cd::AA64, cd::HD, cd::HA, cd::S, cd::R, cd::A, cd::ASET],
        [
            (0, 32, 3),
            (0, 41, 1),
            (0, 42, 1),
            (0, 43, 1),
            (0, 44, 1),
            (0, 45, 1),
            (0, 46, 1),
            (0, 47, 1)
        ]
    );
    assert_eq!(cd::ASID, (0, 48, 16));
    // CMDQ_OP_*.
    assert_eq!(
        [op::PREFETCH_CONFIG, op::CFGI_STE, op::CFGI_STE_RANGE, op::CFGI_CD, op::CFGI_CD_ALL],
        [0x1, 0x3, 0x4, 0x5, 0x6]
    );
    assert_eq!(
        [
            op::TLBI_NH_ALL,
            op::TLBI_NH_ASID,
            op::TLBI_NH_VA,
            op::TLBI_NH_VAA,
            op::TLBI_EL2_ALL,
            op::TLBI_EL2_ASID,
            op::TLBI_EL2_VA
        ],
        [0x10, 0x11, 0x12, 0x13, 0x20, 0x21, 0x22]
    );
    assert_eq!(
        [
            op::TLBI_S12_VMALL,
            op::TLBI_S2_IPA,
            op::TLBI_NSNH_ALL,
            op::ATC_INV,
            op::PRI_RESP,
            op::RESUME,
            op::CMD_SYNC
        ],
        [0x28, 0x2a, 0x30, 0x40, 0x41, 0x44, 0x46]
    );
    // CMDQ_CONS_ERR GENMASK(30, 24), CERROR_ILL/ABT 1/2; Q_OVERFLOW_FLAG bit 31.
    assert_eq!(
        (queue::ERR_MASK, queue::CERROR_ILL, queue::CERROR_ABT, queue::OVFLG),
        (0x7f << 24, 1, 2, 1 << 31)
    );
    // EVT_ID_* and EVTQ_0/1 fields.
    assert_eq!(
        [
            event::C_BAD_STREAMID,
            event::C_BAD_STE,
            event::F_STREAM_DISABLED,
            event::C_BAD_SUBSTREAMID,
            event::C_BAD_CD
        ],
        [0x02, 0x04, 0x06, 0x08, 0x0a]
    );
    assert_eq!(
        [event::F_TRANSLATION, event::F_ADDR_SIZE, event::F_ACCESS, event::F_PERMISSION],
        [0x10, 0x11, 0x12, 0x13]
    );
    assert_eq!(
        (event::SSV, event::PNU, event::IND, event::RNW, event::S2),
        (1 << 11, 1 << 33, 1 << 34, 1 << 35, 1 << 39)
    );
    // PRIQ_0_*.
    assert_eq!(
        (priq::PRIV, priq::EXEC, priq::READ, priq::WRITE, priq::LAST, priq::SSV),
        (1 << 58, 1 << 59, 1 << 60, 1 << 61, 1 << 62, 1 << 63)
    );
}

#[test]
fn reset_state_and_id_registers_follow_the_qemu_preset() {
    let f = Fix::new(Config::qemu_virt());
    let s = &f.smmu;
    let ids: Vec<u32> = (0..6).map(|i| s.read32(i * 4)).collect();
    assert_eq!(ids, vec![0x0d44_101b, 0x0273_0010, 0, 0x1414, 0, 0x74]);
    assert_eq!(s.read32(off::AIDR), 1);
    assert_eq!(s.read32(off::GBPA), 0x1000);
    assert_eq!(s.read32(off::CR0ACK), 0);
    // QEMU aliases page 1 onto page 0: EVENTQ_PROD reads the same at 0xa8 and 0x100a8.
    s.write32(off::EVENTQ_PROD, 5);
    s.step();
    assert_eq!((s.read32(0xa8), s.read32(off::EVENTQ_PROD)), (5, 5));
    // The PRI queue registers are reserved without IDR0.PRI.
    s.write64(off::PRIQ_BASE, 0x1234_0000);
    s.step();
    assert_eq!(s.read64(off::PRIQ_BASE), 0);
    let errs = s.take_errors();
    assert!(
        errs.contains(&ModelError::ReadOnlyWrite { offset: off::PRIQ_BASE, value: 0x1234_0000 }),
        "{errs:?}"
    );
}

#[test]
fn separate_page1_has_reserved_page0_offsets() {
    let f = Fix::new(Config::full());
    let s = &f.smmu;
    s.write32(off::EVENTQ_PROD, 3);
    s.write32(0xac, 7);
    s.step();
    assert_eq!(s.read32(off::EVENTQ_PROD), 3);
    assert_eq!(s.read32(0xa8), 0);
    assert_eq!(s.take_errors(), vec![ModelError::ReadOnlyWrite { offset: 0xac, value: 7 }]);
}

#[test]
fn cr0_irq_ctrl_and_gbpa_handshakes() {
    let f = Fix::new(Config::qemu_virt());
    let s = &f.smmu;
    // PRIQEN (bit 1) does not exist on QEMU: acknowledged without it.
    s.write32(off::CR0, 0b1111);
    s.step();
    assert_eq!(s.read32(off::CR0ACK), 0b1101);
    assert_eq!(s.take_errors(), vec![ModelError::UnsupportedBits { offset: off::CR0, bits: 0b10 }]);
    s.write32(off::IRQ_CTRL, 0b101);
    s.step();
    assert_eq!(s.read32(off::IRQ_CTRLACK), 0b101);
    // GBPA: a write with Update applies and Update reads back 0; one without is ignored.
    s.write32(off::GBPA, 1 << 31 | 1 << 20);
    s.step();
    assert_eq!(s.read32(off::GBPA), 1 << 20);
    s.write32(off::GBPA, 0);
    s.step();
    assert_eq!(s.read32(off::GBPA), 1 << 20);
    assert_eq!(s.take_errors(), vec![ModelError::GbpaWithoutUpdate { value: 0 }]);
    // A read-only register, and an 8-byte write to CR0 that also hits CR0ACK.
    s.write32(off::IDR0, 0);
    s.write64(off::CR0, 0x1_0000_0000);
    s.step();
    let errs = s.take_errors();
    assert!(errs.contains(&ModelError::ReadOnlyWrite { offset: off::IDR0, value: 0 }), "{errs:?}");
    assert!(
        errs.contains(&ModelError::ReadOnlyWrite { offset: off::CR0ACK, value: 1 }),
        "{errs:?}"
    );
    assert_eq!(s.read32(off::CR0ACK), 0);
}

#[test]
fn stream_table_and_queue_bases_are_locked_while_enabled() {
    let f = Fix::new(Config::qemu_virt());
    f.enable();
    let s = &f.smmu;
    s.write32(off::STRTAB_BASE_CFG, 4);
    s.write32(off::CMDQ_CONS, 3);
    s.step();
    assert_eq!(s.read32(off::STRTAB_BASE_CFG), 8);
    assert_eq!(s.read32(off::CMDQ_CONS), 0);
    assert_eq!(
        s.take_errors(),
        vec![
            ModelError::StreamTableWrittenWhileEnabled { offset: off::STRTAB_BASE_CFG },
            ModelError::QueueRegisterWrittenWhileEnabled { offset: off::CMDQ_CONS, value: 3 },
        ]
    );
}

#[test]
fn the_platform_maps_the_frame_and_steps_the_unit_while_polling() {
    use crate::hal::{Platform, poll};
    use core::time::Duration;
    let (platform, smmu) = pair(Config::qemu_virt());
    let frame = platform.map_mmio(DEFAULT_BASE, FRAME_SIZE).unwrap();
    assert_eq!(frame, smmu.window());
    let cr0 = frame.as_ptr().wrapping_add(off::CR0).cast::<u32>();
    let ack = frame.as_ptr().wrapping_add(off::CR0ACK).cast::<u32>();
    // SAFETY: both lie inside the frame the platform mapped.
    unsafe { cr0.write_volatile(cr0::CMDQEN) };
    // SAFETY: as above.
    let got = poll(&platform, "CR0ACK", Duration::from_millis(1), || unsafe {
        (ack.read_volatile() == cr0::CMDQEN).then_some(())
    });
    assert!(got.is_ok());
    assert!(platform.relax_count() > 0);
    // A dead unit (no stepping): the poll times out.
    platform.set_auto_step(false);
    // SAFETY: as above.
    unsafe { cr0.write_volatile(0) };
    // SAFETY: as above.
    let got = poll(&platform, "CR0ACK", Duration::from_micros(100), || unsafe {
        (ack.read_volatile() == 0).then_some(())
    });
    assert!(got.is_err());
}

#[test]
fn vtd_and_smmu_units_share_one_platform() {
    let memory = Memory::new();
    let platform = SimPlatform::new(&memory);
    let vtd = crate::sim::vtd::RemappingUnit::new(&memory, crate::sim::vtd::Config::qemu_legacy());
    let smmu = Smmu::new(&memory, Config::qemu_virt());
    platform.attach(crate::sim::vtd::DEFAULT_BASE, &vtd);
    platform.attach(DEFAULT_BASE, &smmu);
    smmu.write32(off::CR0, cr0::EVENTQEN);
    platform.step_all();
    assert_eq!(smmu.read32(off::CR0ACK), cr0::EVENTQEN);
    assert_eq!(vtd.steps(), smmu.steps());
}

// ---------------------------------------------------------------------------------------------
// Global bypass, stream table, STEs.

#[test]
fn smmu_disabled_bypasses_or_aborts_per_gbpa() {
    let f = Fix::new(Config::qemu_virt());
    let page = f.mem.alloc_page().0;
    assert_eq!(f.dma_w(9, None, page, &[1, 2]), Ok(true));
    assert_eq!(f.mem.read_u32(page), Some(0x0201));
    f.smmu.write32(off::GBPA, 1 << 31 | 1 << 20);
    assert_eq!(f.dma_w(9, None, page, &[3]), Err(Termination::GlobalAbort));
    assert!(f.smmu.events().is_empty());
}

#[test]
fn linear_stream_table_stage1_round_trip() {
    let f = Fix::new(Config::qemu_virt());
    f.enable();
    let root = s1_setup(&f, 8, 1);
    let buf = f.mem.alloc_page().0;
    map(&f.mem, root, 4, 0x234_5000, buf, 3, AF | AP_USER | NG);
    assert_eq!(f.dma_w(8, None, 0x234_5008, &[0xaa; 8]), Ok(true));
    let mut back = [0u8; 8];
    assert_eq!(f.smmu.dma_read(8, None, 0x234_5008, &mut back), Ok(true));
    assert_eq!(back, [0xaa; 8]);
    assert_eq!(f.mem.read_u64(buf + 8), Some(0xaaaa_aaaa_aaaa_aaaa));
    let t = f.smmu.translate(8, None, 0x234_5010, Access::READ).unwrap();
    assert_eq!(
        (t.phys, t.stage, t.asid, t.vmid, t.cached),
        (buf + 0x10, Stage::Stage1, Some(1), Some(0), true)
    );
    assert!(f.smmu.events().is_empty());
    assert!(f.smmu.errors().is_empty(), "{:?}", f.smmu.errors());
}

#[test]
fn two_level_stream_table_span_and_bad_streamid() {
    let f = Fix::new(Config::qemu_virt());
    // SPLIT 8, LOG2SIZE 16: 256 L1 descriptors of 256 STEs each (FMT 1 at bits 17:16).
    let l1 = f.mem.alloc(256 * 8, 4096).0.0;
    let l2 = f.mem.alloc(256 * 64, 4096).0.0;
    // Bus 1 (SIDs 0x100-0x1ff): SPAN 5 = 16 STEs; bus 2: SPAN 0 (invalid).
    f.mem.write_u64(l1 + 8, l2 | 5);
    f.enable_with(l1, 1 << 16 | 8 << 6 | 16);
    let root = f.mem.alloc_page().0;
    let cdt = f.mem.alloc_page().0;
    write8(&f.mem, cdt, cd(3, root, true));
    write8(&f.mem, l2 + 0x08 * 64, ste_s1(cdt, 0, 0, 0));
    let buf = f.mem.alloc_page().0;
    map(&f.mem, root, 4, 0x1000, buf, 3, AF | AP_USER);
    assert_eq!(f.smmu.translate(0x108, None, 0x1004, Access::READ).map(|t| t.phys), Ok(buf + 4));
    assert_eq!(f.fault_code(0x110, None, 0, Access::READ).unwrap().0, 0x02, "beyond SPAN");
    assert_eq!(f.fault_code(0x208, None, 0, Access::READ).unwrap().0, 0x02, "SPAN 0");
    // A StreamID beyond 2^LOG2SIZE, on a linear table of 256.
    let g = Fix::new(Config::qemu_virt());
    g.enable();
    let Err(Termination::Fault(e)) = g.smmu.translate(0x1f8, None, 0x4000, Access::WRITE) else {
        panic!()
    };
    assert_eq!((e.code, e.sid, e.outcome), (0x02, 0x1f8, EventOutcome::Recorded(0)));
    // The record: type 0x02 in bits 7:0, StreamID in 63:32, nothing else.
    assert_eq!(g.record(0), [0x02 | 0x1f8 << 32, 0, 0, 0]);
    assert_eq!(g.smmu.read32(off::EVENTQ_PROD), 1);
    // Without CR2.RECINVSID the transaction is terminated silently.
    g.smmu.write32(off::CR2, 0);
    assert_eq!(g.fault_code(0x1f8, None, 0, Access::READ), Some((0x02, EventOutcome::Suppressed)));
    assert_eq!(g.smmu.read32(off::EVENTQ_PROD), 1);
}

#[test]
fn invalid_and_abort_stes() {
    let f = Fix::new(Config::qemu_virt());
    f.enable();
    f.ste(1, [0; 8]);
    f.ste(2, ste_config(0b001));
    f.ste(3, ste_config(0b000));
    f.ste(4, ste_config(0b100));
    let mut s2 = ste_s2(1, 0, true);
    s2[2] &= !(1 << 51);
    f.ste(5, s2);
    assert_eq!(f.fault_code(1, None, 0, Access::READ), Some((0x04, EventOutcome::Recorded(0))));
    assert_eq!(f.fault_code(2, None, 0, Access::READ), Some((0x04, EventOutcome::Recorded(1))));
    assert_eq!(f.smmu.translate(3, None, 0, Access::READ), Err(Termination::StreamAbort));
    let page = f.mem.alloc_page().0;
    assert_eq!(
        f.smmu.translate(4, None, page, Access::WRITE).map(|t| (t.phys, t.stage)),
        Ok((page, Stage::Bypass))
    );
    assert_eq!(f.fault_code(5, None, 0, Access::READ).unwrap().0, 0x04);
    assert_eq!(f.smmu.take_errors(), vec![ModelError::Stage2AArch32 { sid: 5 }]);
    // Only the two C_BAD_STE and the S2AA64 one were recorded; the abort was silent.
    assert_eq!(f.smmu.read32(off::EVENTQ_PROD), 3);
    assert_eq!(f.record(0)[0], 0x04 | 1 << 32);
    // STEs with errors are not cached; valid ones are.
    assert_eq!(f.smmu.ste_cache_len(), 2);
}

#[test]
fn fetch_from_unbacked_memory_is_f_ste_fetch() {
    let f = Fix::new(Config::qemu_virt());
    f.enable_with(0x7000_0000, 8);
    let Err(Termination::Fault(e)) = f.smmu.translate(2, None, 0, Access::READ) else { panic!() };
    assert_eq!((e.code, e.ipa_or_fetch), (0x03, 0x7000_0000 + 2 * 64));
}

// ---------------------------------------------------------------------------------------------
// Stage 1.

#[test]
fn stage1_translation_faults_are_recorded_only_with_cd_r() {
    let f = Fix::new(Config::qemu_virt());
    f.enable();
    let root = s1_setup(&f, 8, 1);
    let quiet = f.mem.alloc_page().0;
    let cdt = f.mem.alloc_page().0;
    write8(&f.mem, cdt, cd(2, quiet, false));
    f.ste(9, ste_s1(cdt, 0, 0, 0));
    let Err(Termination::Fault(e)) = f.smmu.translate(8, None, 0x234_8000, Access::WRITE) else {
        panic!()
    };
    assert_eq!((e.code, e.outcome, e.stage2), (0x10, EventOutcome::Recorded(0), false));
    // dword 0: type, StreamID; dword 1: RnW (35) clear for a write; dword 2: the address.
    assert_eq!(f.record(0), [0x10 | 8 << 32, 0, 0x234_8000, 0]);
    let Err(Termination::Fault(e)) =
        f.smmu.translate(8, None, 0x234_8000, Access { privileged: true, ..Access::READ })
    else {
        panic!()
    };
    assert_eq!(e.raw[1], 1 << 35 | 1 << 33, "RnW and PnU");
    // R clear: terminated without a record.
    assert_eq!(f.fault_code(9, None, 0x1000, Access::READ), Some((0x10, EventOutcome::Suppressed)));
    assert_eq!(f.smmu.read32(off::EVENTQ_PROD), 2);
    let _ = root;
}

#[test]
fn stage1_permission_access_flag_and_address_size() {
    let f = Fix::new(Config::qemu_virt());
    f.enable();
    let root = s1_setup(&f, 8, 1);
    let p = f.mem.alloc(8 * 4096, 4096).0.0;
    map(&f.mem, root, 4, 0x10000, p, 3, AF | AP_USER | AP_RO);
    map(&f.mem, root, 4, 0x11000, p + 0x1000, 3, AP_USER);
    map(&f.mem, root, 4, 0x12000, p + 0x2000, 3, AF);
    map(&f.mem, root, 4, 0x13000, p + 0x3000, 3, AF | AP_USER | UXN);
    map(&f.mem, root, 4, 0x14000, p + 0x4000, 3, AF | PXN);
    // Beyond the 48-bit IPS (QEMU's OAS is 44 bits, so IPS is capped there).
    map(&f.mem, root, 4, 0x15000, 1 << 46, 3, AF | AP_USER);
    let before = f.mem.read_u64(p).unwrap();
    assert_eq!(f.fault_code(8, None, 0x10000, Access::WRITE).unwrap().0, 0x13);
    assert_eq!(f.mem.read_u64(p).unwrap(), before, "nothing written");
    assert!(f.smmu.translate(8, None, 0x10000, Access::READ).is_ok());
    assert_eq!(f.fault_code(8, None, 0x11000, Access::READ).unwrap().0, 0x12, "AF clear");
    assert_eq!(
        f.fault_code(8, None, 0x12000, Access::READ).unwrap().0,
        0x13,
        "AP[1] clear: no user access"
    );
    let priv_read = Access { privileged: true, ..Access::READ };
    assert!(f.smmu.translate(8, None, 0x12000, priv_read).is_ok());
    let user_exec = Access { instruction: true, ..Access::READ };
    assert_eq!(f.fault_code(8, None, 0x13000, user_exec).unwrap().0, 0x13, "UXN");
    let priv_exec = Access { privileged: true, instruction: true, write: false };
    assert_eq!(f.fault_code(8, None, 0x14000, priv_exec).unwrap().0, 0x13, "PXN");
    assert!(f.smmu.translate(8, None, 0x13000, priv_read).is_ok());
    assert_eq!(f.fault_code(8, None, 0x15000, Access::READ).unwrap().0, 0x11);
    // Beyond T0SZ (48-bit input) and not in TTB1's range (EPD1).
    assert_eq!(f.fault_code(8, None, 1 << 50, Access::READ).unwrap().0, 0x10);
    // With CD.AFFD (bit 35) an access-flag-clear page translates.
    let cdt = f.mem.alloc_page().0;
    let mut c = cd(1, root, true);
    c[0] |= 1 << 35;
    write8(&f.mem, cdt, c);
    f.ste(10, ste_s1(cdt, 0, 0, 0));
    assert!(f.smmu.translate(10, None, 0x11000, Access::READ).is_ok());
}

#[test]
fn stage1_blocks_and_hierarchical_read_only() {
    let f = Fix::new(Config::qemu_virt());
    f.enable();
    let root = s1_setup(&f, 8, 1);
    map(&f.mem, root, 4, 0x4000_0000, 0x8000_0000, 1, AF | AP_USER);
    map(&f.mem, root, 4, 0x20_0000, 0x60_0000, 2, AF | AP_USER);
    let t = f.smmu.translate(8, None, 0x4123_4567, Access::WRITE).unwrap();
    assert_eq!((t.phys, t.page_size), (0x8123_4567, 1 << 30));
    let t = f.smmu.translate(8, None, 0x21_2345, Access::READ).unwrap();
    assert_eq!((t.phys, t.page_size), (0x61_2345, 2 << 20));
    // APTable[1] (bit 62) in the level-0 entry makes everything below read-only.
    let l0 = f.mem.read_u64(root).unwrap();
    f.mem.write_u64(root, l0 | 1 << 62);
    f.submit(&[cmd_tlbi_nh_asid(0, 1), cmd_sync(0, 0, 0)]);
    assert_eq!(f.fault_code(8, None, 0x21_2345, Access::WRITE).unwrap().0, 0x13);
    assert!(f.smmu.translate(8, None, 0x21_2345, Access::READ).is_ok());
}

#[test]
fn invalid_cds() {
    let f = Fix::new(Config::qemu_virt());
    f.enable();
    let cases: [(u64, u64); 3] = [(1 << 31, 0), (1 << 41, 0), (1 << 44, 0)];
    for (n, (clear, set)) in cases.iter().enumerate() {
        let cdt = f.mem.alloc_page().0;
        let mut c = cd(1, 0, true);
        c[0] = (c[0] & !clear) | set;
        if *clear == 1 << 44 {
            c[0] |= 1 << 44; // S: stall, unsupported
        }
        write8(&f.mem, cdt, c);
        // CAST: a handful.
        let sid = 20 + n as u32;
        f.ste(sid, ste_s1(cdt, 0, 0, 0));
        assert_eq!(f.fault_code(sid, None, 0, Access::READ).unwrap().0, 0x0a, "case {n}");
    }
    // A clear: valid per the specification with TERM_MODEL = 1, refused by QEMU.
    let cdt = f.mem.alloc_page().0;
    let root = f.mem.alloc_page().0;
    let mut c = cd(1, root, true);
    c[0] &= !(1 << 46);
    write8(&f.mem, cdt, c);
    f.ste(30, ste_s1(cdt, 0, 0, 0));
    assert_eq!(f.fault_code(30, None, 0, Access::READ).unwrap().0, 0x10);
    assert_eq!(f.smmu.take_errors(), vec![ModelError::CdAbortClear { sid: 30, ssid: 0 }]);
    // A 64 KiB TG0 (0b01) is not modelled.
    let mut c = cd(1, root, true);
    c[0] |= 1 << 6;
    write8(&f.mem, cdt, c);
    f.ste(31, ste_s1(cdt, 0, 0, 0));
    assert_eq!(f.fault_code(31, None, 0, Access::READ).unwrap().0, 0x0a);
    assert_eq!(f.smmu.take_errors(), vec![ModelError::UnmodelledGranule { sid: 31 }]);
}

// ---------------------------------------------------------------------------------------------
// Substreams.

#[test]
fn substreams_with_a_two_level_cd_table() {
    let f = Fix::new(Config::full());
    f.enable();
    // S1CDMax 8 (256 CDs), S1Fmt 1: L1 of 4 descriptors, each an L2 of 64 CDs.
    let l1 = f.mem.alloc_page().0;
    let l2a = f.mem.alloc_page().0;
    let l2d = f.mem.alloc_page().0;
    f.mem.write_u64(l1, l2a | 1);
    f.mem.write_u64(l1 + 3 * 8, l2d | 1);
    let (ra, rb) = (f.mem.alloc_page().0, f.mem.alloc_page().0);
    write8(&f.mem, l2a + 5 * 64, cd(5, ra, true));
    write8(&f.mem, l2d + (200 - 192) * 64, cd(200, rb, true));
    let (pa, pb) = (f.mem.alloc_page().0, f.mem.alloc_page().0);
    // Not global (nG): a global entry cached for one ASID would serve every other ASID too.
    map(&f.mem, ra, 4, 0x1000, pa, 3, AF | AP_USER | NG);
    map(&f.mem, rb, 4, 0x1000, pb, 3, AF | AP_USER | NG);
    f.ste(16, ste_s1(l1, 8, 1, 0));
    let t = f.smmu.translate(16, Some(5), 0x1000, Access::READ).unwrap();
    assert_eq!((t.phys, t.asid), (pa, Some(5)));
    let t = f.smmu.translate(16, Some(200), 0x1000, Access::READ).unwrap();
    assert_eq!((t.phys, t.asid), (pb, Some(200)));
    // L1 descriptor 1 invalid and SSID beyond 2^S1CDMax: C_BAD_SUBSTREAMID, with SSV and the
    // SSID in the record; no SSID with S1DSS terminate: F_STREAM_DISABLED (0x06).
    let Err(Termination::Fault(e)) = f.smmu.translate(16, Some(70), 0x1000, Access::READ) else {
        panic!()
    };
    assert_eq!((e.code, e.ssid), (0x08, Some(70)));
    assert_eq!(e.raw[0], 0x08 | 1 << 11 | 70 << 12 | 16 << 32);
    assert_eq!(f.fault_code(16, Some(256), 0x1000, Access::READ).unwrap().0, 0x08);
    assert_eq!(f.fault_code(16, None, 0x1000, Access::READ).unwrap().0, 0x06);
    // S1DSS bypass: no-SSID traffic skips stage 1.
    f.ste(17, ste_s1(l1, 8, 1, 1));
    assert_eq!(f.smmu.translate(17, None, pa, Access::READ).map(|t| t.stage), Ok(Stage::Bypass));
    // S1DSS SSID0: no-SSID traffic uses CD 0; SSID 0 itself is refused.
    write8(&f.mem, l2a, cd(9, ra, true));
    f.ste(18, ste_s1(l1, 8, 1, 2));
    assert_eq!(f.smmu.translate(18, None, 0x1000, Access::READ).map(|t| t.asid), Ok(Some(9)));
    assert_eq!(f.fault_code(18, Some(0), 0x1000, Access::READ).unwrap().0, 0x06);
    // S1DSS 0b11 is reserved and behaves as terminate.
    f.ste(20, ste_s1(l1, 8, 1, 3));
    assert_eq!(f.fault_code(20, None, 0x1000, Access::READ).unwrap().0, 0x06);
    // A linear CD table (S1Fmt 0) with 4 CDs.
    let lin = f.mem.alloc_page().0;
    write8(&f.mem, lin + 3 * 64, cd(33, rb, true));
    f.ste(19, ste_s1(lin, 2, 0, 0));
    assert_eq!(f.smmu.translate(19, Some(3), 0x1000, Access::READ).map(|t| t.phys), Ok(pb));
}

#[test]
fn qemu_has_no_substreams() {
    let f = Fix::new(Config::qemu_virt());
    f.enable();
    let root = s1_setup(&f, 8, 1);
    map(&f.mem, root, 4, 0x1000, 0x1000, 3, AF | AP_USER);
    assert_eq!(f.fault_code(8, Some(1), 0x1000, Access::READ).unwrap().0, 0x08);
    // S1CDMax beyond IDR1.SSIDSIZE (0) is ILLEGAL.
    f.ste(9, ste_s1(0x1000, 1, 0, 0));
    assert_eq!(f.fault_code(9, None, 0x1000, Access::READ).unwrap().0, 0x04);
}

// ---------------------------------------------------------------------------------------------
// Stage 2 and nesting.

#[test]
fn stage2_permissions_and_s2r() {
    let f = Fix::new(Config::qemu_virt());
    f.enable();
    let s2root = f.mem.alloc_page().0;
    let p = f.mem.alloc(2 * 4096, 4096).0.0;
    map(&f.mem, s2root, 3, 0x8000_0000, p, 3, AF | S2_R);
    map(&f.mem, s2root, 3, 0x8000_1000, p + 0x1000, 3, AF | S2_R | S2_W);
    f.ste(8, ste_s2(7, s2root, true));
    f.ste(9, ste_s2(8, s2root, false));
    let t = f.smmu.translate(8, None, 0x8000_1234, Access::WRITE).unwrap();
    assert_eq!((t.phys, t.stage, t.vmid, t.asid), (p + 0x1234, Stage::Stage2, Some(7), None));
    let Err(Termination::Fault(e)) = f.smmu.translate(8, None, 0x8000_0010, Access::WRITE) else {
        panic!()
    };
    assert_eq!((e.code, e.stage2, e.class), (0x13, true, 2));
    // dword 1: S2 (39), CLASS IN (41:40 = 0b10); dword 3: the IPA's page (51:12).
    assert_eq!(f.record(0), [0x13 | 8 << 32, 1 << 39 | 2 << 40, 0x8000_0010, 0x8000_0000]);
    // Beyond the 39-bit IAS, and unmapped.
    assert_eq!(f.fault_code(8, None, 1 << 40, Access::READ).unwrap().0, 0x10);
    // S2R clear: silent.
    assert_eq!(
        f.fault_code(9, None, 0x8000_0010, Access::WRITE),
        Some((0x13, EventOutcome::Suppressed))
    );
    // A 1 GiB stage-2 block.
    map(&f.mem, s2root, 3, 0x4000_0000, 0x1_0000_0000, 1, AF | S2_R | S2_W);
    let t = f.smmu.translate(8, None, 0x4000_2000, Access::READ).unwrap();
    assert_eq!((t.phys, t.page_size), (0x1_0000_2000, 1 << 30));
}

#[test]
fn nested_translation_walks_stage1_tables_through_stage2() {
    let f = Fix::new(Config::qemu_virt());
    f.enable();
    // Guest "IPA" space: the CD, the stage-1 tables and the data page are placed at IPAs that
    // stage 2 maps to real pages at other addresses.
    let s2root = f.mem.alloc_page().0;
    let (cd_pa, s1_pa, data_pa) =
        (f.mem.alloc_page().0, f.mem.alloc_page().0, f.mem.alloc_page().0);
    let (cd_ipa, s1_ipa, data_ipa) = (0x4000_0000u64, 0x4000_1000u64, 0x4000_8000u64);
    map(&f.mem, s2root, 3, cd_ipa, cd_pa, 3, AF | S2_R | S2_W);
    map(&f.mem, s2root, 3, s1_ipa, s1_pa, 3, AF | S2_R | S2_W);
    map(&f.mem, s2root, 3, data_ipa, data_pa, 3, AF | S2_R);
    write8(&f.mem, cd_pa, cd(4, s1_ipa, true));
    // The stage-1 tables below the root are allocated at their real addresses and mapped 1:1
    // in stage 2, so a host-built table works.
    let va = 0x10_0000u64;
    let mut table_ipa = s1_ipa;
    let mut table_pa = s1_pa;
    for level in 0..3u64 {
        let next = f.mem.alloc_page().0;
        map(&f.mem, s2root, 3, next, next, 3, AF | S2_R | S2_W);
        let shift = 12 + 9 * (3 - level);
        f.mem.write_u64(table_pa + ((va >> shift) & 511) * 8, next | TABLE);
        table_ipa = next;
        table_pa = next;
    }
    let _ = table_ipa;
    f.mem.write_u64(table_pa + ((va >> 12) & 511) * 8, data_ipa | PAGE | AF | AP_USER);
    f.ste(8, ste_nested(cd_ipa, 3, s2root));
    let t = f.smmu.translate(8, None, va + 0x10, Access::READ).unwrap();
    assert_eq!(
        (t.phys, t.stage, t.asid, t.vmid),
        (data_pa + 0x10, Stage::Nested, Some(4), Some(3))
    );
    // Stage 2 makes the data read-only: a write faults at stage 2 with the IPA.
    let Err(Termination::Fault(e)) = f.smmu.translate(8, None, va, Access::WRITE) else { panic!() };
    assert_eq!((e.code, e.stage2, e.ipa_or_fetch), (0x13, true, data_ipa));
    // An unmapped stage-1 table IPA: a stage-2 translation fault of CLASS TT.
    let f2 = Fix::new(Config::qemu_virt());
    f2.enable();
    let s2b = f2.mem.alloc_page().0;
    let cdp = f2.mem.alloc_page().0;
    map(&f2.mem, s2b, 3, 0x5000_0000, cdp, 3, AF | S2_R);
    write8(&f2.mem, cdp, cd(4, 0x6000_0000, true));
    f2.ste(8, ste_nested(0x5000_0000, 3, s2b));
    let Err(Termination::Fault(e)) = f2.smmu.translate(8, None, 0x1000, Access::READ) else {
        panic!()
    };
    assert_eq!((e.code, e.stage2, e.class, e.ipa_or_fetch), (0x10, true, 1, 0x6000_0000));
}

// ---------------------------------------------------------------------------------------------
// Caches and invalidation.

#[test]
fn stale_translations_until_tlbi_tagged_by_asid() {
    let f = Fix::new(Config::qemu_virt());
    f.enable();
    let root = s1_setup(&f, 8, 1);
    let (a, b) = (f.mem.alloc_page().0, f.mem.alloc_page().0);
    let leaf = map(&f.mem, root, 4, 0x5000, a, 3, AF | AP_USER | NG);
    assert_eq!(f.smmu.translate(8, None, 0x5000, Access::READ).map(|t| t.phys), Ok(a));
    // Unmap without TLBI: the stale entry still translates (as on QEMU and hardware).
    f.mem.write_u64(leaf, 0);
    assert_eq!(
        f.smmu.translate(8, None, 0x5000, Access::READ).map(|t| (t.phys, t.cached)),
        Ok((a, true))
    );
    // A TLBI for another ASID leaves it; the right one removes it.
    f.submit(&[cmd_tlbi_nh_va(0, 2, 0x5000), cmd_sync(0, 0, 0)]);
    assert!(f.smmu.translate(8, None, 0x5000, Access::READ).is_ok());
    f.submit(&[cmd_tlbi_nh_va(0, 1, 0x5000), cmd_sync(0, 0, 0)]);
    assert_eq!(f.fault_code(8, None, 0x5000, Access::READ).unwrap().0, 0x10);
    // A global (nG clear) page is hit by a TLBI_NH_VA of any ASID.
    f.mem.write_u64(leaf, b | PAGE | AF | AP_USER);
    assert!(f.smmu.translate(8, None, 0x5000, Access::READ).is_ok());
    f.mem.write_u64(leaf, 0);
    f.submit(&[cmd_tlbi_nh_va(0, 77, 0x5000)]);
    assert!(f.smmu.translate(8, None, 0x5000, Access::READ).is_err());
    // TLBI_NH_ALL for VMID 0 (the S2VMID of a stage-1-only STE) clears it too.
    f.mem.write_u64(leaf, b | PAGE | AF | AP_USER);
    assert!(f.smmu.translate(8, None, 0x5000, Access::READ).is_ok());
    f.mem.write_u64(leaf, 0);
    f.submit(&[[0x10 | 1 << 32, 0]]);
    assert!(f.smmu.translate(8, None, 0x5000, Access::READ).unwrap().cached, "other VMID");
    f.submit(&[[0x10, 0]]);
    assert!(f.smmu.translate(8, None, 0x5000, Access::READ).is_err());
    // TLBI_NSNH_ALL clears everything.
    f.mem.write_u64(leaf, b | PAGE | AF | AP_USER);
    assert!(f.smmu.translate(8, None, 0x5000, Access::READ).is_ok());
    assert_eq!(f.smmu.tlb_len(), 1);
    f.submit(&[[0x30, 0]]);
    assert_eq!(f.smmu.tlb_len(), 0);
}

#[test]
fn range_invalidation_needs_ril() {
    let f = Fix::new(Config::qemu_virt());
    f.enable();
    let root = s1_setup(&f, 8, 1);
    for i in 0..6u64 {
        map(
            &f.mem,
            root,
            4,
            0x10_0000 + i * 0x1000,
            0x2000_0000 + i * 0x1000,
            3,
            AF | AP_USER | NG,
        );
        assert!(f.smmu.translate(8, None, 0x10_0000 + i * 0x1000, Access::READ).is_ok());
    }
    // TG 1 (4 KiB), SCALE 1, NUM 1: (1 + 1) * 2^1 = 4 pages from 0x101000.
    f.submit(&[[0x12 | 1 << 12 | 1 << 20 | 1 << 48, 0x10_1000 | 1 << 10]]);
    let left: Vec<bool> = (0..6u64)
        .map(|i| f.smmu.translate(8, None, 0x10_0000 + i * 0x1000, Access::READ).unwrap().cached)
        .collect();
    assert_eq!(left, vec![true, false, false, false, false, true]);
    // Without IDR3.RIL the range fields are ILLEGAL.
    let g = Fix::new(Config::full().with_idr(3, 0));
    g.enable();
    g.submit(&[[0x12 | 1 << 12 | 1 << 48, 0x10_1000 | 1 << 10]]);
    assert_eq!(g.cons() >> 24, 1, "CERROR_ILL");
    assert_eq!(g.smmu.read32(off::GERROR) & gerror::CMDQ_ERR, 1);
}

#[test]
fn stage2_invalidation_by_ipa_and_vmid() {
    let f = Fix::new(Config::qemu_virt());
    f.enable();
    let s2root = f.mem.alloc_page().0;
    let leaf = map(&f.mem, s2root, 3, 0x8000_0000, 0x9000_0000, 3, AF | S2_R | S2_W);
    f.ste(8, ste_s2(7, s2root, true));
    assert!(f.smmu.translate(8, None, 0x8000_0000, Access::READ).is_ok());
    f.mem.write_u64(leaf, 0);
    f.submit(&[cmd_tlbi_s2_ipa(6, 0x8000_0000)]);
    assert!(f.smmu.translate(8, None, 0x8000_0000, Access::READ).is_ok(), "other VMID");
    // TLBI_NH_ALL does not touch stage-2-only entries.
    f.submit(&[[0x10 | 7 << 32, 0]]);
    assert!(f.smmu.translate(8, None, 0x8000_0000, Access::READ).is_ok());
    f.submit(&[cmd_tlbi_s2_ipa(7, 0x8000_0000)]);
    assert!(f.smmu.translate(8, None, 0x8000_0000, Access::READ).is_err());
    // TLBI_S12_VMALL.
    f.mem.write_u64(leaf, 0x9000_0000 | PAGE | AF | S2_R);
    assert!(f.smmu.translate(8, None, 0x8000_0000, Access::READ).is_ok());
    f.mem.write_u64(leaf, 0);
    f.submit(&[[0x28 | 7 << 32, 0]]);
    assert!(f.smmu.translate(8, None, 0x8000_0000, Access::READ).is_err());
}

#[test]
fn el2_invalidations_need_hyp_and_hit_el2_entries_only() {
    let f = Fix::new(Config::qemu_virt());
    f.enable();
    f.submit(&[[0x20, 0]]);
    assert_eq!(f.cons() >> 24, 1, "TLBI_EL2_ALL without IDR0.HYP");
    let g = Fix::new(Config::full());
    g.enable();
    let root = s1_setup(&g, 8, 1);
    let mut s = ste_s1(g.mem.read_u64(g.strtab + 8 * 64).unwrap() & 0x000f_ffff_ffff_ffc0, 0, 0, 0);
    s[1] |= 2 << 30; // STRW = EL2
    g.ste(9, s);
    let leaf = map(&g.mem, root, 4, 0x3000, 0x3000, 3, AF | AP_USER | NG);
    assert!(g.smmu.translate(8, None, 0x3000, Access::READ).is_ok());
    assert!(g.smmu.translate(9, None, 0x3000, Access::READ).is_ok());
    g.mem.write_u64(leaf, 0);
    g.submit(&[[0x20, 0]]);
    assert!(g.smmu.translate(8, None, 0x3000, Access::READ).unwrap().cached, "EL1 entry kept");
    assert!(g.smmu.translate(9, None, 0x3000, Access::READ).is_err(), "EL2 entry gone");
}

#[test]
fn stale_configuration_until_cfgi() {
    let f = Fix::new(Config::qemu_virt());
    f.enable();
    let root = s1_setup(&f, 8, 1);
    map(&f.mem, root, 4, 0x5000, 0x6000, 3, AF | AP_USER | NG);
    assert!(f.smmu.translate(8, None, 0x5000, Access::READ).is_ok());
    // The STE becomes abort, and the TLB is flushed, but without CFGI_STE the cached STE
    // still translates.
    f.ste(8, ste_config(0));
    f.submit(&[cmd_tlbi_nh_asid(0, 1)]);
    assert!(f.smmu.translate(8, None, 0x5000, Access::READ).is_ok());
    f.submit(&[cmd_cfgi_ste(8)]);
    assert_eq!(f.smmu.translate(8, None, 0x5000, Access::READ), Err(Termination::StreamAbort));
    // A CD change needs CFGI_CD (or CFGI_STE, which also drops the CDs, §4.3.1).
    let root2 = s1_setup(&f, 8, 2);
    f.submit(&[cmd_cfgi_ste(8)]);
    map(&f.mem, root2, 4, 0x5000, 0x7000, 3, AF | AP_USER | NG);
    assert_eq!(f.smmu.translate(8, None, 0x5000, Access::READ).map(|t| t.phys), Ok(0x7000));
    let cdt = f.mem.read_u64(f.strtab + 8 * 64).unwrap() & 0x000f_ffff_ffff_ffc0;
    write8(&f.mem, cdt, cd(3, root, true));
    assert_eq!(f.smmu.cached_cd(8, 0).map(|c| c[0] >> 48), Some(2));
    assert_eq!(f.smmu.translate(8, None, 0x5000, Access::READ).map(|t| t.asid), Ok(Some(2)));
    f.submit(&[cmd_cfgi_cd(8, 0)]);
    assert_eq!(
        f.smmu.translate(8, None, 0x5000, Access::READ).map(|t| (t.asid, t.phys)),
        Ok((Some(3), 0x6000))
    );
    // CFGI_STE_RANGE with Range 3 covers the aligned 16 StreamIDs 0..=15 only.
    f.ste(20, ste_config(0b100));
    assert!(f.smmu.translate(20, None, 0x5000, Access::READ).is_ok());
    f.submit(&[[0x04 | 9 << 32, 3]]);
    assert_eq!((f.smmu.cached_ste(8), f.smmu.cached_ste(20).is_some()), (None, true));
    assert!(f.smmu.translate(8, None, 0x5000, Access::READ).is_ok());
    // CFGI_ALL empties both caches.
    assert!(f.smmu.ste_cache_len() > 0 && f.smmu.cd_cache_len() > 0);
    f.submit(&[cmd_cfgi_all()]);
    assert_eq!((f.smmu.ste_cache_len(), f.smmu.cd_cache_len()), (0, 0));
}

#[test]
fn prefetch_may_cache_an_ste_before_it_is_written() {
    let f = Fix::new(Config::qemu_virt());
    f.enable();
    f.ste(8, ste_config(0b100));
    f.submit(&[[0x01 | 8 << 32, 0]]);
    assert_eq!(f.smmu.ste_cache_len(), 1);
    // Written after the prefetch: invisible until CFGI_STE.
    f.ste(8, ste_config(0));
    assert!(f.smmu.translate(8, None, 0x1000, Access::READ).is_ok());
    f.submit(&[cmd_cfgi_ste(8)]);
    assert_eq!(f.smmu.translate(8, None, 0x1000, Access::READ), Err(Termination::StreamAbort));
}

// ---------------------------------------------------------------------------------------------
// Command queue.

#[test]
fn every_command_is_logged_in_order_with_config_snapshots() {
    let f = Fix::new(Config::full());
    f.enable();
    let status = f.mem.alloc_page().0;
    let s = ste_config(0b100);
    f.ste(5, s);
    f.submit(&[cmd_cfgi_ste(5), cmd_tlbi_nh_asid(0, 1), cmd_sync(1, 0x600d, status)]);
    // A driver that invalidates before writing: the snapshot shows the old entry.
    f.submit(&[cmd_cfgi_ste(6)]);
    f.ste(6, s);
    let log = f.smmu.commands();
    let kinds: Vec<Command> = log.iter().map(|l| l.command.unwrap()).collect();
    assert_eq!(
        kinds,
        vec![
            Command::CfgiSte { sid: 5, leaf: true },
            Command::TlbiNhAsid { vmid: 0, asid: 1 },
            Command::Sync { signal: SyncSignal::Irq, msi_data: 0x600d, msi_address: status },
            Command::CfgiSte { sid: 6, leaf: true },
        ]
    );
    assert_eq!(log.iter().map(|l| l.index).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    assert_eq!(log[0].snapshot, Some(s));
    assert_eq!(log[3].snapshot, Some([0; 8]));
    // The CMD_SYNC's MSI wrote its data to memory (IDR0.MSI).
    assert_eq!(f.mem.read_u32(status), Some(0x600d));
    assert_eq!(
        f.smmu.interrupts(),
        vec![Interrupt { kind: InterruptKind::CmdSync, msi: Some((status, 0x600d)) }]
    );
}

#[test]
fn every_command_type_decodes() {
    let f = Fix::new(Config::full());
    f.enable();
    let cmds = [
        [0x02 | 1 << 11 | 3 << 12 | 4 << 32, 0x5000],
        [0x04 | 0x100 << 32, 7],
        [0x06 | 4 << 32, 0],
        [0x13 | 2 << 32, 0x8000],
        [0x21 | 9 << 48, 0],
        [0x22 | 9 << 48, 0x9000],
        [0x23, 0xa000],
        [0x2a | 2 << 32, 0xb000],
        [0x40 | 1 << 9 | 4 << 32, 0xc000 | 3],
        [0x44 | 2 << 12 | 4 << 32, 0x55],
        [0x45 | 4 << 32, 0],
        [0x46 | 2 << 12, 0],
    ];
    f.submit(&cmds);
    let got: Vec<Command> = f.smmu.commands().iter().map(|l| l.command.unwrap()).collect();
    assert_eq!(
        got,
        vec![
            Command::PrefetchAddr { sid: 4, ssid: Some(3), address: 0x5000 },
            Command::CfgiSteRange { sid: 0x100, range: 7 },
            Command::CfgiCdAll { sid: 4 },
            Command::TlbiNhVaa {
                vmid: 2,
                range: TlbiRange { address: 0x8000, leaf: false, ttl: 0, tg: 0, num: 0, scale: 0 }
            },
            Command::TlbiEl2Asid { asid: 9 },
            Command::TlbiEl2Va {
                asid: 9,
                range: TlbiRange { address: 0x9000, leaf: false, ttl: 0, tg: 0, num: 0, scale: 0 }
            },
            Command::TlbiEl2Vaa {
                range: TlbiRange { address: 0xa000, leaf: false, ttl: 0, tg: 0, num: 0, scale: 0 }
            },
            Command::TlbiS2Ipa {
                vmid: 2,
                range: TlbiRange { address: 0xb000, leaf: false, ttl: 0, tg: 0, num: 0, scale: 0 }
            },
            Command::AtcInv { sid: 4, ssid: None, global: true, address: 0xc000, size: 3 },
            Command::Resume { sid: 4, stag: 0x55, action: 2 },
            Command::StallTerm { sid: 4 },
            Command::Sync { signal: SyncSignal::Sev, msi_data: 0, msi_address: 0 },
        ]
    );
    assert_eq!(f.smmu.interrupts(), vec![Interrupt { kind: InterruptKind::Sev, msi: None }]);
    assert!(f.smmu.errors().is_empty(), "{:?}", f.smmu.errors());
}

#[test]
fn qemu_sync_irq_is_a_wired_interrupt() {
    let f = Fix::new(Config::qemu_virt());
    f.enable();
    let status = f.mem.alloc_page().0;
    f.submit(&[cmd_sync(1, 7, status), cmd_sync(2, 0, 0)]);
    // No IDR0.MSI: nothing written, the wired line pulses; no SEV either (IDR0.SEV clear).
    assert_eq!(f.mem.read_u32(status), Some(0));
    assert_eq!(f.smmu.interrupts(), vec![Interrupt { kind: InterruptKind::CmdSync, msi: None }]);
    assert_eq!(f.cons(), 2);
}

#[test]
fn illegal_command_stops_the_queue_until_acknowledged() {
    let f = Fix::new(Config::qemu_virt());
    f.enable();
    let status = f.mem.alloc_page().0;
    f.submit(&[cmd_cfgi_ste(1), [0x7f, 0], cmd_sync(0, 0, 0), cmd_tlbi_nh_asid(0, 1)]);
    // CONS stops on the bad command with ERR = CERROR_ILL; GERROR.CMDQ_ERR toggles.
    assert_eq!(f.cons(), 1 << 24 | 1);
    assert_eq!(f.smmu.read32(off::GERROR), gerror::CMDQ_ERR);
    assert_eq!(f.smmu.commands().len(), 2);
    assert_eq!(f.smmu.commands()[1].command, Err(1));
    // Nothing runs while the error is active, even if the command is fixed.
    f.mem.write_u64(f.cmdq + 16, 0x46);
    f.smmu.step();
    assert_eq!(f.cons() & 0xfffff, 1);
    // Acknowledging through GERRORN (toggled to equal GERROR) restarts at CONS.
    let g = f.smmu.read32(off::GERROR);
    f.smmu.write32(off::GERRORN, g);
    f.smmu.step();
    assert_eq!(f.cons() & 0xfffff, 4);
    // More illegal commands: opcode 0x07, CMD_SYNC CS = 0b11, EL2 and PRI_RESP without the
    // features, CFGI with SSec.
    for bad in [
        [0x07u64, 0],
        [0x46 | 3 << 12, 0],
        [0x20, 0],
        cmd_pri_resp(1, None, 0, 2),
        [0x03 | 1 << 10, 0],
    ] {
        let before = f.smmu.read32(off::GERROR);
        f.submit(&[bad, cmd_sync(0, 0, 0)]);
        assert_eq!(f.cons() >> 24, 1, "{bad:x?}");
        assert_ne!(f.smmu.read32(off::GERROR), before);
        // Skip it the Linux way: replace with CMD_SYNC, then acknowledge.
        let at = f.cmdq + u64::from(f.cons() & 0xf) * 16;
        f.mem.write_u64(at, 0x46);
        f.mem.write_u64(at + 8, 0);
        f.smmu.write32(off::GERRORN, f.smmu.read32(off::GERROR));
        f.smmu.step();
        assert_eq!(f.cons() & 0xfffff, f.smmu.read32(off::CMDQ_PROD));
    }
    let _ = status;
}

#[test]
fn a_bad_command_can_be_skipped_by_moving_cons_with_the_queue_disabled() {
    let f = Fix::new(Config::qemu_virt());
    f.enable();
    f.submit(&[[0x7f, 0], cmd_tlbi_nh_asid(0, 4)]);
    assert_eq!(f.cons(), 1 << 24);
    // CONS is writable only while CMDQEN is clear (and acknowledged).
    f.smmu.write32(off::CR0, cr0::EVENTQEN | cr0::SMMUEN);
    f.smmu.step();
    assert_eq!(f.smmu.read32(off::CR0ACK) & cr0::CMDQEN, 0);
    f.smmu.write32(off::CMDQ_CONS, 1);
    f.smmu.write32(off::GERRORN, f.smmu.read32(off::GERROR));
    f.smmu.step();
    f.smmu.write32(off::CR0, cr0::CMDQEN | cr0::EVENTQEN | cr0::SMMUEN);
    f.smmu.step();
    assert_eq!(f.cons(), 2);
    assert_eq!(
        f.smmu.commands().last().unwrap().command,
        Ok(Command::TlbiNhAsid { vmid: 0, asid: 4 })
    );
    assert!(f.smmu.errors().is_empty(), "{:?}", f.smmu.errors());
}

#[test]
fn command_fetch_abort_is_cerror_abt() {
    let f = Fix { cmdq: 0x7000_0000, ..Fix::new(Config::qemu_virt()) };
    f.enable();
    f.smmu.write32(off::CMDQ_PROD, 1);
    f.smmu.step();
    assert_eq!(f.cons(), 2 << 24);
    assert_eq!(f.smmu.read32(off::GERROR), gerror::CMDQ_ERR);
}

#[test]
fn command_queue_indices_wrap() {
    let mut f = Fix::new(Config::qemu_virt());
    f.qs = 2;
    f.enable();
    // 4 entries: 10 commands in batches of 3, 3, 4; CONS wraps twice (wrap bit is bit 2).
    let mut n = 0u16;
    for batch in [3, 3, 4] {
        let cmds: Vec<[u64; 2]> = (0..batch)
            .map(|_| {
                n += 1;
                cmd_tlbi_nh_asid(0, n)
            })
            .collect();
        f.submit(&cmds);
        assert_eq!(f.cons(), f.smmu.read32(off::CMDQ_PROD));
    }
    assert_eq!(f.cons(), 10 & 7);
    let asids: Vec<u16> = f
        .smmu
        .commands()
        .iter()
        .map(|l| match l.command {
            Ok(Command::TlbiNhAsid { asid, .. }) => asid,
            _ => 0,
        })
        .collect();
    assert_eq!(asids, (1..=10).collect::<Vec<_>>());
    assert_eq!(
        f.smmu.commands().iter().map(|l| l.index).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    );
}

#[test]
fn a_stalled_sync_never_completes_until_released() {
    use crate::hal::poll;
    use core::time::Duration;
    let (platform, smmu) = pair(Config::qemu_virt());
    let f = Fix { smmu: smmu.clone(), ..Fix::new(Config::qemu_virt()) };
    let f = Fix { mem: platform.memory().clone(), cmdq: platform.memory().alloc_page().0, ..f };
    f.enable_with(platform.memory().alloc_page().0, 6);
    smmu.stall_next_sync();
    f.submit(&[cmd_cfgi_all(), cmd_sync(0, 0, 0), cmd_tlbi_nh_asid(0, 1)]);
    assert!(smmu.is_sync_stalled());
    let got = poll(&platform, "CMD_SYNC", Duration::from_micros(50), || {
        (smmu.read32(off::CMDQ_CONS) == 3).then_some(())
    });
    assert!(got.is_err());
    assert_eq!(smmu.read32(off::CMDQ_CONS), 1, "CONS stays on the CMD_SYNC");
    smmu.release_stalled_sync();
    smmu.step();
    assert_eq!(smmu.read32(off::CMDQ_CONS), 3);
    // A stalled queue consumes nothing.
    smmu.stall_command_queue(true);
    f.submit(&[cmd_sync(0, 0, 0)]);
    assert_eq!(smmu.read32(off::CMDQ_CONS), 3);
    smmu.stall_command_queue(false);
    smmu.step();
    assert_eq!(smmu.read32(off::CMDQ_CONS), 4);
}

// ---------------------------------------------------------------------------------------------
// Event queue.

#[test]
fn event_queue_overflow_and_wrap() {
    let mut f = Fix::new(Config::qemu_virt());
    f.qs = 1;
    f.enable();
    // Two entries: the third event overflows and toggles OVFLG (bit 31), once.
    for sid in 0x101..0x104 {
        let _ = f.smmu.translate(sid, None, 0, Access::READ);
    }
    let outcomes: Vec<EventOutcome> = f.smmu.events().iter().map(|e| e.outcome).collect();
    assert_eq!(
        outcomes,
        vec![EventOutcome::Recorded(0), EventOutcome::Recorded(1), EventOutcome::Overflow]
    );
    assert_eq!(f.smmu.read32(off::EVENTQ_PROD), 1 << 31 | 0b10);
    let _ = f.smmu.translate(0x104, None, 0, Access::READ);
    assert_eq!(f.smmu.read32(off::EVENTQ_PROD), 1 << 31 | 0b10, "no second toggle while active");
    // Consume both and acknowledge the overflow: recording resumes, wrapping to index 0.
    f.smmu.write32(off::EVENTQ_CONS, 1 << 31 | 0b10);
    let _ = f.smmu.translate(0x105, None, 0, Access::READ);
    assert_eq!(f.smmu.read32(off::EVENTQ_PROD), 1 << 31 | 0b11);
    assert_eq!(f.record(0)[0], 0x02 | 0x105 << 32);
    // Events are discarded while the queue is disabled.
    f.smmu.write32(off::CR0, cr0::CMDQEN | cr0::SMMUEN);
    let _ = f.smmu.translate(0x106, None, 0, Access::READ);
    assert_eq!(f.smmu.events().last().unwrap().outcome, EventOutcome::QueueDisabled);
}

#[test]
fn event_write_abort_and_unmapped_sync_msi() {
    let f = Fix { evtq: 0x7000_0000, ..Fix::new(Config::full()) };
    f.enable();
    let Err(Termination::Fault(e)) = f.smmu.translate(0x1ff, None, 0, Access::READ) else {
        panic!()
    };
    assert_eq!(e.outcome, EventOutcome::Aborted);
    assert_eq!(f.smmu.read32(off::GERROR), gerror::EVENTQ_ABT_ERR);
    f.submit(&[cmd_sync(1, 1, 0x7100_0000)]);
    assert_eq!(f.smmu.take_errors(), vec![ModelError::MsiUnmapped { address: 0x7100_0000 }]);
    assert_eq!(f.smmu.read32(off::GERROR), gerror::EVENTQ_ABT_ERR | gerror::MSI_CMDQ_ABT_ERR);
    assert_eq!(f.cons(), 1, "the CMD_SYNC completed anyway");
}

#[test]
fn event_interrupt_by_msi_once_per_batch() {
    let f = Fix::new(Config::full());
    f.enable();
    f.smmu.write64(off::EVENTQ_IRQ_CFG0, 0x0800_0040);
    f.smmu.write32(off::EVENTQ_IRQ_CFG1, 0x33);
    f.smmu.write32(off::IRQ_CTRL, 0b100);
    f.smmu.step();
    let _ = f.smmu.translate(0x1ff, None, 0, Access::READ);
    let _ = f.smmu.dma_write(0x1fe, None, 0, &[0; 4]);
    assert_eq!(
        f.smmu.interrupts(),
        vec![Interrupt { kind: InterruptKind::Event, msi: Some((0x0800_0040, 0x33)) }; 2]
    );
    // The GERROR interrupt goes through its own MSI configuration.
    f.smmu.write64(off::GERROR_IRQ_CFG0, 0x0800_0080);
    f.smmu.write32(off::IRQ_CTRL, 0b101);
    f.submit(&[[0x7f, 0]]);
    assert_eq!(
        f.smmu.interrupts().last(),
        Some(&Interrupt { kind: InterruptKind::Gerror, msi: Some((0x0800_0080, 0)) })
    );
}

// ---------------------------------------------------------------------------------------------
// PRI queue.

fn request(sid: u32, ssid: Option<u32>, prgi: u16, last: bool, address: u64) -> PageRequest {
    PageRequest {
        sid,
        ssid,
        prgi,
        last,
        read: true,
        write: true,
        exec: false,
        privileged: false,
        address,
    }
}

#[test]
fn page_requests_are_queued_and_responses_checked() {
    let f = Fix::new(Config::full());
    f.enable();
    f.smmu.write32(off::IRQ_CTRL, 0b010);
    assert_eq!(
        f.smmu.inject_page_request(request(0x10, Some(5), 3, false, 0x7000)),
        PriOutcome::Queued(0)
    );
    let last =
        PageRequest { exec: true, privileged: true, ..request(0x10, Some(5), 3, true, 0x8000) };
    assert_eq!(f.smmu.inject_page_request(last), PriOutcome::Queued(1));
    assert_eq!(
        f.smmu.inject_page_request(request(0x11, None, 0x1ff, true, 0x9000)),
        PriOutcome::Queued(2)
    );
    assert_eq!(f.smmu.read32(off::PRIQ_PROD), 3);
    // The entries, typed from §8: SID 31:0, SSID 51:32, Priv 58, Exec 59, Read 60, Write 61,
    // Last 62, SSV 63; PRGI 8:0 and the page address in dword 1.
    let e = |i: u64| {
        (f.mem.read_u64(f.priq + i * 16).unwrap(), f.mem.read_u64(f.priq + i * 16 + 8).unwrap())
    };
    assert_eq!(e(0), (0x10 | 5 << 32 | 1 << 60 | 1 << 61 | 1 << 63, 0x7000 | 3));
    assert_eq!(e(1), (0x10 | 5 << 32 | 0b1111 << 58 | 1 << 62 | 1 << 63, 0x8000 | 3));
    assert_eq!(e(2), (0x11 | 1 << 60 | 1 << 61 | 1 << 62, 0x9000 | 0x1ff));
    assert_eq!(f.smmu.interrupts().len(), 3);
    assert_eq!(f.smmu.outstanding_page_request_groups(), vec![(0x10, 3), (0x11, 0x1ff)]);
    f.submit(&[
        cmd_pri_resp(0x10, Some(5), 3, 2),
        cmd_pri_resp(0x11, None, 0x1ff, 0),
        cmd_sync(0, 0, 0),
    ]);
    assert!(f.smmu.outstanding_page_request_groups().is_empty());
    let r = f.smmu.pri_responses();
    assert_eq!(
        r.iter()
            .map(|r| (r.sid, r.ssid, r.prgi, r.code, r.request_ssid, r.expected))
            .collect::<Vec<_>>(),
        vec![
            (0x10, Some(5), 3, PriResponseCode::Success, Some(5), true),
            (0x11, None, 0x1ff, PriResponseCode::Deny, None, true),
        ]
    );
    // A second answer to the same group, and one to a group never seen.
    f.submit(&[cmd_pri_resp(0x10, Some(5), 3, 1), cmd_pri_resp(0x12, None, 1, 2)]);
    assert_eq!(
        f.smmu.take_errors(),
        vec![
            ModelError::UnexpectedPriResponse { sid: 0x10, ssid: Some(5), prgi: 3 },
            ModelError::UnexpectedPriResponse { sid: 0x12, ssid: None, prgi: 1 },
        ]
    );
    // A group is not answerable before its Last request arrived.
    f.smmu.inject_page_request(request(0x13, None, 4, false, 0xa000));
    f.submit(&[cmd_pri_resp(0x13, None, 4, 2)]);
    assert_eq!(f.smmu.take_errors().len(), 1);
    assert_eq!(f.smmu.partial_page_request_groups(), vec![(0x13, 4, 1)]);
}

#[test]
fn pri_queue_overflow_answers_discarded_last_requests() {
    let mut f = Fix::new(Config::full());
    f.qs = 1;
    f.enable();
    // SID 0x20 has a valid STE with PPAR (STE dword 1 bit 18): its auto-response has a PASID.
    let mut s = ste_config(0b100);
    s[1] |= 1 << 18;
    f.ste(0x20, s);
    assert_eq!(
        f.smmu.inject_page_request(request(0x20, Some(1), 1, false, 0x1000)),
        PriOutcome::Queued(0)
    );
    assert_eq!(
        f.smmu.inject_page_request(request(0x20, Some(1), 1, true, 0x2000)),
        PriOutcome::Queued(1)
    );
    // Full: the next request overflows (OVFLG toggles), a Last one gets a Success response.
    let auto = PriResponse {
        sid: 0x21,
        ssid: None,
        prgi: 2,
        code: PriResponseCode::Success,
        responder: PriResponder::Automatic,
        request_ssid: None,
        expected: true,
    };
    assert_eq!(
        f.smmu.inject_page_request(request(0x21, None, 2, true, 0x3000)),
        PriOutcome::Overflow(Some(auto))
    );
    assert_eq!(f.smmu.read32(off::PRIQ_PROD), 1 << 31 | 0b10);
    // While the overflow is active everything is discarded, even after space frees up.
    f.smmu.write32(off::PRIQ_CONS, 0b10);
    let o = f.smmu.inject_page_request(request(0x20, Some(1), 6, true, 0x4000));
    let PriOutcome::Overflow(Some(r)) = o else { panic!("{o:?}") };
    assert_eq!((r.ssid, r.code), (Some(1), PriResponseCode::Success), "PASID because of STE.PPAR");
    // An unknown StreamID's PASID-tagged request: Failure without PASID.
    let o = f.smmu.inject_page_request(request(0x1fff, Some(1), 7, true, 0x4000));
    let PriOutcome::Overflow(Some(r)) = o else { panic!("{o:?}") };
    assert_eq!((r.ssid, r.code), (None, PriResponseCode::Fail));
    assert_eq!(
        f.smmu.inject_page_request(request(0x22, None, 8, false, 0x4000)),
        PriOutcome::Overflow(None)
    );
    // Acknowledge: OVACKFLG = OVFLG. Requests flow again (wrapping to index 0).
    f.smmu.write32(off::PRIQ_CONS, 1 << 31 | 0b10);
    assert_eq!(
        f.smmu.inject_page_request(request(0x22, None, 8, true, 0x5000)),
        PriOutcome::Queued(0)
    );
    // The driver answers the group it saw whole; nothing stays unanswered.
    f.submit(&[cmd_pri_resp(0x20, Some(1), 1, 2), cmd_pri_resp(0x22, None, 8, 2)]);
    assert!(f.smmu.outstanding_page_request_groups().is_empty());
    assert!(f.smmu.errors().is_empty(), "{:?}", f.smmu.errors());
    let auto_count =
        f.smmu.pri_responses().iter().filter(|r| r.responder == PriResponder::Automatic).count();
    assert_eq!(auto_count, 3);
}

#[test]
fn page_requests_need_pri_and_an_enabled_queue() {
    let f = Fix::new(Config::qemu_virt());
    assert_eq!(f.smmu.inject_page_request(request(1, None, 0, true, 0)), PriOutcome::Unsupported);
    let g = Fix::new(Config::full());
    let o = g.smmu.inject_page_request(request(1, None, 0, true, 0));
    assert!(matches!(o, PriOutcome::QueueDisabled(Some(_))), "{o:?}");
}

#[test]
fn pri_responses_must_carry_the_pasid_the_ste_says_the_device_expects() {
    let f = Fix::new(Config::full());
    f.enable();
    let mut with_ppar = ste_config(0b100);
    with_ppar[1] |= 1 << 18;
    f.ste(0x30, ste_config(0b100));
    f.ste(0x31, with_ppar);
    for sid in [0x30, 0x31] {
        f.smmu.inject_page_request(request(sid, Some(9), 1, true, 0x1000));
    }
    // PPAR clear: no PASID expected; PPAR set: the request's PASID expected.
    f.submit(&[cmd_pri_resp(0x30, Some(9), 1, 2), cmd_pri_resp(0x31, None, 1, 2)]);
    assert_eq!(
        f.smmu.take_errors(),
        vec![
            ModelError::PriResponsePasidMismatch {
                sid: 0x30,
                prgi: 1,
                expected: None,
                got: Some(9)
            },
            ModelError::PriResponsePasidMismatch {
                sid: 0x31,
                prgi: 1,
                expected: Some(9),
                got: None
            },
        ]
    );
    // Both groups count as answered (the device got a response, with the wrong prefix).
    assert!(f.smmu.outstanding_page_request_groups().is_empty());
    f.smmu.inject_page_request(request(0x31, Some(9), 2, true, 0x1000));
    f.submit(&[cmd_pri_resp(0x31, Some(9), 2, 0)]);
    assert!(f.smmu.errors().is_empty(), "{:?}", f.smmu.errors());
}

#[test]
fn two_level_stream_table_needs_st_level() {
    let cfg = Config::full();
    let linear_only = cfg.idr[0] & !(3 << 27);
    let f = Fix::new(cfg.with_idr(0, linear_only));
    f.smmu.write32(off::STRTAB_BASE_CFG, 1 << 16 | 8 << 6 | 16);
    f.smmu.step();
    assert_eq!(
        f.smmu.take_errors(),
        vec![ModelError::StreamTableFormatUnsupported { value: 1 << 16 | 8 << 6 | 16 }]
    );
}

#[test]
fn hardware_access_flag_update_with_httu() {
    let cfg = Config::full();
    // IDR0.HTTU (7:6) = 0b01: access flag.
    let idr0 = cfg.idr[0] | 1 << 6;
    let f = Fix::new(cfg.with_idr(0, idr0));
    f.enable();
    let root = f.mem.alloc_page().0;
    let cdt = f.mem.alloc_page().0;
    let mut c = cd(1, root, true);
    c[0] |= 1 << 43; // HA
    write8(&f.mem, cdt, c);
    f.ste(8, ste_s1(cdt, 0, 0, 0));
    let leaf = map(&f.mem, root, 4, 0x1000, 0x2000, 3, AP_USER);
    assert!(f.smmu.translate(8, None, 0x1000, Access::READ).is_ok());
    assert_eq!(f.mem.read_u64(leaf).unwrap() & AF, AF, "AF set by the SMMU");
    // Without HTTU, CD.HA is ILLEGAL (C_BAD_CD).
    let g = Fix::new(Config::full());
    g.enable();
    let gcd = g.mem.alloc_page().0;
    write8(&g.mem, gcd, c);
    g.ste(8, ste_s1(gcd, 0, 0, 0));
    assert_eq!(g.fault_code(8, None, 0x1000, Access::READ).unwrap().0, 0x0a);
}

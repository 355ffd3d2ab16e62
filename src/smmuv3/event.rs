//! Event queue records (§7.3): four 64-bit words, decoded into [`Event`].
//!
//! Word 0 holds the type (7:0), SSV (11), SubstreamID (31:12) and StreamID (63:32) for every
//! record. Translation-related faults add, in word 1, STAG (15:0), Stall (31), PnU (33), InD
//! (34), RnW (35), S2 (39) and CLASS (41:40); word 2 is the input address; word 3 holds the IPA
//! (51:12) of a stage-2 fault or the fetch address (51:3) of an external abort on a fetch.
//! Cross-checked with Linux `EVTQ_0_ID`, `EVTQ_0_SSV`, `EVTQ_0_SSID`, `EVTQ_0_SID`,
//! `EVTQ_1_STAG`, `EVTQ_1_STALL`, `EVTQ_1_PnU`, `EVTQ_1_InD`, `EVTQ_1_RnW`, `EVTQ_1_S2`,
//! `EVTQ_1_CLASS`, `EVTQ_2_ADDR`, `EVTQ_3_IPA` and `EVT_ID_*`.

use crate::addr::StreamId;

/// Event type codes (§7.3, Table 7-3).
#[allow(missing_docs, reason = "the names are the specification's event mnemonics")]
pub mod code {
    pub const F_UUT: u8 = 0x01;
    pub const C_BAD_STREAMID: u8 = 0x02;
    pub const F_STE_FETCH: u8 = 0x03;
    pub const C_BAD_STE: u8 = 0x04;
    pub const F_BAD_ATS_TREQ: u8 = 0x05;
    pub const F_STREAM_DISABLED: u8 = 0x06;
    pub const F_TRANSL_FORBIDDEN: u8 = 0x07;
    pub const C_BAD_SUBSTREAMID: u8 = 0x08;
    pub const F_CD_FETCH: u8 = 0x09;
    pub const C_BAD_CD: u8 = 0x0a;
    pub const F_WALK_EABT: u8 = 0x0b;
    pub const F_TRANSLATION: u8 = 0x10;
    pub const F_ADDR_SIZE: u8 = 0x11;
    pub const F_ACCESS: u8 = 0x12;
    pub const F_PERMISSION: u8 = 0x13;
    pub const F_TLB_CONFLICT: u8 = 0x20;
    pub const F_CFG_CONFLICT: u8 = 0x21;
    pub const E_PAGE_REQUEST: u8 = 0x24;
    pub const F_VMS_FETCH: u8 = 0x25;
}

/// What an event reports.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum EventKind {
    /// F_UUT: unsupported upstream transaction.
    UnsupportedTransaction,
    /// C_BAD_STREAMID: the StreamID is beyond the stream table, or its L1 descriptor is invalid.
    BadStreamId,
    /// F_STE_FETCH: an external abort fetching the STE.
    SteFetch,
    /// C_BAD_STE: the STE is invalid (V = 0) or malformed.
    BadSte,
    /// F_BAD_ATS_TREQ: an ATS translation request the STE does not allow.
    BadAtsRequest,
    /// F_STREAM_DISABLED: traffic on a stream whose STE is not enabled for it.
    StreamDisabled,
    /// F_TRANSL_FORBIDDEN: an ATS-translated transaction the STE forbids.
    TranslationForbidden,
    /// C_BAD_SUBSTREAMID: the SubstreamID is beyond the CD table or not allowed.
    BadSubstreamId,
    /// F_CD_FETCH: an external abort fetching the CD.
    CdFetch,
    /// C_BAD_CD: the CD is invalid or malformed.
    BadCd,
    /// F_WALK_EABT: an external abort during a table walk.
    WalkExternalAbort,
    /// F_TRANSLATION: no valid translation (an absent entry).
    Translation,
    /// F_ADDR_SIZE: an address beyond the configured input or output size.
    AddressSize,
    /// F_ACCESS: an access-flag fault (AF = 0).
    Access,
    /// F_PERMISSION: the entry does not allow the access.
    Permission,
    /// F_TLB_CONFLICT: conflicting TLB entries (break-before-make violated).
    TlbConflict,
    /// F_CFG_CONFLICT: conflicting configuration cache entries.
    ConfigConflict,
    /// E_PAGE_REQUEST: a PRI page request the SMMU turned into an event.
    PageRequest,
    /// F_VMS_FETCH: an external abort fetching a VMS.
    VmsFetch,
    /// A code this driver does not know.
    Unknown(u8),
}

impl EventKind {
    /// The kind for a type code.
    pub const fn from_code(c: u8) -> Self {
        match c {
            code::F_UUT => Self::UnsupportedTransaction,
            code::C_BAD_STREAMID => Self::BadStreamId,
            code::F_STE_FETCH => Self::SteFetch,
            code::C_BAD_STE => Self::BadSte,
            code::F_BAD_ATS_TREQ => Self::BadAtsRequest,
            code::F_STREAM_DISABLED => Self::StreamDisabled,
            code::F_TRANSL_FORBIDDEN => Self::TranslationForbidden,
            code::C_BAD_SUBSTREAMID => Self::BadSubstreamId,
            code::F_CD_FETCH => Self::CdFetch,
            code::C_BAD_CD => Self::BadCd,
            code::F_WALK_EABT => Self::WalkExternalAbort,
            code::F_TRANSLATION => Self::Translation,
            code::F_ADDR_SIZE => Self::AddressSize,
            code::F_ACCESS => Self::Access,
            code::F_PERMISSION => Self::Permission,
            code::F_TLB_CONFLICT => Self::TlbConflict,
            code::F_CFG_CONFLICT => Self::ConfigConflict,
            code::E_PAGE_REQUEST => Self::PageRequest,
            code::F_VMS_FETCH => Self::VmsFetch,
            other => Self::Unknown(other),
        }
    }

    /// The specification's mnemonic.
    pub const fn name(self) -> &'static str {
        match self {
            Self::UnsupportedTransaction => "F_UUT",
            Self::BadStreamId => "C_BAD_STREAMID",
            Self::SteFetch => "F_STE_FETCH",
            Self::BadSte => "C_BAD_STE",
            Self::BadAtsRequest => "F_BAD_ATS_TREQ",
            Self::StreamDisabled => "F_STREAM_DISABLED",
            Self::TranslationForbidden => "F_TRANSL_FORBIDDEN",
            Self::BadSubstreamId => "C_BAD_SUBSTREAMID",
            Self::CdFetch => "F_CD_FETCH",
            Self::BadCd => "C_BAD_CD",
            Self::WalkExternalAbort => "F_WALK_EABT",
            Self::Translation => "F_TRANSLATION",
            Self::AddressSize => "F_ADDR_SIZE",
            Self::Access => "F_ACCESS",
            Self::Permission => "F_PERMISSION",
            Self::TlbConflict => "F_TLB_CONFLICT",
            Self::ConfigConflict => "F_CFG_CONFLICT",
            Self::PageRequest => "E_PAGE_REQUEST",
            Self::VmsFetch => "F_VMS_FETCH",
            Self::Unknown(_) => "unknown",
        }
    }

    /// Whether word 2 holds the input address of the faulting transaction.
    pub const fn has_input_address(self) -> bool {
        matches!(
            self,
            Self::UnsupportedTransaction
                | Self::BadAtsRequest
                | Self::TranslationForbidden
                | Self::WalkExternalAbort
                | Self::Translation
                | Self::AddressSize
                | Self::Access
                | Self::Permission
                | Self::TlbConflict
                | Self::PageRequest
        )
    }

    /// Whether word 1 carries the transaction's attributes (RnW, PnU, InD, S2, CLASS).
    pub const fn has_attributes(self) -> bool {
        matches!(
            self,
            Self::UnsupportedTransaction
                | Self::WalkExternalAbort
                | Self::Translation
                | Self::AddressSize
                | Self::Access
                | Self::Permission
        )
    }

    /// Whether word 3 is a fetch address (51:3) of an external abort.
    pub const fn has_fetch_address(self) -> bool {
        matches!(self, Self::SteFetch | Self::CdFetch | Self::WalkExternalAbort | Self::VmsFetch)
    }
}

/// CLASS of a translation fault (§7.3.12): what the SMMU was doing.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FaultClass {
    /// CD fetch (stage 2 of a nested walk).
    ContextDescriptor,
    /// Translation table walk (stage 2 of a nested stage-1 walk).
    TranslationTable,
    /// The input address of the transaction.
    InputAddress,
}

/// One decoded event record.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The type code as recorded.
    pub code: u8,
    /// The StreamID of the transaction.
    pub stream: StreamId,
    /// The SubstreamID when SSV is set.
    pub substream: Option<u32>,
    /// Input address (word 2) where [`EventKind::has_input_address`]; else 0.
    pub address: u64,
    /// IPA (word 3 bits 51:12) of a stage-2 fault, or the fetch address (bits 51:3) where
    /// [`EventKind::has_fetch_address`]; else 0.
    pub address2: u64,
    /// RnW: the transaction was a read (or, for instruction fetches, an execute).
    pub read: bool,
    /// PnU: privileged.
    pub privileged: bool,
    /// InD: instruction fetch.
    pub instruction: bool,
    /// S2: the fault arose at stage 2.
    pub stage2: bool,
    /// CLASS, for faults that carry attributes.
    pub class: Option<FaultClass>,
    /// The transaction is stalled (STAG valid); never true under QEMU.
    pub stall: bool,
    /// STAG of a stalled transaction.
    pub stag: u16,
}

impl Event {
    /// Decodes a record.
    pub const fn decode(w: [u64; 4]) -> Self {
        // CAST: every field is masked to its width first.
        let c = (w[0] & 0xff) as u8;
        let kind = EventKind::from_code(c);
        let ssv = w[0] & (1 << 11) != 0;
        let attrs = kind.has_attributes();
        let class = if attrs {
            match (w[1] >> 40) & 3 {
                0 => Some(FaultClass::ContextDescriptor),
                1 => Some(FaultClass::TranslationTable),
                _ => Some(FaultClass::InputAddress),
            }
        } else {
            None
        };
        let address2 = if kind.has_fetch_address() {
            w[3] & 0x000f_ffff_ffff_fff8
        } else if attrs && w[1] & (1 << 39) != 0 {
            w[3] & 0x000f_ffff_ffff_f000
        } else {
            0
        };
        Self {
            kind,
            code: c,
            stream: StreamId((w[0] >> 32) as u32),
            substream: if ssv { Some(((w[0] >> 12) & 0xf_ffff) as u32) } else { None },
            address: if kind.has_input_address() { w[2] } else { 0 },
            address2,
            read: attrs && w[1] & (1 << 35) != 0,
            privileged: attrs && w[1] & (1 << 33) != 0,
            instruction: attrs && w[1] & (1 << 34) != 0,
            stage2: attrs && w[1] & (1 << 39) != 0,
            class,
            stall: attrs && w[1] & (1 << 31) != 0,
            stag: if attrs { (w[1] & 0xffff) as u16 } else { 0 },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a record from fields at the positions Linux's EVTQ_* masks give (independently
    /// of the decoder).
    fn record(id: u64, sid: u64, ssid: Option<u64>, w1: u64, addr: u64, w3: u64) -> [u64; 4] {
        let ssv = ssid.map_or(0, |s| (1 << 11) | (s << 12));
        [id | ssv | (sid << 32), w1, addr, w3]
    }

    #[test]
    fn codes_match_linux() {
        // EVT_ID_* in arm-smmu-v3.h and §7.3 Table 7-3.
        for (c, k) in [
            (0x01, EventKind::UnsupportedTransaction),
            (0x02, EventKind::BadStreamId),
            (0x03, EventKind::SteFetch),
            (0x04, EventKind::BadSte),
            (0x05, EventKind::BadAtsRequest),
            (0x06, EventKind::StreamDisabled),
            (0x07, EventKind::TranslationForbidden),
            (0x08, EventKind::BadSubstreamId),
            (0x09, EventKind::CdFetch),
            (0x0a, EventKind::BadCd),
            (0x0b, EventKind::WalkExternalAbort),
            (0x10, EventKind::Translation),
            (0x11, EventKind::AddressSize),
            (0x12, EventKind::Access),
            (0x13, EventKind::Permission),
            (0x20, EventKind::TlbConflict),
            (0x21, EventKind::ConfigConflict),
            (0x24, EventKind::PageRequest),
            (0x25, EventKind::VmsFetch),
        ] {
            assert_eq!(EventKind::from_code(c), k);
        }
        assert_eq!(EventKind::from_code(0x7e), EventKind::Unknown(0x7e));
    }

    #[test]
    fn qemu_permission_fault() {
        // notes §2.7: a write to a read-only page, SID 8, InputAddr 0x2347000; write (RnW = 0),
        // CLASS IN (2), unprivileged.
        let e = Event::decode(record(0x13, 0x0008, None, 2 << 40, 0x0234_7000, 0));
        assert_eq!(e.kind, EventKind::Permission);
        assert_eq!(e.stream, StreamId(8));
        assert_eq!(e.address, 0x0234_7000);
        assert_eq!(e.substream, None);
        assert!(!e.read && !e.stage2 && !e.privileged);
        assert_eq!(e.class, Some(FaultClass::InputAddress));
    }

    #[test]
    fn stage2_translation_fault_with_ipa_and_attributes() {
        let w1 = (1 << 35) | (1 << 33) | (1 << 34) | (1 << 39) | (1 << 40) | 0x1234 | (1 << 31);
        let e = Event::decode(record(
            0x10,
            0x0010,
            Some(0xabcde),
            w1,
            0xdead_b000,
            0x000f_0000_1234_5fff,
        ));
        assert_eq!(e.kind, EventKind::Translation);
        assert_eq!(e.substream, Some(0xabcde));
        assert!(e.read && e.privileged && e.instruction && e.stage2 && e.stall);
        assert_eq!(e.stag, 0x1234);
        assert_eq!(e.class, Some(FaultClass::TranslationTable));
        assert_eq!(e.address2, 0x000f_0000_1234_5000);
    }

    #[test]
    fn configuration_errors_carry_only_ids() {
        let e = Event::decode(record(0x02, 0xf8, None, u64::MAX, 0x1234, u64::MAX));
        assert_eq!(
            (e.kind, e.stream, e.address, e.address2),
            (EventKind::BadStreamId, StreamId(0xf8), 0, 0)
        );
        assert!(!e.read && e.class.is_none());
        let e = Event::decode(record(0x04, 0x10, None, 0, 0, 0));
        assert_eq!(e.kind.name(), "C_BAD_STE");
        let e = Event::decode(record(0x03, 0x10, None, 0, 0, 0x4000_1047));
        assert_eq!((e.kind, e.address2), (EventKind::SteFetch, 0x4000_1040));
    }

    proptest::proptest! {
        /// Any record decodes (hardware and a hostile queue can hold anything) to its type,
        /// StreamID and SubstreamID as laid out in word 0, and to no address where the type
        /// carries none.
        #[test]
        fn any_record_decodes(w in proptest::array::uniform4(proptest::prelude::any::<u64>())) {
            let e = Event::decode(w);
            proptest::prop_assert_eq!(u64::from(e.code), w[0] & 0xff);
            proptest::prop_assert_eq!(u64::from(e.stream.0), w[0] >> 32);
            proptest::prop_assert_eq!(e.substream.is_some(), w[0] & (1 << 11) != 0);
            if !e.kind.has_input_address() {
                proptest::prop_assert_eq!(e.address, 0);
            }
            proptest::prop_assert!(e.address2 >> 52 == 0);
        }
    }
}

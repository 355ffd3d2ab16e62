//! Alternative Routing-ID Interpretation (PCIe Base 6.0 §7.8.8): with ARI the device number is
//! gone and a device has up to 256 functions, linked by Next Function Number.
//!
//! Whether ARI is in use is decided elsewhere: ARI Forwarding Enable in the downstream port
//! above ([`Pcie::set_ari_forwarding`](super::pcie::Pcie::set_ari_forwarding)) and, for SR-IOV
//! routing, ARI Capable Hierarchy in the PF's SR-IOV capability.

use crate::addr::Bdf;
use crate::error::Result;
use crate::pci::caps::{self, id, read32_present};
use crate::pci::config::ConfigAccess;

/// ARI Capability register (16 bits at 0x04): MFVC Function Groups Capability (bit 0), ACS
/// Function Groups Capability (bit 1), Next Function Number (15:8).
const CAPABILITY: u16 = 0x04;
const ACS_FUNCTION_GROUPS: u32 = 1 << 1;

/// The ARI capability of one function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Ari {
    bdf: Bdf,
    offset: u16,
}

impl Ari {
    /// Finds `bdf`'s ARI capability (`None` if it has none).
    pub fn find<C: ConfigAccess + ?Sized>(cfg: &C, bdf: Bdf) -> Result<Option<Self>> {
        Ok(caps::find_extended(cfg, bdf, id::ARI)?.map(|offset| Self { bdf, offset }))
    }

    /// The capability at a known `offset` (from [`caps::collect`]).
    pub const fn at(bdf: Bdf, offset: u16) -> Self {
        Self { bdf, offset }
    }

    /// The function.
    pub const fn bdf(&self) -> Bdf {
        self.bdf
    }

    /// Offset of the capability header.
    pub const fn offset(&self) -> u16 {
        self.offset
    }

    /// Next Function Number: the next function of this ARI device, 0 at the end of the list
    /// (function 0 always exists and starts it, so 0 cannot be a successor). Hostile devices
    /// can make this list loop: whoever follows it bounds the walk (at most 256 functions).
    pub fn next_function<C: ConfigAccess + ?Sized>(&self, cfg: &C) -> Result<u8> {
        // CAST: bits 15:8 of the ARI Capability register.
        Ok((read32_present(cfg, self.bdf, self.offset + CAPABILITY)? >> 8) as u8)
    }

    /// ACS Function Groups Capability: the device applies ACS P2P Egress Control per function
    /// group.
    pub fn acs_function_groups<C: ConfigAccess + ?Sized>(&self, cfg: &C) -> Result<bool> {
        Ok(read32_present(cfg, self.bdf, self.offset + CAPABILITY)? & ACS_FUNCTION_GROUPS != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::sim::pci::{Function, Topology};

    #[test]
    fn next_function_number() {
        let t = Topology::builder()
            .device(0, 0, Function::endpoint(0x8086, 0x1572, 0x02_0000).ari(1).name("f0"))
            .device(0, 1, Function::endpoint(0x8086, 0x1572, 0x02_0000).ari(0))
            .build();
        let f0 = Bdf::new(0, 0, 0, 0).unwrap();
        let ari = Ari::find(&t, f0).unwrap().unwrap();
        assert_eq!(ari.next_function(&t), Ok(1));
        assert_eq!(ari.acs_function_groups(&t), Ok(false));
        let f1 = Ari::find(&t, Bdf::new(0, 0, 0, 1).unwrap()).unwrap().unwrap();
        assert_eq!(f1.next_function(&t), Ok(0));
        t.set_present(t.find("f0").unwrap(), false);
        assert_eq!(ari.next_function(&t), Err(Error::FunctionVanished { bdf: f0 }));
    }
}

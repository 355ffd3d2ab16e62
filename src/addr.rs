//! Address and identifier newtypes.
//!
//! Each kind of number the driver handles gets its own type so that an IOVA cannot be passed
//! where a physical address is expected, nor a StreamID where a requester ID is.

use core::fmt;

use crate::error::Error;

/// A physical address as seen by the CPU and by devices that bypass translation.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct PhysAddr(pub u64);

/// A virtual address in the hypervisor's own address space.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct VirtAddr(pub usize);

/// An I/O virtual address: what a device puts on the bus and an IOMMU translates.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct Iova(pub u64);

macro_rules! addr_common {
    ($t:ident, $inner:ty) => {
        impl $t {
            /// The raw value.
            #[inline]
            pub const fn get(self) -> $inner {
                self.0
            }

            /// `self + bytes`, or [`Error::AddressOverflow`] if that wraps.
            #[inline]
            pub const fn checked_add(self, bytes: u64) -> Result<Self, Error> {
                match (self.0 as u64).checked_add(bytes) {
                    // CAST: the sum fits `$inner` because it is checked against its maximum.
                    Some(v) if v <= <$inner>::MAX as u64 => Ok(Self(v as $inner)),
                    _ => Err(Error::AddressOverflow { base: self.0 as u64, size: bytes }),
                }
            }

            /// Whether the address is a multiple of `align` (a power of two).
            #[inline]
            pub const fn is_aligned(self, align: u64) -> bool {
                (self.0 as u64) & (align.wrapping_sub(1)) == 0
            }

            /// Rounds down to a multiple of `align` (a power of two).
            #[inline]
            pub const fn align_down(self, align: u64) -> Self {
                // CAST: clearing low bits cannot grow the value.
                Self(((self.0 as u64) & !(align.wrapping_sub(1))) as $inner)
            }
        }

        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($t), "({:#x})"), self.0)
            }
        }

        #[cfg(feature = "defmt")]
        impl defmt::Format for $t {
            fn format(&self, f: defmt::Formatter<'_>) {
                defmt::write!(f, "{=u64:#x}", self.0 as u64)
            }
        }

        impl fmt::LowerHex for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }
    };
}

addr_common!(PhysAddr, u64);
addr_common!(VirtAddr, usize);
addr_common!(Iova, u64);

/// A PCI function address: segment (PCI domain), bus, device, function.
///
/// With ARI the device number is 0 and the function number is 8 bits; [`Bdf::from_routing_id`]
/// and [`Bdf::routing_id`] treat the low 8 bits as one `devfn` byte, which covers both forms.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Bdf {
    /// PCI segment group (MCFG segment, DT `linux,pci-domain`).
    pub segment: u16,
    /// Bus number.
    pub bus: u8,
    /// Device and function, `dev << 3 | fn`.
    pub devfn: u8,
}

impl Bdf {
    /// Builds a BDF from its parts, or [`Error::InvalidBdf`] if `dev > 31` or `func > 7`.
    pub const fn new(segment: u16, bus: u8, dev: u8, func: u8) -> Result<Self, Error> {
        if dev > 31 || func > 7 {
            return Err(Error::InvalidBdf { bus, dev, func });
        }
        Ok(Self { segment, bus, devfn: (dev << 3) | func })
    }

    /// The 16-bit routing ID (`bus << 8 | devfn`) within a segment.
    pub const fn from_routing_id(segment: u16, rid: u16) -> Self {
        // CAST: the two bytes of a u16.
        Self { segment, bus: (rid >> 8) as u8, devfn: rid as u8 }
    }

    /// Device number (0..=31).
    pub const fn dev(self) -> u8 {
        self.devfn >> 3
    }

    /// Function number (0..=7).
    pub const fn func(self) -> u8 {
        self.devfn & 7
    }

    /// The routing ID (`bus << 8 | devfn`), which is also the requester ID the function uses.
    pub const fn routing_id(self) -> RequesterId {
        RequesterId(((self.bus as u16) << 8) | self.devfn as u16)
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for Bdf {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "{=u16:04x}:{=u8:02x}:{=u8:02x}.{=u8}", self.segment, self.bus, self.dev(), self.func())
    }
}

impl fmt::Debug for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}:{:02x}:{:02x}.{}", self.segment, self.bus, self.dev(), self.func())
    }
}

/// The 16-bit requester ID a function puts on its transactions (PCIe Base 6.0 §2.2.6.2).
///
/// It differs from the function's own routing ID behind PCIe-to-PCI and conventional bridges.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct RequesterId(pub u16);

#[cfg(feature = "defmt")]
impl defmt::Format for RequesterId {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "{=u8:02x}:{=u8:02x}.{=u8}", self.bus(), self.devfn() >> 3, self.devfn() & 7)
    }
}

impl RequesterId {
    /// Bus number part.
    pub const fn bus(self) -> u8 {
        // CAST: the high byte.
        (self.0 >> 8) as u8
    }
    /// Device/function part.
    pub const fn devfn(self) -> u8 {
        // CAST: the low byte.
        self.0 as u8
    }
}

impl fmt::Debug for RequesterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RID({:02x}:{:02x}.{})", self.bus(), self.devfn() >> 3, self.devfn() & 7)
    }
}

/// A 20-bit process address space ID (PCIe Base 6.0 §6.20).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(transparent)]
pub struct Pasid(u32);

impl Pasid {
    /// The largest PASID the TLP prefix can carry.
    pub const MAX: u32 = (1 << 20) - 1;

    /// A PASID, or [`Error::InvalidPasid`] if it does not fit 20 bits.
    pub const fn new(value: u32) -> Result<Self, Error> {
        if value > Self::MAX {
            return Err(Error::InvalidPasid { value });
        }
        Ok(Self(value))
    }

    /// The raw value.
    pub const fn get(self) -> u32 {
        self.0
    }
}

/// An SMMUv3 StreamID (up to 32 bits; usually the requester ID mapped through `iommu-map`/IORT).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(transparent)]
pub struct StreamId(pub u32);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdf_parts_round_trip() {
        let b = Bdf::new(1, 0x3a, 31, 7).unwrap();
        assert_eq!((b.segment, b.bus, b.dev(), b.func()), (1, 0x3a, 31, 7));
        assert_eq!(b.routing_id(), RequesterId(0x3aff));
        assert_eq!(Bdf::from_routing_id(1, 0x3aff), b);
        assert_eq!(format!("{b}"), "0001:3a:1f.7");
    }

    #[test]
    fn bdf_rejects_out_of_range_parts() {
        assert_eq!(Bdf::new(0, 0, 32, 0), Err(Error::InvalidBdf { bus: 0, dev: 32, func: 0 }));
        assert_eq!(Bdf::new(0, 0, 0, 8), Err(Error::InvalidBdf { bus: 0, dev: 0, func: 8 }));
    }

    #[test]
    fn pasid_is_20_bits() {
        assert_eq!(Pasid::new(Pasid::MAX).map(Pasid::get), Ok(0xfffff));
        assert_eq!(Pasid::new(1 << 20), Err(Error::InvalidPasid { value: 1 << 20 }));
    }

    #[test]
    fn address_arithmetic_is_checked() {
        assert_eq!(PhysAddr(0x1000).checked_add(0x1000), Ok(PhysAddr(0x2000)));
        assert_eq!(
            PhysAddr(u64::MAX).checked_add(1),
            Err(Error::AddressOverflow { base: u64::MAX, size: 1 })
        );
        assert!(PhysAddr(0x20_0000).is_aligned(0x20_0000));
        assert_eq!(Iova(0x1234).align_down(0x1000), Iova(0x1000));
    }
}

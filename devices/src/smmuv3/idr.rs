//! The ID registers (IHI 0070 6.3.1-6.3.6) as typed values: the model encodes what it advertises
//! with them, and the plan decodes a host SMMU's (IOMMU_GET_HW_INFO) with the same layouts.

use super::regs::{bits, mask, place};

/// What a register field holds.
trait FieldValue: Copy {
    fn decode(raw: u64) -> Self;
    fn encode(self) -> u64;
}

impl FieldValue for bool {
    fn decode(raw: u64) -> Self {
        raw != 0
    }
    fn encode(self) -> u64 {
        self.into()
    }
}

impl FieldValue for u8 {
    fn decode(raw: u64) -> Self {
        raw as u8
    }
    fn encode(self) -> u64 {
        self.into()
    }
}

/// An accessor and a `with_` builder (truncating to the field's width) per field of a 32-bit
/// register newtype.
macro_rules! fields {
    ($reg:ident { $($(#[$doc:meta])* $get:ident, $with:ident: $ty:ty = [$hi:literal : $lo:literal];)* }) => {
        impl $reg {
            $(
                $(#[$doc])*
                pub fn $get(self) -> $ty {
                    <$ty as FieldValue>::decode(bits(self.0.into(), $hi, $lo))
                }
                pub fn $with(self, value: $ty) -> Self {
                    let cleared = u64::from(self.0) & !mask($hi, $lo);
                    Self((cleared | place(value.encode(), $hi, $lo)) as u32)
                }
            )*
        }
    };
}

/// SMMU_IDR0 (6.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Idr0(pub u32);

fields!(Idr0 {
    /// S1P: stage 1 translation.
    s1p, with_s1p: bool = [1:1];
    /// TTF: translation table formats (see [`Idr0::TTF_AARCH64`]).
    ttf, with_ttf: u8 = [3:2];
    /// COHACC: coherent table and queue accesses.
    cohacc, with_cohacc: bool = [4:4];
    /// ASID16: 16-bit ASIDs.
    asid16, with_asid16: bool = [12:12];
    /// MSI: MSIs for the event and GERROR interrupts and CMD_SYNC.
    msi, with_msi: bool = [13:13];
    /// CD2L: 2-level context-descriptor tables.
    cd2l, with_cd2l: bool = [19:19];
    /// TTENDIAN: table endianness (0b00 mixed, [`Idr0::TTENDIAN_LITTLE`], [`Idr0::TTENDIAN_BIG`]).
    ttendian, with_ttendian: u8 = [22:21];
    /// STALL_MODEL: 0 stall and terminate, 1 terminate only, 2 forced stall.
    stall_model, with_stall_model: u8 = [25:24];
    /// ST_LEVEL: 0 linear stream tables only, [`Idr0::ST_LEVEL_2LVL`] 2-level too.
    st_level, with_st_level: u8 = [28:27];
});

impl Idr0 {
    /// The TTF bit for AArch64 tables (0b10 AArch64 only, 0b11 AArch32 and AArch64).
    pub const TTF_AARCH64: u8 = 0b10;
    pub const TTENDIAN_LITTLE: u8 = 0b10;
    pub const TTENDIAN_BIG: u8 = 0b11;
    pub const ST_LEVEL_2LVL: u8 = 1;
}

/// SMMU_IDR1 (6.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Idr1(pub u32);

fields!(Idr1 {
    /// SIDSIZE: StreamID bits.
    sidsize, with_sidsize: u8 = [5:0];
    /// SSIDSIZE: SubstreamID bits.
    ssidsize, with_ssidsize: u8 = [10:6];
    /// EVENTQS: log2 of the largest event queue.
    eventqs, with_eventqs: u8 = [20:16];
    /// CMDQS: log2 of the largest command queue.
    cmdqs, with_cmdqs: u8 = [25:21];
});

/// SMMU_IDR3 (6.3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Idr3(pub u32);

fields!(Idr3 {
    /// RIL: range invalidation (TLBI_*.TG, NUM, SCALE).
    ril, with_ril: bool = [10:10];
});

/// SMMU_IDR5 (6.3.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Idr5(pub u32);

fields!(Idr5 {
    /// OAS: the output address size encoding ([`Idr5::oas_bits`]).
    oas, with_oas: u8 = [2:0];
    /// GRAN4K: 4 KiB translation granule.
    gran4k, with_gran4k: bool = [4:4];
    /// GRAN16K: 16 KiB translation granule.
    gran16k, with_gran16k: bool = [5:5];
    /// GRAN64K: 64 KiB translation granule.
    gran64k, with_gran64k: bool = [6:6];
});

/// The output address sizes IDR5.OAS encodes, in bits, indexed by encoding.
const OAS_BITS: [u8; 7] = [32, 36, 40, 42, 44, 48, 52];

impl Idr5 {
    /// OAS in address bits; `None` for a reserved encoding.
    pub fn oas_bits(self) -> Option<u8> {
        OAS_BITS.get(usize::from(self.oas())).copied()
    }

    /// With OAS encoding `oas_bits`; `None` when no encoding gives that size.
    pub fn with_oas_bits(self, oas_bits: u8) -> Option<Self> {
        let encoding = OAS_BITS.iter().position(|&b| b == oas_bits)?;
        Some(self.with_oas(encoding as u8))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_and_build_at_the_spec_positions() {
        let idr0 = Idr0(0x0948_301a);
        assert!(idr0.s1p() && idr0.cohacc() && idr0.asid16() && idr0.msi() && idr0.cd2l());
        assert_eq!(
            [
                idr0.ttf(),
                idr0.ttendian(),
                idr0.stall_model(),
                idr0.st_level()
            ],
            [0b10, 0b10, 1, 1]
        );
        assert_eq!(Idr0::default().with_st_level(1).0, 1 << 27);
        // A too-wide value is truncated to the field, neighbours untouched.
        assert_eq!(Idr0(1 << 26).with_stall_model(0b111).0, 0b111 << 24);
        assert_eq!(Idr0(0xffff_ffff).with_cd2l(false).0, !(1 << 19));
        let idr1 = Idr1(0x018a_0150);
        assert_eq!(
            [
                idr1.sidsize(),
                idr1.ssidsize(),
                idr1.eventqs(),
                idr1.cmdqs()
            ],
            [16, 5, 10, 12]
        );
        assert!(Idr3(0x400).ril() && !Idr3(0x800).ril());
    }

    #[test]
    fn one_oas_table_decodes_and_encodes() {
        for (encoding, bits) in (0..).zip([32, 36, 40, 42, 44, 48, 52]) {
            assert_eq!(Idr5(encoding).oas_bits(), Some(bits));
            assert_eq!(Idr5(0x70).with_oas_bits(bits), Some(Idr5(0x70 | encoding)));
        }
        assert_eq!(Idr5(7).oas_bits(), None);
        assert_eq!(Idr5::default().with_oas_bits(47), None);
        let idr5 = Idr5(0x55);
        assert!(idr5.gran4k() && !idr5.gran16k() && idr5.gran64k());
    }
}

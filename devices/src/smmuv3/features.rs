//! The plan's [`SmmuFeatures`] and the ID registers: derived from a host SMMU's IDRs (with the
//! reasons it cannot back a vSMMU), and encoded into the IDRs the guest reads.

use super::idr::{Idr0, Idr1, Idr3, Idr5};
use super::{CMDQS, EVENTQS, SmmuError, SmmuFeatures};

/// StreamIDs a vSMMU offers: a full 16-bit RID space (the vSID is the guest RID; the kernel maps
/// it to the host StreamID, so the host's SIDSIZE does not bound it).
pub const GUEST_SID_BITS: u8 = 16;
/// SubstreamIDs the model handles at most (PCIe PASIDs are 20 bits).
pub const MAX_SSID_BITS: u8 = 20;
/// IOMMU_GET_HW_INFO ARM_SMMUV3 `flags` bit 0: the host needs TLBI and CFGI commands repeated
/// (the kernel's ERRATA_REPEAT_TLBI_CFGI).
pub const HW_INFO_FLAG_REPEAT_TLBI_CFGI: u32 = 1 << 0;

/// Why a host SMMU cannot back a nested vSMMUv3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostSmmuUnfit {
    #[error("it walks no AArch64 translation tables (IDR0.TTF)")]
    NoAarch64Tables,
    #[error("it walks big-endian tables only (IDR0.TTENDIAN)")]
    BigEndianOnly,
    #[error("unknown output address size IDR5.OAS={0}")]
    UnknownOas(u8),
    #[error("guest RAM ends at {ram_end:#x}, beyond its {oas_bits}-bit output addresses")]
    RamBeyondOas { ram_end: u64, oas_bits: u8 },
    #[error("it reports no translation granule (IDR5.GRAN*)")]
    NoGranule,
}

/// [`SmmuFeatures`] as ID registers, both ways (a local trait: the type is the plan's).
pub trait FeatureRegisters: Sized {
    /// What a vSMMU over a host SMMU with ID registers `idr` and IOMMU_GET_HW_INFO `flags`
    /// advertises, for guest RAM ending at `ram_end`. Reads only the IDR fields the iommufd
    /// uAPI names as usable.
    fn from_host(idr: [u32; 6], flags: u32, ram_end: u64) -> Result<Self, HostSmmuUnfit>;

    /// IDR0..IDR5 the model advertises: these features plus the fixed bits it implements; an
    /// error when a feature does not fit its field.
    fn id_registers(&self) -> Result<[u32; 6], SmmuError>;

    /// AIDR (6.3.8).
    fn aidr(&self) -> u32;
}

impl FeatureRegisters for SmmuFeatures {
    fn from_host(idr: [u32; 6], flags: u32, ram_end: u64) -> Result<Self, HostSmmuUnfit> {
        let (idr0, idr1, idr3, idr5) = (Idr0(idr[0]), Idr1(idr[1]), Idr3(idr[3]), Idr5(idr[5]));
        // The guest's stage-1 tables are AArch64, little-endian.
        if idr0.ttf() & Idr0::TTF_AARCH64 == 0 {
            return Err(HostSmmuUnfit::NoAarch64Tables);
        }
        if idr0.ttendian() == Idr0::TTENDIAN_BIG {
            return Err(HostSmmuUnfit::BigEndianOnly);
        }
        let oas_bits = idr5
            .oas_bits()
            .ok_or(HostSmmuUnfit::UnknownOas(idr5.oas()))?;
        if ram_end > 1u64 << oas_bits {
            return Err(HostSmmuUnfit::RamBeyondOas { ram_end, oas_bits });
        }
        if !(idr5.gran4k() || idr5.gran16k() || idr5.gran64k()) {
            return Err(HostSmmuUnfit::NoGranule);
        }
        Ok(SmmuFeatures {
            two_level_stream_table: idr0.st_level() == Idr0::ST_LEVEL_2LVL,
            sid_bits: GUEST_SID_BITS,
            ssid_bits: idr1.ssidsize().min(MAX_SSID_BITS),
            oas_bits,
            granule_4k: idr5.gran4k(),
            granule_16k: idr5.gran16k(),
            granule_64k: idr5.gran64k(),
            range_invalidation: idr3.ril(),
            asid16: idr0.asid16(),
            two_level_cd_table: idr0.cd2l(),
            stall_model: idr0.stall_model(),
            repeat_tlbi_cfgi: flags & HW_INFO_FLAG_REPEAT_TLBI_CFGI != 0,
        })
    }

    fn id_registers(&self) -> Result<[u32; 6], SmmuError> {
        let bad = |field, value: u8| SmmuError::Feature {
            field,
            value: value.into(),
        };
        if self.sid_bits > 32 {
            return Err(bad("sid_bits", self.sid_bits));
        }
        if self.ssid_bits > MAX_SSID_BITS {
            return Err(bad("ssid_bits", self.ssid_bits));
        }
        if self.stall_model > 2 {
            return Err(bad("stall_model", self.stall_model));
        }
        if !(self.granule_4k || self.granule_16k || self.granule_64k) {
            return Err(bad("granules", 0));
        }
        let idr0 = Idr0::default()
            .with_s1p(true)
            .with_ttf(Idr0::TTF_AARCH64)
            .with_cohacc(true)
            .with_asid16(self.asid16)
            .with_msi(true)
            .with_cd2l(self.two_level_cd_table)
            .with_ttendian(Idr0::TTENDIAN_LITTLE)
            .with_stall_model(self.stall_model)
            .with_st_level(self.two_level_stream_table.into());
        let idr1 = Idr1::default()
            .with_sidsize(self.sid_bits)
            .with_ssidsize(self.ssid_bits)
            .with_eventqs(EVENTQS)
            .with_cmdqs(CMDQS);
        let idr3 = Idr3::default().with_ril(self.range_invalidation);
        let idr5 = Idr5::default()
            .with_oas_bits(self.oas_bits)
            .ok_or(bad("oas_bits", self.oas_bits))?
            .with_gran4k(self.granule_4k)
            .with_gran16k(self.granule_16k)
            .with_gran64k(self.granule_64k);
        Ok([idr0.0, idr1.0, 0, idr3.0, 0, idr5.0])
    }

    /// SMMUv3.1, or v3.2 when range invalidation (a v3.2 feature) is advertised.
    fn aidr(&self) -> u32 {
        if self.range_invalidation { 0x02 } else { 0x01 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Grace-like host SMMU: 2-level stream and CD tables, AArch64 LE tables, terminate model,
    /// 16-bit ASIDs, 20-bit SSIDs, RIL, 48-bit OAS, 4K and 64K granules.
    const HOST: [u32; 6] = [
        1 << 27 | 1 << 24 | 0b10 << 21 | 1 << 19 | 1 << 12 | 0b10 << 2 | 1 << 1,
        20 << 6 | 16,
        0,
        1 << 10,
        0,
        1 << 6 | 1 << 4 | 5,
    ];

    fn with(index: usize, clear: u32, set: u32) -> [u32; 6] {
        let mut idr = HOST;
        idr[index] = (idr[index] & !clear) | set;
        idr
    }

    #[test]
    fn host_idrs_give_the_features_the_uapi_allows() {
        let f = SmmuFeatures::from_host(HOST, 1, 1 << 40).unwrap();
        assert!(f.two_level_stream_table && f.two_level_cd_table && f.asid16);
        assert!(f.range_invalidation && f.repeat_tlbi_cfgi);
        assert_eq!((f.sid_bits, f.ssid_bits, f.oas_bits), (16, 20, 48));
        assert_eq!(
            (f.granule_4k, f.granule_16k, f.granule_64k),
            (true, false, true)
        );
        assert_eq!(f.stall_model, 1);
        // Mixed-endian and AArch32+AArch64 hosts are fine; SSIDSIZE is capped at 20 bits.
        let mixed = with(0, 0b11 << 21 | 0b11 << 2, 0b11 << 2);
        assert!(SmmuFeatures::from_host(mixed, 0, 1 << 40).is_ok());
        let wide = [HOST[0], 31 << 6, 0, 0, 0, HOST[5]];
        let f = SmmuFeatures::from_host(wide, 0, 1 << 40).unwrap();
        assert_eq!(f.ssid_bits, 20);
        assert!(!f.range_invalidation && !f.repeat_tlbi_cfgi);
    }

    #[test]
    fn unfit_host_smmus_say_why() {
        let refused = |idr, ram_end| SmmuFeatures::from_host(idr, 0, ram_end).unwrap_err();
        for (idr, unfit) in [
            (
                with(0, 0b11 << 2, 0b01 << 2),
                HostSmmuUnfit::NoAarch64Tables,
            ),
            (with(0, 0, 0b11 << 21), HostSmmuUnfit::BigEndianOnly),
            (with(5, 7, 7), HostSmmuUnfit::UnknownOas(7)),
            (with(5, 0x70, 0), HostSmmuUnfit::NoGranule),
        ] {
            assert_eq!(refused(idr, 1 << 30), unfit);
        }
        let oas40 = with(5, 7, 2);
        assert!(SmmuFeatures::from_host(oas40, 0, 1 << 40).is_ok());
        let e = refused(oas40, (1 << 40) + 1);
        assert_eq!(
            e.to_string(),
            "guest RAM ends at 0x10000000001, beyond its 40-bit output addresses"
        );
    }

    #[test]
    fn derived_features_encode_back_into_the_same_fields() {
        let f = SmmuFeatures::from_host(HOST, 0, 1 << 30).unwrap();
        let idr = f.id_registers().unwrap();
        assert_eq!(Idr5(idr[5]), Idr5(HOST[5]));
        assert_eq!(Idr3(idr[3]), Idr3(HOST[3]));
        assert_eq!(Idr0(idr[0]).st_level(), 1);
        assert_eq!(Idr1(idr[1]).ssidsize(), 20);
    }
}

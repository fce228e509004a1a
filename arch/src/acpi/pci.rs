//! PCI host bridges in the ACPI tables, shared by both architectures: a bridge's
//! `PNP0A08` device in the DSDT (PCI Firmware Specification 3.3 §4.5, ACPI 6.5 §6.2.6, §6.2.13)
//! and the `PNP0C02` device that reserves ECAM for an x86 guest.

use acpi_tables::Aml;
use acpi_tables::aml::{self, AddressSpace, AddressSpaceCacheable};

use super::encode::{self, RawAml};
use crate::platform::{GuestRange, IntxPin, PciBridge};

/// Devices on a bus; the `_PRT` lists every one (ACPI has no mask like the device tree).
const PCI_SLOTS: u8 = 32;
/// `_PRT` address: the device in the high word, any function (0xFFFF) in the low word.
const PRT_ANY_FUNCTION: u32 = 0xffff;

/// The PCI host bridge `_OSC` UUID (PCI Firmware Specification 3.3 §4.5.1).
const PCI_OSC_UUID: &str = "33db4d5b-1ff7-401c-9657-7441c03dd766";
/// `_OSC` status bits in the first capabilities DWORD (ACPI 6.5 §6.2.11).
const OSC_UNRECOGNIZED_UUID: u8 = 1 << 2;
const OSC_UNRECOGNIZED_REVISION: u8 = 1 << 3;
const OSC_CAPABILITIES_MASKED: u8 = 1 << 4;
/// The PCI host bridge `_DSM` UUID, its function 5 (preserve PCI boot configuration), and the
/// function bitmap function 0 returns (functions 0 and 5).
const PCI_DSM_UUID: &str = "e5c937d0-3553-4d7a-9117-ea4d19c3434d";
const DSM_PRESERVE_BOOT_CONFIG: u8 = 5;
const DSM_FUNCTIONS: u8 = 1 << 0 | 1 << DSM_PRESERVE_BOOT_CONFIG;
/// The control the firmware hands over (PCI Firmware 3.3 table 4-5): native PCIe hotplug, SHPC
/// hotplug, PME, AER and the PCIe capability structure. Nothing runs firmware-first in a
/// microvmm guest, so the OS gets all of it; LTR and DPC stay with nobody (no port models them).
const OSC_GRANTED_CONTROL: u8 = 0x1f;

/// The DSDT device name of a bridge, `\_SB.PCxx` (the check keeps segments below 0x100).
pub(crate) fn device_name(bridge: &PciBridge) -> String {
    format!("PC{:02X}", bridge.segment)
}

/// `Device (\_SB.PCxx)`: a PCI Express root bridge (`PNP0A08`, compatible `PNP0A03`) for one
/// segment, its bus range and two memory windows in `_CRS` (identity-mapped, no I/O window),
/// a link-less `_PRT` (INTx lines as GSIs by `gsi`), and an `_OSC` that grants the OS native
/// control. With `coherent_dma`, `_CCA` says DMA is cache-coherent (Arm; x86 always is).
///
/// Link-less `_PRT` entries give GSIs directly, and Linux (drivers/acpi/pci_irq.c) then treats
/// them as level-triggered, active high on a GIC and active low on an I/O APIC.
///
/// With `preserve_config`, a `_DSM` asks the OS to keep the boot configuration (see
/// [`dsm_preserve_config`]).
pub(crate) fn root_bridge_device(
    bridge: &PciBridge,
    gsi: fn(u32) -> u32,
    coherent_dma: bool,
    preserve_config: bool,
) -> RawAml {
    let hid = aml::EISAName::new("PNP0A08");
    let cid = aml::EISAName::new("PNP0A03");
    let hid = aml::Name::new("_HID".into(), &hid);
    let cid = aml::Name::new("_CID".into(), &cid);
    let seg = aml::Name::new("_SEG".into(), &bridge.segment);
    let bbn = aml::Name::new("_BBN".into(), &bridge.bus_start);
    let uid = aml::Name::new("_UID".into(), &bridge.segment);
    let cca = aml::Name::new("_CCA".into(), &aml::ONE);

    let buses =
        AddressSpace::new_bus_number(u16::from(bridge.bus_start), u16::from(bridge.bus_end));
    // The check keeps the 32-bit window below 4 GiB.
    let mmio32 = AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        bridge.mmio32.base as u32,
        (bridge.mmio32.end() - 1) as u32,
        None,
    );
    let mmio64 = AddressSpace::new_memory(
        AddressSpaceCacheable::PreFetchable,
        true,
        bridge.mmio64.base,
        bridge.mmio64.end() - 1,
        None,
    );
    let crs = aml::ResourceTemplate::new(vec![&buses, &mmio32, &mmio64]);
    let crs = aml::Name::new("_CRS".into(), &crs);
    let prt = routing_table(bridge, gsi);
    let osc = osc_method();

    let mut children: Vec<&dyn Aml> = vec![&hid, &cid, &seg, &bbn, &uid];
    if coherent_dma {
        children.push(&cca);
    }
    children.extend([&crs as &dyn Aml, &prt, &osc]);
    let dsm = dsm_preserve_config();
    if preserve_config {
        children.push(&dsm);
    }
    let device = aml::Device::new(device_name(bridge).as_str().into(), children);
    RawAml(encode::aml_bytes(&device))
}

/// `Name (_PRT, Package { Package { (slot << 16) | 0xFFFF, pin, 0, GSI }, ... })`: every slot
/// and pin (0 = INTA) with the GSI of the bridge's swizzled line.
fn routing_table(bridge: &PciBridge, gsi: fn(u32) -> u32) -> RawAml {
    let mut entries = Vec::with_capacity(usize::from(PCI_SLOTS) * 4);
    for slot in 0..PCI_SLOTS {
        for pin in IntxPin::ALL {
            let address = (u32::from(slot) << 16) | PRT_ANY_FUNCTION;
            let gsi = gsi(bridge.intx_line(slot, pin));
            let pin = pin.index();
            // Source 0: no link device, the last element is the GSI itself.
            let entry = aml::Package::new(vec![&address, &pin, &0u8, &gsi]);
            entries.push(RawAml(encode::aml_bytes(&entry)));
        }
    }
    let prt = aml::Package::new(entries.iter().map(|e| e as &dyn Aml).collect());
    RawAml(encode::aml_bytes(&aml::Name::new("_PRT".into(), &prt)))
}

/// `_OSC (UUID, Revision, Count, Capabilities)` for the PCI host bridge UUID: grants the
/// requested control bits within [`OSC_GRANTED_CONTROL`], flagging any it masked, and rejects
/// other UUIDs and revisions other than 1.
fn osc_method() -> RawAml {
    let cdw1 = aml::Path::new("CDW1");
    let cdw2 = aml::Path::new("CDW2");
    let cdw3 = aml::Path::new("CDW3");
    let capabilities = aml::Arg(3);
    let granted = aml::Local(0);
    let uuid = aml::Uuid::new(PCI_OSC_UUID);

    let create_cdw1 = aml::CreateDWordField::new(&cdw1, &capabilities, &aml::ZERO);
    let create_cdw2 = aml::CreateDWordField::new(&cdw2, &capabilities, &4u8);
    let create_cdw3 = aml::CreateDWordField::new(&cdw3, &capabilities, &8u8);
    let requested = aml::Store::new(&granted, &cdw3);
    let mask = aml::And::new(&granted, &granted, &OSC_GRANTED_CONTROL);
    let bad_revision = aml::NotEqual::new(&aml::Arg(1), &aml::ONE);
    let flag_revision = aml::Or::new(&cdw1, &cdw1, &OSC_UNRECOGNIZED_REVISION);
    let check_revision = aml::If::new(&bad_revision, vec![&flag_revision]);
    let masked = aml::NotEqual::new(&cdw3, &granted);
    let flag_masked = aml::Or::new(&cdw1, &cdw1, &OSC_CAPABILITIES_MASKED);
    let check_masked = aml::If::new(&masked, vec![&flag_masked]);
    let grant = aml::Store::new(&cdw3, &granted);
    let is_pci = aml::Equal::new(&aml::Arg(0), &uuid);
    let pci = aml::If::new(
        &is_pci,
        vec![
            &create_cdw2,
            &create_cdw3,
            &requested,
            &mask,
            &check_revision,
            &check_masked,
            &grant,
        ],
    );
    let flag_uuid = aml::Or::new(&cdw1, &cdw1, &OSC_UNRECOGNIZED_UUID);
    let other = aml::Else::new(vec![&flag_uuid]);
    let ret = aml::Return::new(&capabilities);
    let method = aml::Method::new(
        "_OSC".into(),
        4,
        false,
        vec![&create_cdw1, &pci, &other, &ret],
    );
    RawAml(encode::aml_bytes(&method))
}

/// `_DSM` for the PCI host bridge UUID (PCI Firmware Specification 3.3 §4.6): function 0 lists
/// functions 0 and 5, function 5 ("preserve PCI boot configuration") returns 0: keep it. Linux
/// applies an IORT RMR to a PCI function only when its host bridge says so
/// (`iort_rmr_has_dev`: RMR StreamIDs are RIDs, which renumbering would break); it then claims
/// the resources it finds and still assigns whatever is unassigned.
fn dsm_preserve_config() -> RawAml {
    let uuid = aml::Uuid::new(PCI_DSM_UUID);
    let is_pci = aml::Equal::new(&aml::Arg(0), &uuid);
    let list = aml::BufferData::new(vec![DSM_FUNCTIONS]);
    let query = aml::Equal::new(&aml::Arg(2), &aml::ZERO);
    let return_list = aml::Return::new(&list);
    let if_query = aml::If::new(&query, vec![&return_list]);
    let preserve = aml::Equal::new(&aml::Arg(2), &DSM_PRESERVE_BOOT_CONFIG);
    let return_keep = aml::Return::new(&aml::ZERO);
    let if_preserve = aml::If::new(&preserve, vec![&return_keep]);
    let pci = aml::If::new(&is_pci, vec![&if_query, &if_preserve]);
    let none = aml::BufferData::new(vec![0]);
    let return_none = aml::Return::new(&none);
    let method = aml::Method::new("_DSM".into(), 4, false, vec![&pci, &return_none]);
    RawAml(encode::aml_bytes(&method))
}

/// `Device (\_SB.MBRD)`, a `PNP0C02` motherboard resource consuming every ECAM window: PCI
/// Firmware 3.3 §4.1.2 wants ECAM reserved this way, and x86 Linux ignores MCFG entries that
/// are not (arch/x86/pci/mmconfig-shared.c, `is_acpi_reserved`). `None` without bridges.
pub(crate) fn ecam_reservation(bridges: &[PciBridge]) -> Option<RawAml> {
    if bridges.is_empty() {
        return None;
    }
    let resources: Vec<RawAml> = bridges.iter().map(|b| memory_range(b.ecam)).collect();
    let hid = aml::EISAName::new("PNP0C02");
    let hid = aml::Name::new("_HID".into(), &hid);
    let uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let crs = aml::ResourceTemplate::new(resources.iter().map(|r| r as &dyn Aml).collect());
    let crs = aml::Name::new("_CRS".into(), &crs);
    let device = aml::Device::new("MBRD".into(), vec![&hid, &uid, &crs]);
    Some(RawAml(encode::aml_bytes(&device)))
}

/// A memory range descriptor: `Memory32Fixed` below 4 GiB, `QWordMemory` above.
fn memory_range(range: GuestRange) -> RawAml {
    let mut bytes = Vec::new();
    match (u32::try_from(range.base), u32::try_from(range.size)) {
        (Ok(base), Ok(size)) if range.end() <= 1 << 32 => {
            aml::Memory32Fixed::new(true, base, size).to_aml_bytes(&mut bytes);
        }
        _ => AddressSpace::new_memory(
            AddressSpaceCacheable::NotCacheable,
            true,
            range.base,
            range.end() - 1,
            None,
        )
        .to_aml_bytes(&mut bytes),
    }
    RawAml(bytes)
}

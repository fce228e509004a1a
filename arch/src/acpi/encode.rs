//! Byte-level helpers shared by the table encoders: the system description table header
//! (§5.2.6), generic address structures (§5.2.3.2) and raw AML fragments.

use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::sdt::Sdt;
use acpi_tables::{Aml, AmlSink, aml};

use super::{Encoded, OEM_ID, OEM_REVISION, OEM_TABLE_ID};

/// The system description table header: signature, length, revision, checksum, OEM fields,
/// creator fields.
pub const HEADER_LEN: usize = 36;

/// A table: our header (with `revision`), then `body`; length and checksum computed.
pub fn table(signature: [u8; 4], revision: u8, body: &[u8]) -> Encoded {
    let mut sdt = Sdt::new(
        signature,
        HEADER_LEN as u32,
        revision,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    sdt.append_slice(body);
    Encoded {
        signature,
        bytes: sdt.as_slice().to_vec(),
    }
}

/// Everything an `Aml` value writes.
pub fn aml_bytes(value: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    value.to_aml_bytes(&mut bytes);
    bytes
}

/// Already-encoded AML, so that separately built objects (one device each) can be children of a
/// scope.
pub struct RawAml(pub Vec<u8>);

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

/// A byte-wide register in system memory.
pub fn gas_mmio8(address: u64) -> GAS {
    GAS::new(
        AddressSpace::SystemMemory,
        8,
        0,
        AccessSize::ByteAccess,
        address,
    )
}

/// A 32-bit register in system memory.
pub fn gas_mmio32(address: u64) -> GAS {
    GAS::new(
        AddressSpace::SystemMemory,
        32,
        0,
        AccessSize::DwordAccess,
        address,
    )
}

/// A byte-wide register in I/O port space.
pub fn gas_pio8(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

/// The `_DSD` UUID of device properties (ACPI "Device Properties UUID For _DSD", 2019).
const DEVICE_PROPERTIES_UUID: &str = "daffd814-6eba-4d8c-8a91-bc9bbf4aa301";

/// `Name (_DSD, ...)` giving each `(name, value)` as a device property, which Linux reads through
/// `device_property_read_u32` as it would the same property in a device tree.
pub fn device_properties(properties: &[(&'static str, u32)]) -> RawAml {
    let pairs: Vec<aml::Package> = properties
        .iter()
        .map(|(name, value)| aml::Package::new(vec![name, value]))
        .collect();
    let list = aml::Package::new(pairs.iter().map(|p| p as &dyn Aml).collect());
    let uuid = aml::Uuid::new(DEVICE_PROPERTIES_UUID);
    let dsd = aml::Package::new(vec![&uuid, &list]);
    RawAml(aml_bytes(&aml::Name::new("_DSD".into(), &dsd)))
}

/// A 16550-compatible UART as Linux's 8250_pnp driver binds it (`PNP0501`), under `name` in the
/// current scope, with its `_CRS` `resources` and device `properties`.
pub fn pnp0501_device(
    name: &str,
    resources: Vec<&dyn Aml>,
    properties: &[(&'static str, u32)],
) -> RawAml {
    let hid = aml::EISAName::new("PNP0501");
    let uid: u8 = 0;
    let crs = aml::ResourceTemplate::new(resources);
    let dsd = device_properties(properties);
    let hid = aml::Name::new("_HID".into(), &hid);
    let uid = aml::Name::new("_UID".into(), &uid);
    let crs = aml::Name::new("_CRS".into(), &crs);
    let device = aml::Device::new(name.into(), vec![&hid, &uid, &crs, &dsd]);
    RawAml(aml_bytes(&device))
}

/// The SBSA generic UART, `ARMH0011` (Linux: `sbsa-uart`, fixed rate, no properties).
pub fn sbsa_uart_device(name: &str, resources: Vec<&dyn Aml>) -> RawAml {
    let uid: u8 = 0;
    let crs = aml::ResourceTemplate::new(resources);
    let hid = aml::Name::new("_HID".into(), &"ARMH0011");
    let uid = aml::Name::new("_UID".into(), &uid);
    let crs = aml::Name::new("_CRS".into(), &crs);
    let device = aml::Device::new(name.into(), vec![&hid, &uid, &crs]);
    RawAml(aml_bytes(&device))
}

/// `Scope (\_SB) { devices }`: the system bus, where every device object goes.
pub fn system_bus(devices: &[RawAml]) -> RawAml {
    let children: Vec<&dyn Aml> = devices.iter().map(|d| d as &dyn Aml).collect();
    RawAml(aml_bytes(&aml::Scope::new("\\_SB_".into(), children)))
}

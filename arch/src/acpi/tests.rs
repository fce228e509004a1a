use std::collections::BTreeMap;

use super::iort::{IdMapping, Iort, Node, NodeRef};
use super::testutil::*;
use super::*;
use crate::aarch64::layout as arm;
use crate::platform::{PciBridge, Platform, PowerControl, UartModel};
use crate::x86_64::layout as x86;

/// The tables of `platform`, which must pass the check, in `region`.
fn tables_of(platform: &Platform, region: GuestRange) -> Result<AcpiTables, AcpiError> {
    build(&platform.clone().check().expect("a valid platform"), region)
}

/// A firmware-region-sized ACPI area, as `efi::acpi_boot` hands `build`.
fn arm_region() -> GuestRange {
    GuestRange::new(aarch64_firmware_region().base, 0x1f_0000)
}

/// The aarch64 tables with `bridges` host bridges and vSMMUv3 `i` in front of `smmus[i]`.
fn arm_tables(vcpus: u32, bridges: u16, smmus: &[u16]) -> AcpiTables {
    tables_of(&aarch64_smmu_platform(vcpus, bridges, smmus), arm_region()).unwrap()
}

fn x86_pci_platform(vcpus: u32, bridges: u16) -> Platform {
    let mut p = x86_platform(vcpus);
    p.pci_bridges = x86_pci_bridges(bridges);
    p
}

fn x86_tables(vcpus: u32, bridges: u16) -> AcpiTables {
    tables_of(&x86_pci_platform(vcpus, bridges), x86::ACPI_TABLES).unwrap()
}

fn table<'a>(tables: &'a AcpiTables, signature: &str) -> &'a AcpiTable {
    tables
        .get(signature)
        .unwrap_or_else(|| panic!("no {signature} table"))
}

/// An encoded table at address 0, for iasl.
fn unplaced(encoded: Encoded) -> AcpiTable {
    AcpiTable {
        signature: String::from_utf8_lossy(&encoded.signature).into_owned(),
        address: 0,
        bytes: encoded.bytes,
    }
}

/// The DSDT's ASL with runs of whitespace collapsed, so multi-line ASL matches as one string.
fn dsdt_asl(tables: &AcpiTables) -> String {
    squash(&iasl_decode(table(tables, "DSDT")))
}

fn squash(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn assert_contains_all(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "{part:?} missing from\n{text}");
    }
}

fn signatures(tables: &AcpiTables) -> Vec<&str> {
    tables.tables.iter().map(|t| t.signature.as_str()).collect()
}

const ARM_SIGNATURES: [&str; 8] = [
    "RSDP", "XSDT", "DSDT", "FACP", "APIC", "GTDT", "SPCR", "MCFG",
];
const X86_SIGNATURES: [&str; 6] = ["RSDP", "XSDT", "DSDT", "FACP", "APIC", "MCFG"];

#[test]
fn tables_present_per_arch() {
    assert_eq!(signatures(&arm_tables(4, 0, &[])), ARM_SIGNATURES);
    assert_eq!(signatures(&x86_tables(4, 0)), X86_SIGNATURES);
}

/// Every table of each set has its header, length and checksum right; the pointers from the RSDP
/// and the FADT reach every table once; tables are aligned, disjoint and inside their region; and
/// iasl decodes each one (but the RSDP, which iasl 20200925 does not take bare).
#[test]
fn every_table_is_well_formed_linked_placed_and_decodable() {
    let arm = |vcpus, bridges| (arm_tables(vcpus, bridges, &[]), arm_region());
    let x86 = |vcpus, bridges| (x86_tables(vcpus, bridges), x86::ACPI_TABLES);
    for (tables, region) in [
        arm(4, 0),
        arm(20, 0),
        arm(123, 0),
        arm(2, 1),
        arm(4, 1),
        arm(2, 3),
        arm(4, 3),
        arm(8, 3),
        x86(4, 0),
        x86(8, 0),
        x86(254, 0),
        x86(2, 1),
        x86(2, 3),
        x86(4, 3),
        x86(8, 3),
    ] {
        for t in &tables.tables {
            let (sig, b) = (&t.signature, &t.bytes);
            if sig == "RSDP" {
                assert_eq!(&b[..8], b"RSD PTR ");
                assert_eq!(b.len(), 36);
                assert_eq!(b[15], 2, "RSDP revision");
                assert_eq!(u32_at(b, 20), 36, "RSDP length");
                assert_eq!(checksum(&b[..20]), 0, "RSDP ACPI 1.0 checksum");
                assert_eq!(checksum(b), 0, "RSDP extended checksum");
                assert_eq!(&b[9..15], &OEM_ID);
                continue;
            }
            assert_eq!(&b[..4], sig.as_bytes());
            assert_eq!(u32_at(b, 4) as usize, b.len(), "{sig} length field");
            assert_eq!(checksum(b), 0, "{sig} checksum");
            assert_eq!(&b[10..16], &OEM_ID);
            assert_eq!(&b[16..24], &OEM_TABLE_ID);
            let dsl = iasl_decode(t);
            if sig == "DSDT" {
                let head = "DefinitionBlock (\"\", \"DSDT\", 2, \"MCRVMM\", \"MICROVMM\"";
                assert_contains_all(&dsl, &[head]);
            } else {
                assert!(field(&dsl, "Signature").starts_with(&format!("\"{sig}\"")));
                assert_eq!(hex(&field(&dsl, "Table Length")), b.len() as u64);
            }
        }

        // RSDP -> XSDT -> every other table, and FADT -> DSDT, by the addresses in the bytes.
        let by_address: BTreeMap<u64, &AcpiTable> =
            tables.tables.iter().map(|t| (t.address, t)).collect();
        assert_eq!(by_address.len(), tables.tables.len(), "shared address");
        let rsdp = table(&tables, "RSDP");
        assert_eq!(rsdp.address, tables.rsdp);
        assert_eq!(u32_at(&rsdp.bytes, 16), 0, "no 32-bit RSDT");
        let xsdt = by_address[&u64_at(&rsdp.bytes, 24)];
        assert_eq!(xsdt.signature, "XSDT");
        let listed: Vec<&str> = xsdt.bytes[36..]
            .chunks(8)
            .map(|entry| by_address[&u64::from_le_bytes(entry.try_into().unwrap())])
            .map(|t| t.signature.as_str())
            .collect();
        let mut expected: Vec<&str> = signatures(&tables)
            .into_iter()
            .filter(|s| !["RSDP", "XSDT", "DSDT"].contains(s))
            .collect();
        assert_eq!(listed, expected);
        expected.sort();
        expected.dedup();
        assert_eq!(expected.len(), listed.len(), "a table is listed twice");
        let fadt = &table(&tables, "FACP").bytes;
        assert_eq!(u32_at(fadt, 40), 0, "32-bit DSDT pointer unused");
        assert_eq!(by_address[&u64_at(fadt, 140)].signature, "DSDT");
        assert_eq!((u32_at(fadt, 36), u64_at(fadt, 132)), (0, 0), "no FACS");

        assert_eq!(tables.rsdp, region.base);
        assert_eq!(tables.rsdp % RSDP_ALIGN, 0);
        for (i, t) in tables.tables.iter().enumerate() {
            let (sig, range) = (&t.signature, t.range());
            assert_eq!(t.address % TABLE_ALIGN, 0, "{sig} misaligned");
            assert!(
                region.contains(t.address) && range.end() <= region.end(),
                "{sig} at {range:?} is outside {region:?}"
            );
            for b in &tables.tables[i + 1..] {
                assert!(
                    !range.overlaps(&b.range()),
                    "{sig} overlaps {}",
                    b.signature
                );
            }
        }
        let extent = tables.extent();
        assert_eq!(extent.base, region.base);
        assert!(extent.end() <= region.end());
    }
}

#[test]
fn aarch64_madt_describes_every_vcpu_and_the_gic() {
    let vcpus = 20;
    let n = vcpus as usize;
    let dsl = iasl_decode(table(&arm_tables(vcpus, 0, &[]), "APIC"));
    assert_hex_fields(
        &dsl,
        &[("Revision", 5), ("Local Apic Address", 0), ("Version", 3)],
    );
    let mpidrs = hex_fields(&dsl, "ARM MPIDR");
    assert_eq!(mpidrs, (0..vcpus).map(arm::mpidr).collect::<Vec<_>>());
    assert_eq!(
        mpidrs[16], 0x100,
        "vCPU 16 has Aff1 = 1: the MPIDR is not the index"
    );
    let uids = hex_fields(&dsl, "Processor UID");
    assert_eq!(uids, (0..u64::from(vcpus)).collect::<Vec<_>>());
    assert_eq!(fields(&dsl, "Processor Enabled"), vec!["1"; n]);
    let maintenance = u64::from(arm::GIC_MAINTENANCE_PPI + 16);
    assert_eq!(
        hex_fields(&dsl, "Virtual GIC Interrupt"),
        vec![maintenance; n]
    );

    let subtables = fields(&dsl, "Subtable Type");
    assert_eq!(subtables.iter().filter(|s| s.starts_with("0B")).count(), n);
    assert_eq!(
        subtables[n..],
        [
            "0C [Generic Interrupt Distributor]",
            "0E [Generic Interrupt Redistributor]",
            "0F [Generic Interrupt Translator]"
        ]
    );
    // Each GICC's (unused) CPU interface base, then GICD, GICR and ITS.
    let bases = hex_fields(&dsl, "Base Address");
    let gic = [arm::GIC_DIST.base, arm::GIC_REDIST_BASE, arm::GIC_ITS.base];
    assert_eq!(bases[n..], gic);
    // The GICR discovery range covers every vCPU's redistributor; the ITS ends the table.
    let lengths = hex_fields(&dsl, "Length");
    let gicr_len = u64::from(vcpus) * arm::GIC_REDIST_STRIDE;
    assert_eq!(lengths[lengths.len() - 2..], [gicr_len, 0x14]);
}

#[test]
fn aarch64_fadt_is_hardware_reduced_psci_hvc() {
    let tables = arm_tables(2, 0, &[]);
    let dsl = iasl_decode(table(&tables, "FACP"));
    assert_hex_fields(
        &dsl,
        &[
            ("Revision", 6),
            ("FADT Minor Revision", 5),
            ("Flags (decoded below)", 1 << 20),
        ],
    );
    assert_text_fields(
        &dsl,
        &[
            ("Hardware Reduced (V5)", "1"),
            ("PSCI Compliant", "1"),
            ("Must use HVC for PSCI", "1"),
        ],
    );
    let dsdt = table(&tables, "DSDT").address;
    assert_eq!(hex_fields(&dsl, "DSDT Address"), [0, dsdt]);
}

#[test]
fn aarch64_gtdt_timer_interrupts() {
    let dsl = iasl_decode(table(&arm_tables(1, 0, &[]), "GTDT"));
    assert_hex_fields(
        &dsl,
        &[
            ("Secure EL1 Interrupt", 29),
            ("Non-Secure EL1 Interrupt", 30),
            ("Virtual Timer Interrupt", 27),
            ("Non-Secure EL2 Interrupt", 26),
            ("Platform Timer Count", 0),
            ("Counter Block Address", u64::MAX),
            ("Counter Read Block Address", u64::MAX),
        ],
    );
    assert_eq!(fields(&dsl, "Trigger Mode"), ["0"; 4], "level-triggered");
    assert_eq!(fields(&dsl, "Polarity"), ["0"; 4], "active high");
    assert_eq!(fields(&dsl, "Always On"), ["1"; 4]);
}

#[test]
fn aarch64_spcr_points_at_the_uart() {
    let dsl = iasl_decode(table(&arm_tables(1, 0, &[]), "SPCR"));
    assert_hex_fields(
        &dsl,
        &[
            ("Revision", 2),
            ("Interface Type", 0), // 16550 compatible
            ("Bit Width", 8),
            ("Address", arm::UART.base),
            ("Interrupt Type", 0x08), // GIC
            ("Interrupt", u64::from(arm::UART_SPI + 32)),
            ("Baud Rate", 7), // 115200
            ("Stop Bits", 1),
            ("PCI Device ID", 0xffff),
            ("PCI Vendor ID", 0xffff),
        ],
    );
    assert_text_fields(
        &dsl,
        &[
            ("Space ID", "00 [SystemMemory]"),
            ("Encoded Access Width", "01 [Byte Access:8]"),
        ],
    );
}

#[test]
fn aarch64_dsdt_has_the_uart_as_pnp0501() {
    assert_contains_all(
        &dsdt_asl(&arm_tables(1, 0, &[])),
        &[
            "Scope (\\_SB) { Device (COM0) {",
            "Name (_HID, EisaId (\"PNP0501\")",
            "Name (_UID, Zero)",
            "Memory32Fixed (ReadWrite, 0x09000000, // Address Base 0x00001000, // Address Length )",
            "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) { 0x00000021, }",
            "ToUUID (\"daffd814-6eba-4d8c-8a91-bc9bbf4aa301\")",
            "\"clock-frequency\", 0x001C2000",
            "\"reg-shift\", Zero",
            "\"reg-io-width\", One",
        ],
    );
}

#[test]
fn aarch64_pl011_is_an_sbsa_uart_in_the_dsdt_and_the_spcr() {
    let mut p = aarch64_smmu_platform(1, 0, &[]);
    p.serial.iter_mut().for_each(|s| s.model = UartModel::Pl011);
    let tables = tables_of(&p, arm_region()).unwrap();
    let dsdt = dsdt_asl(&tables);
    assert_contains_all(
        &dsdt,
        &[
            "Device (COM0) {",
            "Name (_HID, \"ARMH0011\")",
            "Memory32Fixed (ReadWrite, 0x09000000, // Address Base 0x00001000, // Address Length )",
            "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) { 0x00000021, }",
        ],
    );
    assert!(!dsdt.contains("PNP0501") && !dsdt.contains("reg-io-width"));
    let dsl = iasl_decode(table(&tables, "SPCR"));
    assert_hex_fields(
        &dsl,
        &[
            ("Interface Type", 3), // Arm PL011
            ("Bit Width", 32),
            ("Address", arm::UART.base),
            ("Interrupt", u64::from(arm::UART_SPI + 32)),
        ],
    );
    assert_text_fields(&dsl, &[("Encoded Access Width", "03 [DWord Access:32]")]);
}

#[test]
fn mcfg_lists_the_ecam_windows() {
    for tables in [arm_tables(1, 0, &[]), x86_tables(1, 0)] {
        let mcfg = table(&tables, "MCFG");
        assert_eq!(mcfg.bytes.len(), 44, "header and reserved, no windows yet");
        assert!(fields(&iasl_decode(mcfg), "Base Address").is_empty());
    }
    // Windows from a later plan go straight in: bus 0 at these bases, the second from bus 0x10.
    let mut bridges = aarch64_pci_bridges(2);
    bridges[0].ecam.base = 0x40_1000_0000;
    bridges[1].ecam.base = 0x40_2000_0000 + (0x10 << 20);
    let ranges: Vec<_> = bridges
        .iter()
        .map(|b| (b.segment, b.bus_start, b.bus_end))
        .collect();
    assert_eq!(ranges, [(0, 0, 0xff), (1, 0x10, 0x1f)]);
    let t = unplaced(mcfg(&bridges));
    assert_eq!(t.bytes.len(), 44 + 2 * 16);
    assert_eq!(checksum(&t.bytes), 0);
    let dsl = iasl_decode(&t);
    assert_eq!(
        hex_fields(&dsl, "Base Address"),
        [0x40_1000_0000, 0x40_2000_0000]
    );
    assert_eq!(hex_fields(&dsl, "Segment Group Number"), [0, 1]);
    assert_eq!(hex_fields(&dsl, "End Bus Number"), [0xff, 0x1f]);
}

#[test]
fn x86_madt_local_apics_ioapic_and_overrides() {
    let vcpus = 6;
    let dsl = iasl_decode(table(&x86_tables(vcpus, 0), "APIC"));
    assert_hex_fields(
        &dsl,
        &[("Local Apic Address", x86::LAPIC), ("I/O Apic ID", 0)],
    );
    assert_eq!(field(&dsl, "PC-AT Compatibility"), "1");
    let ids = hex_fields(&dsl, "Local Apic ID");
    assert_eq!(ids, (0..u64::from(vcpus)).collect::<Vec<_>>());
    assert_eq!(hex_fields(&dsl, "Processor ID"), ids);
    assert_eq!(fields(&dsl, "Processor Enabled"), vec!["1"; vcpus as usize]);
    assert_eq!(hex_fields(&dsl, "Address"), [x86::IOAPIC]);
    // The I/O APIC's GSI base, then each override's GSI.
    assert_eq!(hex_fields(&dsl, "Interrupt"), [0, 2, 9]);
    assert_eq!(hex_fields(&dsl, "Source"), [0, 9]);
    assert_eq!(fields(&dsl, "Polarity"), ["0", "1"], "IRQ9 active high");
    assert_eq!(fields(&dsl, "Trigger Mode"), ["0", "3"], "IRQ9 level");
}

#[test]
fn x86_fadt_sleep_and_reset_registers() {
    let tables = x86_tables(1, 0);
    let dsl = iasl_decode(table(&tables, "FACP"));
    assert_text_fields(
        &dsl,
        &[
            ("Hardware Reduced (V5)", "1"),
            ("Reset Register Supported (V2)", "1"),
            ("VGA Not Present (V4)", "1"),
            ("MSI Not Supported (V4)", "0"),
            ("PSCI Compliant", "0"),
        ],
    );
    let lines: Vec<&str> = dsl.lines().collect();
    for (register, port) in [
        ("Reset Register", x86::ACPI_RESET),
        ("Sleep Control Register", x86::ACPI_SLEEP_CONTROL),
        ("Sleep Status Register", x86::ACPI_SLEEP_STATUS),
    ] {
        let heading = format!("{register} : [Generic Address Structure]");
        let at = lines
            .iter()
            .position(|l| l.contains(&heading))
            .unwrap_or_else(|| panic!("no {register} in\n{dsl}"));
        // The five GAS fields follow the heading.
        let block = lines[at + 1..at + 6].join("\n");
        assert_text_fields(
            &block,
            &[
                ("Space ID", "01 [SystemIO]"),
                ("Encoded Access Width", "01 [Byte Access:8]"),
            ],
        );
        let port = u64::from(port);
        assert_hex_fields(
            &block,
            &[("Bit Width", 8), ("Bit Offset", 0), ("Address", port)],
        );
    }
    let reset_value = u64::from(x86::ACPI_RESET_VALUE);
    assert_hex_fields(&dsl, &[("Value to cause reset", reset_value)]);
    assert_eq!(
        hex_fields(&dsl, "DSDT Address")[1],
        table(&tables, "DSDT").address
    );
}

#[test]
fn x86_dsdt_has_s5_and_com1() {
    let dsl = dsdt_asl(&x86_tables(1, 0));
    assert_contains_all(
        &dsl,
        &[
            "Name (\\_S5, Package (0x02) // _S5_: S5 System State { 0x05, Zero })",
            "Device (COM1) {",
            "Name (_HID, EisaId (\"PNP0501\")",
            "Name (_UID, Zero)",
            "IO (Decode16, 0x03F8, // Range Minimum 0x03F8, // Range Maximum 0x00, // Alignment 0x08, // Length )",
            "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) { 0x00000004, }",
            "\"clock-frequency\", 0x001C2000",
        ],
    );
    // Port I/O: no reg-io-width, which would make Linux treat the port as MMIO.
    assert!(!dsl.contains("reg-io-width"));
}

#[test]
fn s5_sleep_type_comes_from_the_platform() {
    let mut platform = x86_platform(1);
    if let PowerControl::AcpiPorts { s5_sleep_type, .. } = &mut platform.power {
        *s5_sleep_type = 7;
    }
    let dsl = dsdt_asl(&tables_of(&platform, x86::ACPI_TABLES).unwrap());
    assert_contains_all(&dsl, &["{ 0x07, Zero })"]);
}

#[test]
fn no_serial_means_no_spcr_and_no_uart_device() {
    let mut platform = aarch64_platform(2);
    platform.serial = None;
    let tables = tables_of(&platform, arm_region()).unwrap();
    let without_spcr: Vec<&str> = ARM_SIGNATURES
        .into_iter()
        .filter(|s| *s != "SPCR")
        .collect();
    assert_eq!(signatures(&tables), without_spcr);
    assert!(!dsdt_asl(&tables).contains("PNP0501"));

    let mut platform = x86_platform(2);
    platform.serial = None;
    let dsl = dsdt_asl(&tables_of(&platform, x86::ACPI_TABLES).unwrap());
    assert!(!dsl.contains("PNP0501") && dsl.contains("_S5"));
}

#[test]
fn exact_fit_and_one_byte_short() {
    let platform = aarch64_platform(8);
    let needed = tables_of(&platform, arm_region()).unwrap().extent().size;
    let base = arm_region().base;
    let fits = tables_of(&platform, GuestRange::new(base, needed)).unwrap();
    assert_eq!(fits.extent().size, needed);
    match tables_of(&platform, GuestRange::new(base, needed - 1)) {
        Err(AcpiError::RegionTooSmall { needed: n, .. }) => assert_eq!(n, needed),
        other => panic!("expected RegionTooSmall, got {other:?}"),
    }
}

#[test]
fn rejects_bad_regions() {
    let build_in = |base, size| tables_of(&x86_platform(1), GuestRange::new(base, size));
    assert!(matches!(
        build_in(0xe_0000, 0x40),
        Err(AcpiError::RegionTooSmall { .. })
    ));
    assert!(matches!(
        build_in(0xe_0008, 0x1_0000),
        Err(AcpiError::MisalignedRegion(0xe_0008))
    ));
    assert!(matches!(
        build_in(u64::MAX - 0xf, 0x1_0000),
        Err(AcpiError::RegionOverflow(_))
    ));
    assert!(matches!(
        build_in(u64::MAX - 0xff, 0x100),
        Err(AcpiError::RegionTooSmall { .. } | AcpiError::RegionOverflow(_))
    ));
}

#[test]
fn largest_guests_fit_their_regions() {
    let arm = tables_of(&aarch64_platform(arm::MAX_VCPUS), arm_region()).unwrap();
    assert!(arm.extent().size < 0x4000);
    let x = x86_tables(x86::MAX_VCPUS, 0);
    assert!(x.extent().end() <= x86::ACPI_TABLES.end());

    // And with the most PCI host bridges the address maps allow.
    let arm = arm_tables(arm::MAX_VCPUS, arm::MAX_PCI_BRIDGES as u16, &[]);
    assert!(arm.extent().end() <= arm_region().end());
    let x = x86_tables(x86::MAX_VCPUS, x86::MAX_PCI_BRIDGES as u16);
    let extent = x.extent();
    assert!(extent.end() <= x86::ACPI_TABLES.end(), "{extent:?}");
}

/// Every table's address and bytes, one digest.
fn digest(tables: &AcpiTables) -> (usize, u64) {
    let mut all = Vec::new();
    for t in &tables.tables {
        all.extend_from_slice(&t.address.to_le_bytes());
        all.extend_from_slice(&t.bytes);
    }
    (all.len(), fnv1a(&all))
}

#[test]
fn tables_are_byte_identical_to_before() {
    // Digests of what `build` produced for these platforms before PCI support (no bridges) and
    // before vSMMU support (bridges); update only for an intended change to those tables.
    for (tables, expected) in [
        (arm_tables(4, 0, &[]), (1286, 0x369c_cac6_d652_f649)),
        (x86_tables(4, 0), (736, 0x24c6_9d9d_569a_ac50)),
        (arm_tables(123, 0, &[]), (10806, 0xe4ce_34f1_c921_c91d)),
        (x86_tables(254, 0), (2736, 0xc2a7_8f37_53aa_f3aa)),
        (arm_tables(4, 1, &[]), (3324, 0x9aae_1649_c15c_8bcf)),
        (arm_tables(4, 3, &[]), (7229, 0x7d9d_c1b9_7c45_18d6)),
    ] {
        assert_eq!(digest(&tables), expected, "{:?}", signatures(&tables));
    }
    // The fixtures without bridges are the plain platforms; say so, so the above means something.
    assert!(aarch64_platform(4).pci_bridges.is_empty() && x86_platform(4).pci_bridges.is_empty());
    let plain_arm = tables_of(&aarch64_platform(4), arm_region()).unwrap();
    assert_eq!(arm_tables(4, 0, &[]), plain_arm);
    let plain_x86 = tables_of(&x86_platform(4), x86::ACPI_TABLES).unwrap();
    assert_eq!(x86_tables(4, 0), plain_x86);
}

#[test]
fn bridges_add_tables_and_leave_the_others_alone() {
    for n in [1, 3] {
        let tables = arm_tables(4, n, &[]);
        assert_eq!(
            signatures(&tables),
            [&ARM_SIGNATURES[..], &["IORT"]].concat()
        );
        let plain = arm_tables(4, 0, &[]);
        for sig in ["APIC", "GTDT", "SPCR"] {
            assert_eq!(table(&tables, sig).bytes, table(&plain, sig).bytes, "{sig}");
        }

        let tables = x86_tables(4, n);
        // No IORT on x86 (DMAR/IVRS are other issues' business).
        assert_eq!(signatures(&tables), X86_SIGNATURES);
        let plain = x86_tables(4, 0);
        assert_eq!(table(&tables, "APIC").bytes, table(&plain, "APIC").bytes);
    }
}

/// An AML integer as iasl prints it: `Zero`, `One`, `0x1F`.
fn aml_int(token: &str) -> u64 {
    match token {
        "Zero" => 0,
        "One" => 1,
        _ => hex(token.trim_start_matches("0x")),
    }
}

/// The squashed ASL of `Device (name)` up to the next device or the end of its scope.
fn device_block<'a>(dsl: &'a str, name: &str) -> &'a str {
    let start = dsl
        .find(&format!("Device ({name})"))
        .unwrap_or_else(|| panic!("no Device ({name}) in\n{dsl}"));
    let rest = &dsl[start + 1..];
    let end = rest.find("Device (").unwrap_or(rest.len());
    &dsl[start..start + 1 + end]
}

/// The `_PRT` entries of a squashed device block: (address, pin, source, GSI).
fn prt_entries(block: &str) -> Vec<(u64, u64, u64, u64)> {
    let head = "Name (_PRT, Package (0x80) // _PRT: PCI Routing Table {";
    let start = block
        .find(head)
        .unwrap_or_else(|| panic!("no _PRT in {block}"))
        + head.len();
    let mut entries = Vec::new();
    let mut rest = &block[start..];
    while let Some(open) = rest.find('{') {
        // The package ends at the first "})" before the next entry.
        if rest[..open].contains("})") {
            break;
        }
        let close = open + rest[open..].find('}').unwrap();
        let values: Vec<u64> = rest[open + 1..close]
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(aml_int)
            .collect();
        assert_eq!(values.len(), 4, "{}", &rest[open..=close]);
        entries.push((values[0], values[1], values[2], values[3]));
        rest = &rest[close + 1..];
    }
    entries
}

/// Everything one `PNP0A08` device must say about `bridge`, with `gsis` its INTA..INTD.
fn check_root_bridge(dsl: &str, bridge: &PciBridge, gsis: [u32; 4], cca: bool) {
    let name = format!("PC{:02X}", bridge.segment);
    let block = device_block(dsl, &name);
    let int = |v: u64| match v {
        0 => "Zero".to_owned(),
        1 => "One".to_owned(),
        _ => format!("0x{v:02X}"),
    };
    let (m32, m64) = (bridge.mmio32, bridge.mmio64);
    let expected = [
        "Name (_HID, EisaId (\"PNP0A08\") /* PCI Express Bus */)".to_owned(),
        "Name (_CID, EisaId (\"PNP0A03\") /* PCI Bus */)".to_owned(),
        format!("Name (_SEG, {})", int(bridge.segment.into())),
        format!("Name (_BBN, {})", int(bridge.bus_start.into())),
        format!("Name (_UID, {})", int(bridge.segment.into())),
        format!(
            "WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode, 0x0000, // Granularity \
             0x{:04X}, // Range Minimum 0x{:04X}, // Range Maximum 0x0000, // Translation Offset \
             0x{:04X}, // Length ,, )",
            bridge.bus_start,
            bridge.bus_end,
            u32::from(bridge.bus_end - bridge.bus_start) + 1
        ),
        format!(
            "DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite, \
             0x00000000, // Granularity 0x{:08X}, // Range Minimum 0x{:08X}, // Range Maximum \
             0x00000000, // Translation Offset 0x{:08X}, // Length ,, , AddressRangeMemory, TypeStatic)",
            m32.base,
            m32.end() - 1,
            m32.size
        ),
        format!(
            "QWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, Prefetchable, ReadWrite, \
             0x0000000000000000, // Granularity 0x{:016X}, // Range Minimum 0x{:016X}, // Range Maximum \
             0x0000000000000000, // Translation Offset 0x{:016X}, // Length ,, , AddressRangeMemory, TypeStatic)",
            m64.base,
            m64.end() - 1,
            m64.size
        ),
        "Method (_OSC, 4, NotSerialized)".to_owned(),
        "ToUUID (\"33db4d5b-1ff7-401c-9657-7441c03dd766\")".to_owned(),
        "Local0 &= 0x1F".to_owned(),
    ];
    assert_contains_all(block, &expected.each_ref().map(String::as_str));
    assert_eq!(block.contains("Name (_CCA, One)"), cca, "{block}");
    // Exactly three resources: no I/O window.
    assert!(!block.contains("WordIO") && !block.contains("IO (Decode16"));

    // Every slot and pin (0 = INTA) once, any function, link-less, the swizzled line's GSI.
    let expected: Vec<_> = (0..32u64)
        .flat_map(|slot| (0..4u64).map(move |pin| (slot, pin)))
        .map(|(slot, pin)| {
            let gsi = gsis[((slot + pin) % 4) as usize];
            ((slot << 16) | 0xffff, pin, 0, u64::from(gsi))
        })
        .collect();
    assert_eq!(prt_entries(block), expected, "{name}");
}

#[test]
fn x86_dsdt_has_root_bridges_and_reserves_ecam() {
    for n in [1, 3] {
        let platform = x86_pci_platform(2, n);
        let dsl = dsdt_asl(&tables_of(&platform, x86::ACPI_TABLES).unwrap());
        assert_eq!(dsl.matches("\"PNP0A08\"").count(), usize::from(n));
        assert!(dsl.contains("Device (COM1)") && dsl.contains("_S5"));
        for bridge in &platform.pci_bridges {
            // GSI = I/O APIC pin.
            check_root_bridge(&dsl, bridge, bridge.intx, false);
        }
        // One PNP0C02 whose _CRS covers exactly the ECAM windows.
        assert_eq!(dsl.matches("\"PNP0C02\"").count(), 1);
        let mbrd = device_block(&dsl, "MBRD");
        assert_contains_all(mbrd, &["Name (_HID, EisaId (\"PNP0C02\")"]);
        let ranges: Vec<(u64, u64)> = mbrd
            .split("Memory32Fixed (ReadWrite, ")
            .skip(1)
            .map(|r| {
                let v: Vec<&str> = r.split(", // ").collect();
                let size = v[1].split(' ').nth(2).unwrap();
                (aml_int(v[0]), aml_int(size))
            })
            .collect();
        let expected: Vec<(u64, u64)> = platform
            .pci_bridges
            .iter()
            .map(|b| (b.ecam.base, b.ecam.size))
            .collect();
        assert_eq!(ranges, expected, "{mbrd}");
    }
}

#[test]
fn ecam_above_4g_would_be_a_qword_range() {
    // The check refuses it for x86 (its tests); the reservation itself can say it, should
    // another architecture want one.
    let mut bridges = x86_pci_bridges(1);
    bridges[0].ecam.base = 0x10_0000_0000;
    let aml = pci::ecam_reservation(&bridges).unwrap();
    let dsdt = unplaced(encode::table(*b"DSDT", 2, &encode::system_bus(&[aml]).0));
    let dsl = squash(&iasl_decode(&dsdt));
    let mbrd = device_block(&dsl, "MBRD");
    assert!(!mbrd.contains("Memory32Fixed"), "{mbrd}");
    let qword = "0x0000001000000000, // Range Minimum 0x0000001000FFFFFF, // Range Maximum";
    assert_contains_all(mbrd, &[qword]);
}

#[test]
fn mcfg_has_an_entry_per_bridge() {
    for (tables, bridges) in [
        (arm_tables(1, 1, &[]), aarch64_pci_bridges(1)),
        (arm_tables(1, 3, &[]), aarch64_pci_bridges(3)),
        (x86_tables(1, 3), x86_pci_bridges(3)),
    ] {
        let mcfg = table(&tables, "MCFG");
        assert_eq!(mcfg.bytes.len(), 44 + 16 * bridges.len());
        let dsl = iasl_decode(mcfg);
        let each = |f: fn(&PciBridge) -> u64| bridges.iter().map(f).collect::<Vec<_>>();
        // The MCFG base is bus 0's address: the window starts at bus_start's.
        let bus0 = each(|b| b.ecam.base - (u64::from(b.bus_start) << 20));
        assert_eq!(hex_fields(&dsl, "Base Address"), bus0);
        let segments = each(|b| b.segment.into());
        assert_eq!(hex_fields(&dsl, "Segment Group Number"), segments);
        assert_eq!(
            hex_fields(&dsl, "Start Bus Number"),
            each(|b| b.bus_start.into())
        );
        assert_eq!(
            hex_fields(&dsl, "End Bus Number"),
            each(|b| b.bus_end.into())
        );
    }
    // The fixtures do exercise a non-zero start bus.
    assert_eq!(aarch64_pci_bridges(3)[1].bus_start, 0x10);
}

#[test]
fn x86_e820_reserves_the_ecam_windows() {
    use crate::x86_64::boot::{E820_RESERVED, e820_map};
    let plain = e820_map(&x86_platform(1)).unwrap();
    let platform = x86_pci_platform(1, 3);
    let with_pci = e820_map(&platform).unwrap();
    let added: Vec<_> = with_pci
        .iter()
        .filter(|e| !plain.contains(e))
        .map(|e| (e.range(), { e.kind }))
        .collect();
    let expected: Vec<_> = platform
        .pci_bridges
        .iter()
        .map(|b| (b.ecam, E820_RESERVED))
        .collect();
    assert_eq!(added, expected);
    assert_eq!(with_pci.len(), plain.len() + 3);
    // Still sorted.
    assert!(with_pci.windows(2).all(|w| w[0].addr < w[1].addr));
}

// The IORT, read from the bytes without the encoder's help.

/// An IORT ID mapping as the bytes have it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RawMapping {
    input: u32,
    count_minus_one: u32,
    output: u32,
    reference: u32,
    flags: u32,
}

/// One IORT node as the bytes have it.
#[derive(Debug)]
struct RawNode {
    offset: usize,
    kind: u8,
    len: usize,
    revision: u8,
    id: u32,
    mappings: Vec<RawMapping>,
}

/// The nodes of an IORT, following the node offset and each node's length; they must tile the
/// table exactly.
fn iort_nodes(bytes: &[u8]) -> Vec<RawNode> {
    let count = u32_at(bytes, 36) as usize;
    let mut offset = u32_at(bytes, 40) as usize;
    let mut nodes = Vec::new();
    for _ in 0..count {
        let len = usize::from(u16_at(bytes, offset + 1));
        let mapping_count = u32_at(bytes, offset + 8) as usize;
        let mapping_offset = u32_at(bytes, offset + 12) as usize;
        assert!(mapping_count == 0 || mapping_offset >= 16);
        let mappings = (0..mapping_count)
            .map(|i| {
                let at = offset + mapping_offset + 20 * i;
                assert!(
                    at + 20 <= offset + len,
                    "mapping {i} outside node {offset:#x}"
                );
                let [input, count_minus_one, output, reference, flags] =
                    std::array::from_fn(|k| u32_at(bytes, at + 4 * k));
                RawMapping {
                    input,
                    count_minus_one,
                    output,
                    reference,
                    flags,
                }
            })
            .collect();
        nodes.push(RawNode {
            offset,
            kind: bytes[offset],
            len,
            revision: bytes[offset + 3],
            id: u32_at(bytes, offset + 4),
            mappings,
        });
        offset += len;
    }
    assert_eq!(offset, bytes.len(), "the nodes end where the table does");
    nodes
}

/// What Linux's `iort_node_map_id` makes of ID `id` entering `start`: the first node of a type
/// in `stop` and the ID there. Like Linux it skips an SMMUv3 node's DeviceID mapping, which a
/// revision < 5 node has unless all four GSIVs are non-zero.
fn linux_map(
    bytes: &[u8],
    nodes: &[RawNode],
    start: usize,
    id: u32,
    stop: &[u8],
) -> (u8, usize, u32) {
    let by_offset = |offset: usize| nodes.iter().find(|n| n.offset == offset).unwrap();
    let mut node = by_offset(start);
    let mut id = id;
    for _ in 0..nodes.len() {
        if stop.contains(&node.kind) {
            return (node.kind, node.offset, id);
        }
        let skip = if node.kind == 4 && node.revision < 5 {
            let gsivs = (0..4).map(|k| u32_at(bytes, node.offset + 44 + 4 * k));
            let all_wired = gsivs.into_iter().all(|g| g != 0);
            (!all_wired).then(|| u32_at(bytes, node.offset + 64) as usize)
        } else {
            None
        };
        let hit = node
            .mappings
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != skip)
            .map(|(_, m)| m)
            .find(|m| id >= m.input && id - m.input <= m.count_minus_one)
            .unwrap_or_else(|| panic!("ID {id:#x} unmapped at node {:#x}", node.offset));
        id = hit.output + (id - hit.input);
        node = by_offset(hit.reference as usize);
    }
    panic!("IORT mapping loop");
}

/// The PCI configurations the IORT and DSDT tests run: (bridges, segments with a vSMMUv3).
const PCI_CASES: [(u16, &[u16]); 6] = [
    (1, &[]),
    (3, &[]),
    (1, &[0]),
    (3, &[0, 1, 2]),
    (2, &[0]),
    (2, &[1]),
];

#[test]
fn iort_routes_each_bridge_to_the_its_through_its_vsmmu() {
    for (bridges, segments) in PCI_CASES {
        let p = aarch64_smmu_platform(2, bridges, segments);
        let tables = tables_of(&p, arm_region()).unwrap();
        let iort = table(&tables, "IORT");
        let bytes = &iort.bytes;
        let nodes = iort_nodes(bytes);
        let what = format!("{bridges} bridges, vSMMUs on {segments:?}");
        let (s, b) = (segments.len(), usize::from(bridges));

        assert_eq!(bytes[8], 5, "{what}: table revision 5 (E.d)");
        // ITS group, the SMMUv3s in index order, the root complexes, the RMRs.
        let kinds: Vec<u8> = nodes.iter().map(|n| n.kind).collect();
        let expected = [vec![0], vec![4; s], vec![2; b], vec![6; s]].concat();
        assert_eq!(kinds, expected, "{what}");
        let revisions: Vec<u8> = nodes.iter().map(|n| n.revision).collect();
        let expected = [vec![1], vec![4; s], vec![3; b], vec![3; s]].concat();
        assert_eq!(revisions, expected, "{what}");
        let ids: Vec<u32> = nodes.iter().map(|n| n.id).collect();
        assert_eq!(ids, (0..nodes.len() as u32).collect::<Vec<_>>(), "{what}");
        let its = &nodes[0];
        assert_eq!((its.offset, its.len, its.mappings.len()), (0x30, 24, 0));
        let smmus: Vec<&RawNode> = nodes.iter().filter(|n| n.kind == 4).collect();
        let rcs: Vec<&RawNode> = nodes.iter().filter(|n| n.kind == 2).collect();

        // Each SMMU maps the bridge's RID span at StreamID = RID onto the device IDs it has
        // without an SMMU; each RC maps its RIDs to its SMMU (StreamID = RID) or to the ITS.
        let mut want = Vec::new();
        for (smmu, node) in p.smmus.iter().zip(&smmus) {
            assert_eq!(node.len, 16 + 52 + 20, "{what}");
            let bridge = &p.pci_bridges[usize::from(smmu.segment)];
            let (rid_base, rid_count) = bridge.rid_span();
            let to_its = RawMapping {
                input: rid_base,
                count_minus_one: rid_count - 1,
                output: bridge.msi_base,
                reference: 0x30,
                flags: 0,
            };
            assert_eq!(node.mappings, [to_its], "{what}: vSMMU {}", smmu.index);
            want.push(to_its);
        }
        for (bridge, rc) in p.pci_bridges.iter().zip(&rcs) {
            assert_eq!(rc.len, 36 + 20, "{what}");
            let (rid_base, rid_count) = bridge.rid_span();
            assert_eq!(u32_at(bytes, rc.offset + 28), u32::from(bridge.segment));
            let (output, reference) = match p.smmus.iter().position(|v| v.segment == bridge.segment)
            {
                Some(i) => (rid_base, smmus[i].offset as u32),
                None => (bridge.msi_base, 0x30),
            };
            let to = RawMapping {
                input: rid_base,
                count_minus_one: rid_count - 1,
                output,
                reference,
                flags: 0,
            };
            assert_eq!(rc.mappings, [to], "{what}: segment {}", bridge.segment);
            want.push(to);
        }

        // iasl decodes every node but the RMRs' bodies, and agrees.
        let dsl = iasl_decode_iort_skipping_rmr(iort, s);
        let all = |name| hex_fields(&dsl, name);
        let each =
            |f: fn(&RawMapping) -> u32| -> Vec<u64> { want.iter().map(|m| f(m).into()).collect() };
        let node_count = (1 + 2 * s + b) as u64;
        assert_hex_fields(&dsl, &[("Node Count", node_count), ("Node Offset", 0x30)]);
        assert_eq!(
            all("Type"),
            kinds.iter().map(|&k| k.into()).collect::<Vec<u64>>()
        );
        // The table's revision, then each node's.
        let revisions = [5].into_iter().chain(revisions.iter().map(|&r| r.into()));
        assert_eq!(all("Revision"), revisions.collect::<Vec<u64>>(), "{what}");
        let lengths: Vec<u64> = nodes.iter().map(|n| n.len as u64).collect();
        assert_eq!(all("Length"), lengths);
        let counts: Vec<u64> = nodes.iter().map(|n| n.mappings.len() as u64).collect();
        assert_eq!(all("Mapping Count"), counts);
        assert_eq!(all("Input base"), each(|m| m.input), "{what}");
        assert_eq!(
            all("ID Count"),
            each(|m| m.count_minus_one),
            "count minus one"
        );
        assert_eq!(all("Output Base"), each(|m| m.output), "{what}");
        assert_eq!(all("Output Reference"), each(|m| m.reference), "{what}");
        assert_eq!(all("Single Mapping"), each(|_| 0), "{what}");
        // The ITS group holds the MADT's one ITS.
        assert_eq!(all("ItsCount"), [1]);
        let madt = iasl_decode(table(&tables, "APIC"));
        assert_eq!(all("Identifiers"), [hex(&field(&madt, "Translation ID"))]);
        // Each root complex: its segment, coherent, no ATS, 64-bit DMA.
        let segments: Vec<u64> = p.pci_bridges.iter().map(|b| b.segment.into()).collect();
        assert_eq!(all("PCI Segment Number"), segments, "{what}");
        assert_eq!(all("Cache Coherency"), vec![1; b]);
        assert_eq!(all("Memory Flags (decoded below)"), vec![3; b]);
        assert_eq!(all("ATS Attribute"), vec![0; b]);
        assert_eq!(all("Memory Size Limit"), vec![64; b]);
        // Each SMMUv3: its registers, wired GSIVs (PRI repeats the event queue's), coherent.
        let by = |f: fn(&crate::platform::VirtualSmmu) -> u64| -> Vec<u64> {
            p.smmus.iter().map(f).collect()
        };
        fn gsiv(spi: u32) -> u64 {
            u64::from(spi + 32)
        }
        assert_eq!(all("Base Address"), by(|v| v.registers.base), "{what}");
        assert_eq!(all("Event GSIV"), by(|v| gsiv(v.event_irq)));
        assert_eq!(all("PRI GSIV"), by(|v| gsiv(v.event_irq)));
        assert_eq!(all("GERR GSIV"), by(|v| gsiv(v.gerror_irq)));
        assert_eq!(all("Sync GSIV"), by(|v| gsiv(v.sync_irq)));
        for (name, value) in [
            ("Model", 0),
            ("COHACC Override", 1),
            ("HTTU Override", 0),
            ("Proximity Domain Valid", 0),
            ("VATOS Address", 0),
            ("Device ID Mapping Index", 0),
        ] {
            assert_eq!(all(name), vec![value; s], "{what}: {name}");
        }

        // As Linux walks it: every function reaches its vSMMU with StreamID = RID and the ITS
        // with the device ID the plan gave it (KVM routes MSIs by that ID).
        for (bridge, rc) in p.pci_bridges.iter().zip(&rcs) {
            let smmu = p.smmus.iter().position(|v| v.segment == bridge.segment);
            for f in &bridge.functions {
                let rid = u32::from(f.rid);
                let msi = linux_map(bytes, &nodes, rc.offset, rid, &[0]);
                assert_eq!(msi, (0, 0x30, f.msi_device_id), "{what}: {}", f.label);
                let iommu = linux_map(bytes, &nodes, rc.offset, rid, &[0, 4]);
                match smmu {
                    Some(i) => assert_eq!(iommu, (4, smmus[i].offset, rid), "{what}"),
                    None => assert_eq!(iommu.0, 0, "{what}: no SMMU on the way"),
                }
            }
        }

        // RMR: the host MSI window for exactly the functions' StreamIDs at their vSMMU.
        let rmrs: Vec<&RawNode> = nodes.iter().filter(|n| n.kind == 6).collect();
        for (smmu, rmr) in p.smmus.iter().zip(&rmrs) {
            let at = rmr.offset;
            let bridge = &p.pci_bridges[usize::from(smmu.segment)];
            let target = smmus[usize::from(smmu.index)].offset as u32;
            // Flags: Device-nGnRE, no remap, unprivileged; one memory range descriptor.
            assert_eq!(
                (u32_at(bytes, at + 16), u32_at(bytes, at + 20)),
                (1 << 2, 1)
            );
            assert_eq!(
                u32_at(bytes, at + 12),
                28,
                "mappings after the 12-byte body"
            );
            let descriptors = u32_at(bytes, at + 24) as usize;
            assert_eq!(descriptors, 28 + 20 * rmr.mappings.len());
            assert_eq!(rmr.len, descriptors + 20, "{what}");
            let d = at + descriptors;
            let range = (
                u64_at(bytes, d),
                u64_at(bytes, d + 8),
                u32_at(bytes, d + 16),
            );
            assert_eq!(
                range,
                (0x800_0000, 0x10_0000, 0),
                "{what}: the host MSI window"
            );
            let window = (smmu.msi_window.base, smmu.msi_window.size);
            assert_eq!(window, (0x800_0000, 0x10_0000));
            let mut sids: Vec<u32> = Vec::new();
            for m in &rmr.mappings {
                let expected = (m.output, target, 0);
                assert_eq!((m.input, m.reference, m.flags), expected, "{what}");
                sids.extend(m.output..=m.output + m.count_minus_one);
            }
            let rids: Vec<u32> = bridge.functions.iter().map(|f| u32::from(f.rid)).collect();
            assert_eq!(sids, rids, "{what}");
        }
    }
}

#[test]
fn rmr_merges_consecutive_stream_ids() {
    // Functions 0 and 1 of device 0 are one mapping; device 5 another.
    let mut p = aarch64_smmu_platform(1, 1, &[0]);
    let mut f1 = p.pci_bridges[0].functions[0].clone();
    f1.function = 1;
    f1.rid += 1;
    f1.msi_device_id += 1;
    p.pci_bridges[0].functions.insert(1, f1);
    let tables = tables_of(&p, arm_region()).unwrap();
    let nodes = iort_nodes(&table(&tables, "IORT").bytes);
    let rmr = nodes.iter().find(|n| n.kind == 6).unwrap();
    let runs: Vec<(u32, u32)> = rmr
        .mappings
        .iter()
        .map(|m| (m.output, m.count_minus_one))
        .collect();
    assert_eq!(runs, [(0, 1), (0x28, 0)]);

    // A vSMMU in front of a bridge without functions gets no RMR (Linux would reject it).
    let mut p = aarch64_smmu_platform(1, 1, &[0]);
    p.pci_bridges[0].functions.clear();
    let tables = tables_of(&p, arm_region()).unwrap();
    let nodes = iort_nodes(&table(&tables, "IORT").bytes);
    assert_eq!(nodes.iter().map(|n| n.kind).collect::<Vec<_>>(), [0, 4, 2]);
}

#[test]
fn aarch64_dsdt_has_a_root_bridge_per_segment_preserving_those_behind_a_vsmmu() {
    for (bridges, segments) in PCI_CASES {
        let p = aarch64_smmu_platform(2, bridges, segments);
        let dsl = dsdt_asl(&tables_of(&p, arm_region()).unwrap());
        assert_eq!(dsl.matches("\"PNP0A08\"").count(), usize::from(bridges));
        assert_eq!(dsl.matches("\"PNP0A03\"").count(), usize::from(bridges));
        // The UART stays, and no ECAM reservation device on Arm.
        assert!(dsl.contains("Device (COM0)") && !dsl.contains("PNP0C02"));
        for bridge in &p.pci_bridges {
            let block = device_block(&dsl, &format!("PC{:02X}", bridge.segment));
            let behind = segments.contains(&bridge.segment);
            let segment = bridge.segment;
            assert_eq!(
                block.contains("_DSM"),
                behind,
                "segment {segment}:\n{block}"
            );
            if behind {
                assert_contains_all(
                    block,
                    &[
                        "Method (_DSM, 4, NotSerialized)",
                        "If ((Arg0 == ToUUID (\"e5c937d0-3553-4d7a-9117-ea4d19c3434d\")",
                        "If ((Arg2 == Zero)) { Return (Buffer (One) { 0x21",
                        "If ((Arg2 == 0x05)) { Return (Zero) }",
                    ],
                );
            }
            // Everything else about the bridge is as without a vSMMU; GSIV = SPI + 32.
            check_root_bridge(&dsl, bridge, bridge.intx.map(|spi| spi + 32), true);
        }
    }
}

#[test]
fn vsmmus_change_only_the_iort_and_the_dsdt() {
    for (bridges, segments) in PCI_CASES {
        let with = arm_tables(2, bridges, segments);
        let without = arm_tables(2, bridges, &[]);
        assert_eq!(signatures(&with), signatures(&without));
        for sig in ["APIC", "GTDT", "SPCR", "MCFG"] {
            assert_eq!(table(&with, sig).bytes, table(&without, sig).bytes, "{sig}");
        }
    }
}

// The IORT builder itself.

fn mapping(input_base: u32, count: u32, output_base: u32, output: NodeRef) -> IdMapping {
    IdMapping {
        input_base,
        count,
        output_base,
        output,
    }
}

#[test]
fn iort_builder_resolves_references_to_offsets() {
    // A second ITS group between two root complexes: references follow the node, not the index.
    let mut iort = Iort::new();
    let rc = |output, output_base| Node::RootComplex {
        segment: 7,
        ats: 0,
        mappings: vec![mapping(0x100, 0x200, output_base, output)],
    };
    let first = iort.add(Node::ItsGroup { its_ids: vec![0] });
    iort.add(rc(first, 0x10));
    let second = iort.add(Node::ItsGroup {
        its_ids: vec![1, 2],
    });
    iort.add(rc(second, 0x20));
    let bytes = iort.encode().bytes;
    assert_eq!(checksum(&bytes), 0);
    // Nodes at 48 (24 bytes), 72 (56), 128 (28), 156 (56).
    assert_eq!(bytes.len(), 156 + 56);
    for (rc_at, target) in [(72, 48), (156, 128)] {
        let mapping = rc_at + 36;
        assert_eq!(u32_at(&bytes, mapping), 0x100, "input base");
        assert_eq!(u32_at(&bytes, mapping + 4), 0x1ff, "count minus one");
        assert_eq!(u32_at(&bytes, mapping + 12), target, "output reference");
        assert_eq!(bytes[target as usize], 0, "an ITS group");
    }
    assert_eq!(u32_at(&bytes, 128 + 16), 2, "second group's ITS count");
    // Identifiers are the node indices.
    assert_eq!(u32_at(&bytes, 156 + 4), 3);
}

#[test]
#[should_panic(expected = "not yet added")]
fn iort_builder_refuses_dangling_references() {
    let mut other = Iort::new();
    other.add(Node::ItsGroup { its_ids: vec![0] });
    let elsewhere = other.add(Node::ItsGroup { its_ids: vec![1] });
    Iort::new().add(Node::RootComplex {
        segment: 0,
        ats: 0,
        mappings: vec![mapping(0, 1, 0, elsewhere)],
    });
}

#[test]
fn iort_builder_lays_out_rmr_descriptors_after_the_mappings() {
    let mut iort = Iort::new();
    let its = iort.add(Node::ItsGroup { its_ids: vec![0] });
    let smmu = iort.add(Node::Smmuv3 {
        base: 0x1234_0000,
        flags: 1,
        event_gsiv: 40,
        pri_gsiv: 41,
        gerror_gsiv: 42,
        sync_gsiv: 43,
        mappings: vec![mapping(0, 0x100, 0x500, its)],
    });
    let one = |sid| mapping(sid, 1, sid, smmu);
    iort.add(Node::Rmr {
        flags: 0x4,
        ranges: vec![(0x800_0000, 0x10_0000), (0x900_0000, 0x2_0000)],
        mappings: vec![one(3), one(9), one(12)],
    });
    let bytes = iort.encode().bytes;
    assert_eq!(checksum(&bytes), 0);
    // ITS group at 48 (24 bytes), SMMUv3 at 72 (88), RMR at 160: 28 + 3 * 20 + 2 * 20.
    let rmr = 160;
    assert_eq!(bytes.len(), rmr + 128);
    let header = (bytes[rmr], u16_at(&bytes, rmr + 1), bytes[rmr + 3]);
    assert_eq!(header, (6, 128, 3));
    for (at, value, what) in [
        (rmr + 8, 3, "mapping count"),
        (rmr + 12, 28, "mapping offset"),
        (rmr + 16, 4, "flags"),
        (rmr + 20, 2, "descriptor count"),
        (rmr + 24, 88, "descriptor offset"),
        (rmr + 28 + 20 + 8, 9, "second mapping's output"),
        (rmr + 28 + 20 + 12, 72, "references the SMMUv3"),
        (72 + 12, 68, "SMMUv3 mappings after the 52-byte body"),
    ] {
        assert_eq!(u32_at(&bytes, at), value, "{what}");
    }
    assert_eq!(
        u64_at(&bytes, rmr + 88 + 20),
        0x900_0000,
        "second descriptor"
    );
    assert_eq!(u64_at(&bytes, rmr + 88 + 28), 0x2_0000);
    // The SMMUv3 body: base, flags, GSIVs in E.d order, DeviceID mapping index 0.
    assert_eq!(u64_at(&bytes, 72 + 16), 0x1234_0000);
    let gsivs: Vec<u32> = (0..4).map(|k| u32_at(&bytes, 72 + 44 + 4 * k)).collect();
    assert_eq!(gsivs, [40, 41, 42, 43]);
}

#[test]
#[should_panic(expected = "needs ranges and streams")]
fn iort_builder_refuses_an_rmr_without_streams() {
    Iort::new().add(Node::Rmr {
        flags: 0,
        ranges: vec![(0, 0x1_0000)],
        mappings: Vec::new(),
    });
}

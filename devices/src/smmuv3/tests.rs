//! The vSMMUv3 model driven the way Linux's arm-smmu-v3 driver drives it, against the fake
//! backend and real (anonymous) guest memory. Expected register values are spelled out as
//! numbers from the spec, not computed with the model's own accessors.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::cd::{ContextDescriptor, cd_address};
use super::command::{Command, opcode};
use super::fake::{FakeBackend, FakeInterrupts};
use super::regs::offset::*;
use super::ste::{CdTableFormat, DefaultSubstream, Ste, SteConfig};
use super::*;
use crate::bus::BusDevice;
use crate::pci::MsiMessage;
use crate::testutil::XorShift;

const RAM: u64 = 0x8000_0000;
const RAM_SIZE: usize = 0x40_0000;
const STRTAB: u64 = RAM + 0x1_0000;
const CMDQ: u64 = RAM + 0x10_0000;
const EVTQ: u64 = RAM + 0x11_0000;
const CD: u64 = RAM + 0x20_0000;
const SCRATCH: u64 = RAM + 0x30_0000;
const DOORBELL: u64 = 0x0809_0040;
/// Log2 of the queues `boot` sets up.
const CMDQ_LOG2: u32 = 8;
const EVTQ_LOG2: u32 = 4;

fn features() -> SmmuFeatures {
    SmmuFeatures {
        two_level_stream_table: true,
        sid_bits: 16,
        ssid_bits: 5,
        oas_bits: 48,
        granule_4k: true,
        granule_16k: false,
        granule_64k: true,
        range_invalidation: true,
        asid16: true,
        two_level_cd_table: true,
        repeat_tlbi_cfgi: false,
        stall_model: 1,
    }
}

struct Harness {
    dev: Smmuv3,
    backend: FakeBackend,
    irqs: FakeInterrupts,
    mem: GuestMemoryMmap,
    /// The next command slot (PROD with wrap).
    prod: u32,
}

impl Harness {
    fn new(features: SmmuFeatures) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(RAM), RAM_SIZE)]).unwrap();
        let backend = FakeBackend::default();
        let irqs = FakeInterrupts::default();
        irqs.state().doorbell = Some((DOORBELL, 4));
        let dev = Smmuv3::new(
            features,
            Box::new(mem.clone()),
            Box::new(backend.clone()),
            Box::new(irqs.clone()),
        )
        .unwrap();
        Harness {
            dev,
            backend,
            irqs,
            mem,
            prod: 0,
        }
    }

    /// Booted, with devices behind `streams`.
    fn booted(streams: &[u32]) -> Self {
        let mut h = Harness::new(features());
        for &sid in streams {
            h.dev.add_stream(sid).unwrap();
        }
        h.boot();
        h
    }

    fn w32(&mut self, off: u64, value: u32) {
        self.dev.write(off, &value.to_le_bytes());
    }
    fn w64(&mut self, off: u64, value: u64) {
        self.dev.write(off, &value.to_le_bytes());
    }
    fn r32(&mut self, off: u64) -> u32 {
        let mut data = [0u8; 4];
        self.dev.read(off, &mut data);
        u32::from_le_bytes(data)
    }
    fn r64(&mut self, off: u64) -> u64 {
        let mut data = [0u8; 8];
        self.dev.read(off, &mut data);
        u64::from_le_bytes(data)
    }
    fn mem_u64(&self, address: u64) -> u64 {
        self.mem.read_obj(GuestAddress(address)).unwrap()
    }
    fn set_mem(&self, address: u64, words: &[u64]) {
        for (i, word) in words.iter().enumerate() {
            self.mem
                .write_obj(*word, GuestAddress(address + 8 * i as u64))
                .unwrap();
        }
    }

    /// Linux's arm_smmu_device_reset with a linear stream table of 2^8 entries.
    fn boot(&mut self) {
        self.w32(CR0, 0);
        self.w32(CR1, 0xd75);
        self.w32(CR2, 0x6);
        self.w64(STRTAB_BASE, STRTAB | 1 << 62);
        self.w32(STRTAB_BASE_CFG, 8);
        self.w64(CMDQ_BASE, CMDQ | 1 << 62 | u64::from(CMDQ_LOG2));
        self.w32(CMDQ_PROD, 0);
        self.w32(CMDQ_CONS, 0);
        self.w32(CR0, 0x8);
        self.w64(EVENTQ_BASE, EVTQ | 1 << 62 | u64::from(EVTQ_LOG2));
        self.w32(0x1_00a8, 0);
        self.w32(0x1_00ac, 0);
        self.w32(CR0, 0xc);
        self.w32(IRQ_CTRL, 0x5);
        self.w32(CR0, 0xd);
        assert_eq!(self.r32(CR0ACK), 0xd);
    }

    /// Writes commands at PROD and publishes them with one CMDQ_PROD write.
    fn commands(&mut self, commands: &[[u64; 2]]) {
        let entries = 1 << CMDQ_LOG2;
        for command in commands {
            let index = u64::from(self.prod & (entries - 1));
            self.set_mem(CMDQ + 16 * index, command);
            self.prod = (self.prod + 1) & (2 * entries - 1);
        }
        let prod = self.prod;
        self.w32(CMDQ_PROD, prod);
    }

    /// The raw entries of every `invalidate` call, one list per call.
    fn invalidations(&self) -> Vec<Vec<[u64; 2]>> {
        let state = self.backend.state();
        let raw = |batch: &Vec<Invalidation>| batch.iter().map(Invalidation::raw).collect();
        state.invalidate_calls.iter().map(raw).collect()
    }

    /// Queues a batch for the backend's next `read_events`.
    fn host_events(&self, events: impl IntoIterator<Item = [u64; 4]>, lost: bool) {
        let events = events.into_iter().collect();
        let batch = EventBatch { events, lost };
        self.backend.state().queued_events.push_back(batch);
    }

    fn events(&self, from: u32, count: u32) -> Vec<[u64; 4]> {
        (from..from + count)
            .map(|i| {
                let at = EVTQ + 32 * u64::from(i % (1 << EVTQ_LOG2));
                [0, 8, 16, 24].map(|o| self.mem_u64(at + o))
            })
            .collect()
    }
}

fn doorbell(data: u32) -> MsiMessage {
    MsiMessage {
        address: DOORBELL,
        data,
    }
}

fn sync() -> [u64; 2] {
    [0x46, 0]
}
fn cfgi_ste(sid: u32) -> [u64; 2] {
    [0x03 | u64::from(sid) << 32, 0]
}
fn tlbi_nh_va(asid: u16, va: u64) -> [u64; 2] {
    [0x12 | u64::from(asid) << 48, va | 1]
}
fn tlbi_nh_asid(asid: u16) -> [u64; 2] {
    [0x11 | u64::from(asid) << 48, 0]
}
fn cfgi_cd(sid: u32, ssid: u32) -> [u64; 2] {
    [0x05 | u64::from(ssid) << 12 | u64::from(sid) << 32, 1]
}
fn atc_inv(sid: u32) -> [u64; 2] {
    [0x40 | u64::from(sid) << 32, 52]
}

/// A stage-1 STE (Cfg 0b101) with CD table at `CD`, S1CDMax `cd_max`, S1DSS 0b10, S1CIR/COR
/// WBRA, S1CSH ISH, plus bits the kernel refuses (STRW, SHCFG, MEV, words 2-7).
fn s1_ste(cd_max: u64) -> [u64; 8] {
    let w0 = 1 | 0b101 << 1 | 1 << 4 | CD | cd_max << 59;
    let w1 = 0b10 | 1 << 2 | 1 << 4 | 3 << 6 | 1 << 19 | 1 << 28 | 2 << 30 | 1 << 44;
    [w0, w1, 0xdead_beef, 0x1234_5000, 0, 0, 0, 0xffff]
}

/// `s1_ste(cd_max)` reduced to what iommufd accepts, EATS cleared (no ATS advertised).
fn s1_nested(cd_max: u64) -> NestedSte {
    NestedSte([
        1 | 0b101 << 1 | 1 << 4 | CD | cd_max << 59,
        0b10 | 1 << 2 | 1 << 4 | 3 << 6,
    ])
}

#[test]
fn id_registers_follow_features() {
    let mut h = Harness::new(features());
    let idr: Vec<u32> = (0..6).map(|i| h.r32(4 * i)).collect();
    assert_eq!(idr, [0x0948_301a, 0x018a_0150, 0, 0x400, 0, 0x55]);
    assert_eq!(h.r32(IIDR), 0);
    assert_eq!(h.r32(AIDR), 0x02);

    let mut h = Harness::new(SmmuFeatures {
        two_level_stream_table: false,
        sid_bits: 8,
        ssid_bits: 0,
        oas_bits: 40,
        granule_4k: true,
        granule_16k: true,
        granule_64k: false,
        range_invalidation: false,
        asid16: false,
        two_level_cd_table: false,
        repeat_tlbi_cfgi: false,
        stall_model: 0,
    });
    let idr: Vec<u32> = (0..6).map(|i| h.r32(4 * i)).collect();
    assert_eq!(idr, [0x0040_201a, 0x018a_0008, 0, 0, 0, 0x32]);
    assert_eq!(h.r32(AIDR), 0x01);
    // Reset state: everything off, GBPA bypass with SHCFG incoming.
    for reg in [CR0, CR0ACK, IRQ_CTRLACK, GERROR] {
        assert_eq!(h.r32(reg), 0);
    }
    assert_eq!(h.r32(GBPA), 0x1000);
    // 64-bit reads of ID pairs, and odd widths read zero.
    assert_eq!(h.r64(IDR0), 0x018a_0008_0040_201a);
    let mut byte = [0xffu8; 1];
    h.dev.read(IDR0, &mut byte);
    assert_eq!(byte, [0]);

    let f = features();
    for bad in [
        SmmuFeatures { sid_bits: 33, ..f },
        SmmuFeatures { ssid_bits: 21, ..f },
        SmmuFeatures { oas_bits: 47, ..f },
        SmmuFeatures {
            stall_model: 3,
            ..f
        },
    ] {
        assert!(bad.id_registers().is_err(), "{bad:?}");
    }
}

#[test]
fn cr0_and_irq_ctrl_acknowledge_implemented_bits() {
    let mut h = Harness::new(features());
    h.w32(CR0, 0xffff_ffff);
    assert_eq!(h.r32(CR0), 0xd);
    assert_eq!(h.r32(CR0ACK), 0xd);
    h.w32(CR0, 0x8);
    assert_eq!(h.r32(CR0ACK), 0x8);
    h.w32(IRQ_CTRL, 0x7);
    assert_eq!(h.r32(IRQ_CTRLACK), 0x5);
    h.w32(CR1, 0xffff_ffff);
    assert_eq!(h.r32(CR1), 0xfff);
    // Queue bases are frozen while their queue is enabled.
    h.w64(CMDQ_BASE, CMDQ | 5);
    assert_eq!(h.r64(CMDQ_BASE), 0);
    h.w32(CR0, 0);
    h.w64(CMDQ_BASE, CMDQ | 5);
    assert_eq!(h.r64(CMDQ_BASE), CMDQ | 5);
    // 32-bit halves of a 64-bit register.
    h.w32(EVENTQ_BASE, 0x1234_5678);
    h.w32(EVENTQ_BASE + 4, 0x4000_0001);
    assert_eq!(h.r64(EVENTQ_BASE), 0x4000_0001_1234_5660 | 0x18);
}

#[test]
fn gbpa_update_decides_streams_while_disabled() {
    let mut h = Harness::new(features());
    h.dev.add_stream(0x10).unwrap();
    assert_eq!(
        h.backend.state().stream_calls,
        [(0x10, StreamConfig::Bypass)]
    );
    // Without UPDATE the write is ignored.
    h.w32(GBPA, 1 << 20);
    assert_eq!(h.r32(GBPA), 0x1000);
    h.w32(GBPA, 1 << 31 | 1 << 20);
    assert_eq!(h.r32(GBPA), 1 << 20);
    assert_eq!(
        h.backend.state().stream_calls[1..],
        [(0x10, StreamConfig::Abort)]
    );
    assert_eq!(
        h.dev.add_stream(1 << 16),
        Err(SmmuError::StreamId {
            sid: 1 << 16,
            sid_bits: 16
        })
    );
}

#[test]
fn linear_stream_table_gives_masked_stage1() {
    let mut h = Harness::booted(&[0x10]);
    // Enabling the SMMU re-reads the (still empty) STE: abort, without an event.
    assert_eq!(
        h.backend.state().stream_calls,
        [(0x10, StreamConfig::Bypass), (0x10, StreamConfig::Abort)]
    );
    h.set_mem(STRTAB + 0x10 * 64, &s1_ste(3));
    h.commands(&[cfgi_ste(0x10), sync()]);
    assert_eq!(
        h.backend.state().stream_calls[2..],
        [(0x10, StreamConfig::Stage1(s1_nested(3)))]
    );
    assert_eq!(h.r32(CMDQ_CONS), 2);
    assert!(h.invalidations().is_empty());
    // A StreamID nobody registered costs nothing.
    h.commands(&[cfgi_ste(0x11), sync()]);
    assert_eq!(h.backend.state().stream_calls.len(), 3);

    let ste = Ste::parse(&s1_ste(3), &features(), &h.mem).unwrap();
    assert_eq!(ste.config, SteConfig::Stage1);
    assert_eq!(ste.s1_format, CdTableFormat::TwoLevel4K);
    assert_eq!(ste.s1_dss, DefaultSubstream::Substream0);
    assert_eq!(ste.eats, 1);
}

/// Every STE bit set besides a legal Config, S1Fmt, S1DSS, S1CDMax and S1ContextPtr: backends
/// get only what iommufd accepts (not word 0 bits 58:52, not word 1's S2/STRW/SHCFG, not EATS).
#[test]
fn nested_ste_keeps_only_what_iommufd_takes() {
    let h = Harness::new(features());
    let w0 = 1 | 0x07f0_0000_0000_0000 | 0b101 << 1 | 1 << 4 | CD | 5 << 59;
    let ste = Ste::parse(&[w0, !0b01, !0, !0, !0, !0, !0, !0], &features(), &h.mem).unwrap();
    assert_eq!(
        ste.stream_config(),
        StreamConfig::Stage1(NestedSte([
            1 | 0b101 << 1 | 1 << 4 | CD | 5 << 59,
            0b10 | 3 << 2 | 3 << 4 | 3 << 6 | 1 << 27
        ]))
    );
    assert_eq!(NestedSte::ABORT.words(), [1, 0]);
    assert_eq!(NestedSte::BYPASS.words(), [1 | 0b100 << 1, 0]);
}

#[test]
fn unchanged_ste_is_not_reinstalled_but_its_cds_are_invalidated() {
    let mut h = Harness::booted(&[0x10]);
    h.set_mem(STRTAB + 0x10 * 64, &s1_ste(0));
    h.commands(&[cfgi_ste(0x10), sync()]);
    h.commands(&[cfgi_ste(0x10), sync()]);
    assert_eq!(h.backend.state().stream_calls.len(), 3);
    assert_eq!(h.invalidations(), [vec![[0x06 | 0x10 << 32, 0]]]);
}

#[test]
fn two_level_stream_table_walk() {
    let mut h = Harness::booted(&[0x100, 0x105, 0x205, 0x1ff]);
    // The boot table's 2^8 StreamIDs do not reach them.
    assert_eq!(h.r32(0x1_00a8), 4);
    assert_eq!(h.events(0, 1)[0][0], 0x02 | 0x100 << 32);
    // 2-level, SPLIT 8, 2^16 StreamIDs.
    h.w32(CR0, 0xc);
    h.w32(STRTAB_BASE_CFG, 1 << 16 | 8 << 6 | 16);
    let l2 = STRTAB + 0x1_0000;
    h.set_mem(STRTAB + 8, &[l2 | 9]); // L1[1]: 256 STEs
    h.set_mem(STRTAB + 16, &[0]); // L1[2]: invalid
    h.set_mem(l2 + 5 * 64, &s1_ste(0));
    h.w32(CR0, 0xd);
    let calls = h.backend.state().stream_calls.clone();
    assert!(calls.contains(&(0x105, StreamConfig::Stage1(s1_nested(0)))));
    assert!(calls.contains(&(0x205, StreamConfig::Abort)));
    // No new events: invalid descriptors and V=0 STEs abort quietly.
    assert_eq!(h.r32(0x1_00a8), 4);

    // A span of 1 holds a single STE: 0x105 falls outside it, 0x100 is inside.
    h.set_mem(STRTAB + 8, &[l2 | 1]);
    h.set_mem(l2, &s1_ste(0));
    h.commands(&[[0x04, 31], sync()]); // CFGI_ALL
    let calls = h.backend.state().stream_calls.clone();
    assert_eq!(
        calls[calls.len() - 2..],
        [
            (0x100, StreamConfig::Stage1(s1_nested(0))),
            (0x105, StreamConfig::Abort)
        ]
    );
    assert_eq!(h.r32(0x1_00a8), 4);
}

#[test]
fn invalid_stes_raise_c_bad_ste() {
    let mut h = Harness::booted(&[0x20]);
    let base = s1_ste(0);
    let cases: [[u64; 8]; 5] = [
        [(base[0] & !0xe) | 0b110 << 1, base[1], 0, 0, 0, 0, 0, 0], // stage 2
        [(base[0] & !0xe) | 0b111 << 1, base[1], 0, 0, 0, 0, 0, 0], // nested
        [(base[0] & !0xe) | 0b010 << 1, base[1], 0, 0, 0, 0, 0, 0], // reserved
        [(base[0] & !CD) | 0x1000, base[1], 0, 0, 0, 0, 0, 0],      // CD outside RAM
        s1_ste(6),                                                  // S1CDMax > SSIDSIZE 5
    ];
    let abort_stage1 = |h: &mut Harness, ste: &[u64; 8]| {
        h.set_mem(STRTAB + 0x20 * 64, &s1_ste(0));
        h.commands(&[cfgi_ste(0x20), sync()]);
        h.set_mem(STRTAB + 0x20 * 64, ste);
        h.commands(&[cfgi_ste(0x20), sync()]);
    };
    for (i, ste) in cases.iter().enumerate() {
        abort_stage1(&mut h, ste);
        assert_eq!(
            h.backend.state().stream_calls.last(),
            Some(&(0x20, StreamConfig::Abort)),
            "case {i}"
        );
        assert_eq!(h.r32(0x1_00a8), i as u32 + 1, "case {i}");
        let event = h.events(i as u32, 1)[0];
        assert_eq!(event, [0x04 | 0x20 << 32, 0, 0, 0], "case {i}");
    }
    assert_eq!(h.dev.stats().model_events, 5);
    assert_eq!(h.irqs.state().triggered, [SmmuIrq::Event; 5]);
}

#[test]
fn bad_stream_ids_and_unreachable_tables_raise_events() {
    let mut h = Harness::booted(&[0x300]); // beyond the 2^8 linear table
    assert_eq!(h.events(0, 1)[0][0], 0x02 | 0x300 << 32);
    h.w32(CR0, 0xc);
    h.w64(STRTAB_BASE, 0x1000);
    h.w32(STRTAB_BASE_CFG, 10);
    h.w32(CR0, 0xd);
    let event = h.events(1, 1)[0];
    assert_eq!(event[0], 0x03 | 0x300 << 32);
    assert_eq!(event[3], 0x1000 + 0x300 * 64);
    assert_eq!(
        h.backend.state().stream_calls.last(),
        Some(&(0x300, StreamConfig::Abort))
    );
}

#[test]
fn host_refusal_aborts_the_stream() {
    let mut h = Harness::booted(&[0x10]);
    h.backend.state().refuse_stage1 = true;
    h.set_mem(STRTAB + 0x10 * 64, &s1_ste(0));
    h.commands(&[cfgi_ste(0x10), sync()]);
    let calls = h.backend.state().stream_calls.clone();
    assert_eq!(
        calls[calls.len() - 2..],
        [
            (0x10, StreamConfig::Stage1(s1_nested(0))),
            (0x10, StreamConfig::Abort)
        ]
    );
    assert_eq!(h.events(0, 1)[0][0], 0x04 | 0x10 << 32);
}

#[test]
fn invalidations_are_batched_per_sync() {
    let mut h = Harness::booted(&[]);
    let burst = [
        tlbi_nh_va(7, 0x4000),
        tlbi_nh_asid(7),
        cfgi_cd(0x10, 0),
        [0x20, 0],              // TLBI_EL2_ALL: ignored
        [0x01 | 0x10 << 32, 0], // PREFETCH_CONFIG: no-op
        atc_inv(0x10),
        [0x30, 0],              // TLBI_NSNH_ALL
        [0x06 | 0x10 << 32, 0], // CFGI_CD_ALL
        sync(),
    ];
    h.commands(&burst);
    assert_eq!(
        h.invalidations(),
        [vec![
            burst[0], burst[1], burst[2], burst[5], burst[6], burst[7]
        ]]
    );
    // Backends get them decoded: ASIDs, addresses, StreamIDs.
    let scopes: Vec<InvalidationScope> = h.backend.state().invalidate_calls[0]
        .iter()
        .map(|i| i.scope)
        .collect();
    let va = TlbiVa {
        address: 0x4000,
        leaf: true,
        ttl: 0,
        tg: 0,
        num: 0,
        scale: 0,
    };
    assert_eq!(
        scopes,
        [
            InvalidationScope::TlbiNhVa { asid: 7, va },
            InvalidationScope::TlbiNhAsid { asid: 7 },
            InvalidationScope::CfgiCd {
                sid: 0x10,
                ssid: 0,
                leaf: true
            },
            InvalidationScope::AtcInv {
                sid: 0x10,
                ssid: None,
                global: false,
                address: 0,
                size: 52
            },
            InvalidationScope::TlbiNsnhAll,
            InvalidationScope::CfgiCdAll { sid: 0x10 },
        ]
    );
    // Two syncs in one PROD write: two calls; a sync with nothing pending: none.
    h.commands(&[tlbi_nh_asid(1), sync(), sync(), tlbi_nh_asid(2), sync()]);
    // Commands without a trailing sync go out when the queue runs dry.
    h.commands(&[tlbi_nh_asid(3)]);
    assert_eq!(
        h.invalidations()[1..],
        [
            vec![tlbi_nh_asid(1)],
            vec![tlbi_nh_asid(2)],
            vec![tlbi_nh_asid(3)]
        ]
    );
    let backend = h.dev.backend_stats();
    assert_eq!(backend.get("invalidate calls"), Some(4));
    assert_eq!(backend.to_string(), "stream calls 0, invalidate calls 4");
    let stats = h.dev.stats();
    assert_eq!(stats.cmd_syncs, 4);
    assert_eq!(stats.invalidation_calls, 4);
    assert_eq!(stats.invalidation_commands, 9);
    assert_eq!(stats.commands[&opcode::TLBI_NH_ASID], 4);
    assert_eq!(stats.commands[&opcode::TLBI_EL2_ALL], 1);
    assert_eq!(stats.commands[&opcode::CMD_SYNC], 4);
    assert_eq!(h.r32(CMDQ_CONS), h.prod);
}

#[test]
fn invalidation_commands_decode_their_operands() {
    let decode = |raw| match Command::decode(raw) {
        Ok(Command::Invalidate(invalidation)) => invalidation,
        other => panic!("{other:?}"),
    };
    // TLBI_NH_VA over a range: ASID 0x1234, NUM 3, SCALE 2, TG 64 KiB, TTL 3, leaf.
    let raw = [
        0x12 | 3 << 12 | 2 << 20 | 0x1234 << 48,
        0x8000_0000 | 3 << 10 | 3 << 8 | 1,
    ];
    let i = decode(raw);
    assert_eq!(i.raw(), raw);
    let InvalidationScope::TlbiNhVa { asid: 0x1234, va } = i.scope else {
        panic!("{i:?}");
    };
    assert_eq!((va.address, va.leaf, va.ttl), (0x8000_0000, true, 3));
    assert_eq!(va.range_bytes(), Some(4 * 4 * 0x1_0000));
    let InvalidationScope::TlbiNhVaa { va } = decode([0x13, 0x1000]).scope else {
        panic!("not TLBI_NH_VAA");
    };
    assert_eq!(
        (va.address, va.leaf, va.range_bytes()),
        (0x1000, false, None)
    );
    assert_eq!(decode([0x10, 0]).scope, InvalidationScope::TlbiNhAll);
    // ATC_INV for SubstreamID 5 (SSV), global, 2^4 pages.
    let i = decode([
        0x40 | 1 << 9 | 1 << 11 | 5 << 12 | 0x10 << 32,
        0x7000_0000 | 4,
    ]);
    assert_eq!(
        i.scope,
        InvalidationScope::AtcInv {
            sid: 0x10,
            ssid: Some(5),
            global: true,
            address: 0x7000_0000,
            size: 4
        }
    );
    // ATC_INV, CFGI_CD and CFGI_CD_ALL name a StreamID; the TLBIs name none.
    assert_eq!(i.stream_id(), Some(0x10));
    assert_eq!(decode(cfgi_cd(0x8, 3)).stream_id(), Some(0x8));
    assert_eq!(decode([0x06 | 0x108 << 32, 0]).stream_id(), Some(0x108));
    assert_eq!(decode(tlbi_nh_asid(1)).stream_id(), None, "names an ASID");
    assert_eq!(decode([0x10, 0]).stream_id(), None);
    assert_eq!(
        Invalidation::cfgi_cd_all(0x108),
        decode([0x06 | 0x108 << 32, 0])
    );
    assert_eq!(Invalidation::decode(cfgi_ste(1)), None);
    assert_eq!(Invalidation::decode([0x20, 0]), None);
}

#[test]
fn cmd_sync_completion_signals() {
    let mut h = Harness::booted(&[]);
    // Linux's MSI polling: MSIADDR = the CMD_SYNC's own slot, MSIDATA 0.
    let slot = CMDQ + 16 * u64::from(h.prod);
    h.commands(&[[0x46 | 1 << 12 | 3 << 22 | 0xf << 24, slot]]);
    assert_eq!(h.mem_u64(slot) as u32, 0);
    // MSIDATA into other RAM.
    h.commands(&[[0x46 | 1 << 12 | 0xabcd_0123 << 32, SCRATCH | 0x3]]);
    assert_eq!(h.mem_u64(SCRATCH) as u32, 0xabcd_0120 | 0x3);
    // No address: the wired sync interrupt. SEV and NONE: nothing.
    h.commands(&[[0x46 | 1 << 12, 0], [0x46 | 2 << 12, 0], sync()]);
    assert_eq!(h.irqs.state().triggered, [SmmuIrq::Sync]);
    // The ITS doorbell.
    h.commands(&[[0x46 | 1 << 12 | 0x55 << 32, DOORBELL]]);
    assert_eq!(h.irqs.state().msis, [doorbell(0x55)]);
    // Nowhere: GERROR.MSI_CMDQ_ABT_ERR, the queue keeps going.
    h.commands(&[[0x46 | 1 << 12, 0x10_0000], sync()]);
    assert_eq!(h.r32(GERROR), 1 << 4);
    assert_eq!(h.r32(CMDQ_CONS), h.prod);
}

#[test]
fn illegal_command_stops_the_queue_until_acknowledged() {
    let mut h = Harness::booted(&[]);
    h.commands(&[tlbi_nh_asid(1), [0x7f, 0], tlbi_nh_asid(2), sync()]);
    assert_eq!(h.r32(GERROR), 1);
    assert_eq!(h.r32(GERRORN), 0);
    assert_eq!(h.r32(CMDQ_CONS), 1 << 24 | 1);
    assert_eq!(h.irqs.state().triggered, [SmmuIrq::Gerror]);
    // What came before the error was applied; nothing after it.
    assert_eq!(h.invalidations(), [vec![tlbi_nh_asid(1)]]);
    // More PROD writes do not move a stopped queue.
    h.commands(&[tlbi_nh_asid(3)]);
    assert_eq!(h.r32(CMDQ_CONS), 1 << 24 | 1);
    // Linux: turn the bad entry into a CMD_SYNC, then GERRORN = GERROR.
    h.set_mem(CMDQ + 16, &sync());
    h.w32(GERRORN, 1);
    assert_eq!(h.r32(CMDQ_CONS), 5);
    assert_eq!(
        h.invalidations()[1..],
        [vec![tlbi_nh_asid(2)], vec![tlbi_nh_asid(3)]]
    );
    assert_eq!(h.dev.stats().command_errors, 1);
    assert_eq!(h.dev.stats().commands[&0x7f], 1);

    // A reserved CMD_SYNC.CS is illegal too.
    h.commands(&[[0x46 | 3 << 12, 0]]);
    assert_eq!(h.r32(CMDQ_CONS), 1 << 24 | 5);
    assert_eq!(h.r32(GERROR) ^ h.r32(GERRORN), 1);
}

#[test]
fn command_fetch_outside_ram_is_cerror_abt() {
    let mut h = Harness::booted(&[]);
    h.w32(CR0, 0x5);
    h.w64(CMDQ_BASE, 0x1000 | 4);
    h.w32(CMDQ_PROD, 0);
    h.w32(CMDQ_CONS, 0);
    h.w32(CR0, 0xd);
    h.w32(CMDQ_PROD, 3);
    assert_eq!(h.r32(CMDQ_CONS), 2 << 24);
    assert_eq!(h.r32(GERROR), 1);
}

fn host_event(n: u64) -> [u64; 4] {
    [0x10 | 0x10 << 32, 0x1_0000_0000 | n, 0x4000 + n, 0]
}

#[test]
fn event_queue_wraps_and_overflows() {
    let mut h = Harness::booted(&[]);
    h.host_events((0..10).map(host_event), false);
    h.host_events((10..20).map(host_event), false);
    h.host_events((20..24).map(host_event), false);
    h.host_events([], false);
    assert_eq!(h.dev.service_host_events(), 10);
    assert_eq!(h.r32(0x1_00a8), 10);
    assert_eq!(h.events(0, 10), (0..10).map(host_event).collect::<Vec<_>>());
    // The guest consumed 8; 10 more wrap around, 12 of 16 slots are then used.
    h.w32(0x1_00ac, 8);
    assert_eq!(h.dev.service_host_events(), 10);
    assert_eq!(h.r32(EVENTQ_PROD), 1 << 4 | 4);
    assert_eq!(
        h.events(16, 4),
        (16..20).map(host_event).collect::<Vec<_>>()
    );
    assert_eq!(h.r32(0x1_00a8) & 1 << 31, 0);
    // Four free slots, four events: full, no overflow yet.
    assert_eq!(h.dev.service_host_events(), 4);
    assert_eq!(h.r32(0x1_00a8), 1 << 4 | 8);
    // Nothing queued: nothing happens.
    assert_eq!(h.dev.service_host_events(), 0);
    // One more while full: dropped, OVFLG toggles.
    h.host_events([host_event(99)], false);
    assert_eq!(h.dev.service_host_events(), 0);
    assert_eq!(h.r32(0x1_00a8), 1 << 31 | 1 << 4 | 8);
    // Not acknowledged yet: a second overflow leaves the flag alone.
    h.host_events([host_event(100)], false);
    h.dev.service_host_events();
    assert_eq!(h.r32(0x1_00a8), 1 << 31 | 1 << 4 | 8);
    assert_eq!(h.dev.stats().events_dropped, 2);
    assert_eq!(h.dev.stats().host_events, 24);
    // Linux drains and acknowledges (CONS.OVACKFLG = PROD.OVFLG); the next overflow toggles back.
    h.w32(0x1_00ac, 1 << 31 | 1 << 4 | 8);
    h.host_events([], true);
    h.dev.service_host_events();
    assert_eq!(h.r32(0x1_00a8), 1 << 4 | 8);
    assert_eq!(h.irqs.state().triggered.len(), 6);
}

#[test]
fn lost_events_and_event_msi() {
    let mut h = Harness::booted(&[]);
    h.w64(EVENTQ_IRQ_CFG0, DOORBELL);
    h.w32(EVENTQ_IRQ_CFG1, 0x2a);
    h.host_events([host_event(1)], true);
    assert_eq!(h.dev.service_host_events(), 1);
    assert_eq!(h.r32(0x1_00a8), 1 << 31 | 1);
    assert_eq!(h.irqs.state().msis, [doorbell(0x2a)]);
    assert!(h.irqs.state().triggered.is_empty());
    // With EVENTQ_IRQEN clear, events are written silently.
    h.w32(IRQ_CTRL, 0x1);
    h.host_events([host_event(2)], false);
    assert_eq!(h.dev.service_host_events(), 1);
    assert_eq!(h.irqs.state().msis.len(), 1);
    // A disabled event queue drops them.
    h.w32(CR0, 0x9);
    h.host_events([host_event(3)], false);
    assert_eq!(h.dev.service_host_events(), 0);
    assert_eq!(h.dev.stats().events_dropped, 1);
}

#[test]
fn context_descriptor_lookup() {
    let h = Harness::new(features());
    let ste = Ste::parse(&s1_ste(8), &features_ssid(8), &h.mem).unwrap();
    // 2-level, 4 KiB leaves: SSID 0x45 is L1[1], entry 5.
    let l2 = CD + 0x1000;
    h.set_mem(CD + 8, &[l2 | 1]);
    assert_eq!(cd_address(&ste, 0x45, &h.mem), Ok(l2 + 5 * 64));
    assert!(cd_address(&ste, 0x85, &h.mem).is_err());
    assert!(cd_address(&ste, 0x100, &h.mem).is_err());
    let w0 = 16 | 1 << 31 | 5 << 32 | 1 << 41 | 0x42 << 48;
    let cd = ContextDescriptor::parse(&[w0, 0x8765_4000, 0, 0x44ff, 0, 0, 0, 0]);
    assert!(cd.valid && cd.aa64);
    assert_eq!(
        (cd.t0sz, cd.ips, cd.asid, cd.ttb0),
        (16, 5, 0x42, 0x8765_4000)
    );
}

fn features_ssid(ssid_bits: u8) -> SmmuFeatures {
    SmmuFeatures {
        ssid_bits,
        ..features()
    }
}

/// Hostile register values, queue geometry and table contents: nothing panics.
#[test]
fn fuzzed_accesses_never_panic() {
    let mut h = Harness::new(features());
    for sid in [0, 0x10, 0x105, 0xffff] {
        h.dev.add_stream(sid).unwrap();
    }
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let mut next = move || rng.next();
    let interesting = [
        0,
        u64::MAX,
        RAM,
        CMDQ,
        STRTAB,
        EVTQ,
        RAM + RAM_SIZE as u64 - 8,
        1 << 63,
        0x000f_ffff_ffff_ffc0,
    ];
    let opcodes = [
        0x01, 0x03, 0x04, 0x05, 0x06, 0x10, 0x11, 0x12, 0x20, 0x30, 0x40, 0x44, 0x46,
    ];
    // Random stream table, command queue and event queue contents.
    for i in 0..((EVTQ + 0x1000 - STRTAB) / 8) {
        let word = next();
        let in_cmdq = ((CMDQ - STRTAB) / 8..(CMDQ + 0x1_0000 - STRTAB) / 8).contains(&i);
        let kind = if in_cmdq && i % 2 == 0 && word % 16 != 0 {
            0
        } else {
            word % 4
        };
        let word = match kind {
            // Command-looking: a real opcode, small StreamID.
            0 => (word & 0x0003_ffff_ffff_ff00) | opcodes[(word >> 56) as usize % opcodes.len()],
            1 => interesting[(word >> 8) as usize % interesting.len()],
            _ => word,
        };
        h.set_mem(STRTAB + 8 * i, &[word]);
    }
    let registers = [
        CR0,
        CR1,
        CR2,
        GBPA,
        IRQ_CTRL,
        GERRORN,
        GERROR_IRQ_CFG0,
        STRTAB_BASE,
        STRTAB_BASE_CFG,
        CMDQ_BASE,
        CMDQ_PROD,
        CMDQ_CONS,
        EVENTQ_BASE,
        0x1_00a8,
        0x1_00ac,
        EVENTQ_IRQ_CFG0,
        EVENTQ_IRQ_CFG1,
    ];
    for round in 0..20_000 {
        let r = next();
        let off = if r % 5 == 0 {
            next() % regs::MMIO_SIZE
        } else {
            registers[(r >> 8) as usize % registers.len()]
        };
        let value = if off == GERRORN && r % 4 != 0 {
            u64::from(h.r32(GERROR)) // acknowledge, as Linux does
        } else if r % 2 == 0 {
            interesting[(r >> 16) as usize % interesting.len()] | ((r >> 32) % 32)
        } else {
            next()
        };
        let len = [4usize, 8, 4, 8, 1, 2, 3][(r >> 24) as usize % 7];
        let off = if r % 7 == 0 { off | 1 } else { off };
        if off + len as u64 > regs::MMIO_SIZE {
            continue;
        }
        if r % 2 == 0 {
            h.dev.write(off, &value.to_le_bytes()[..len]);
        } else {
            let mut data = vec![0u8; len];
            h.dev.read(off, &mut data);
        }
        if round % 64 == 0 {
            let events: Vec<_> = (0..next() % 40)
                .map(|_| [next(), next(), next(), next()])
                .collect();
            h.host_events(events, next() % 2 == 0);
            h.dev.service_host_events();
        }
        if round % 512 == 0 {
            h.dev.reset();
        }
        // The acknowledgement registers always mirror their controls.
        assert_eq!(h.r32(CR0), h.r32(CR0ACK));
    }

    // A booted SMMU fed random commands, STEs and CD pointers.
    h.dev.reset();
    h.prod = 0;
    h.boot();
    for _ in 0..20_000 {
        let r = next();
        match r % 8 {
            0..=3 => {
                let word = next();
                let command = [
                    (word & 0x0003_ffff_ffff_ff00) | opcodes[(word >> 56) as usize % opcodes.len()],
                    interesting[(r >> 8) as usize % interesting.len()] ^ (next() & 0xfff),
                ];
                h.commands(&[command]);
            }
            4 => {
                let sid = [0u64, 0x10, 0x105, 0xffff][(r >> 8) as usize % 4] % 256;
                let (w0, w1, w2) = (next() & 0xf800_0000_0000_003f | CD, next(), next());
                let ste = [w0, w1, w2, 0, 0, 0, 0, 0];
                h.set_mem(STRTAB + sid * 64, &ste);
            }
            5 => {
                let gerror = h.r32(GERROR);
                h.w32(GERRORN, gerror);
            }
            6 => {
                let events: Vec<_> = (0..next() % 40)
                    .map(|_| [next(), next(), next(), next()])
                    .collect();
                h.host_events(events, next() % 8 == 0);
                h.dev.service_host_events();
                let prod = h.r32(0x1_00a8);
                h.w32(0x1_00ac, prod);
            }
            _ => h.w32(CMDQ_PROD, next() as u32),
        }
    }
    let stats = h.dev.stats();
    assert!(
        stats.cmd_syncs > 300 && stats.invalidation_calls > 300,
        "{stats:?}"
    );
    assert!(stats.stream_updates > 100, "{stats:?}");
}

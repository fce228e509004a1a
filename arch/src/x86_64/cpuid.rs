//! The CPUID table each vCPU gets, derived from KVM_GET_SUPPORTED_CPUID: vCPU `i` has APIC ID `i`
//! (as in the MADT), and the topology leaves describe one package of `vcpus` single-threaded
//! cores. A pure function over the table, so it is tested without KVM.

use kvm_bindings::{CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, kvm_cpuid_entry2};

use crate::x86_64::boot::BootError;
use crate::x86_64::layout::MAX_VCPUS;

const LEAF_VENDOR: u32 = 0x0;
const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_CACHE: u32 = 0x8000_001d;
const LEAF_AMD_TOPOLOGY: u32 = 0x8000_001e;

/// CPUID.1:ECX bit 31: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:EDX bit 28: EBX[23:16] holds the logical processor count.
const EDX_HTT: u32 = 1 << 28;

/// Extended topology level types (leaves 0xB and 0x1F, ECX[15:8]).
const LEVEL_INVALID: u32 = 0;
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

const VENDOR_AMD: [u32; 3] = vendor(b"AuthenticAMD");
const VENDOR_HYGON: [u32; 3] = vendor(b"HygonGenuine");

/// A vendor string as CPUID.0 returns it in EBX, EDX, ECX.
const fn vendor(name: &[u8; 12]) -> [u32; 3] {
    let mut words = [0u32; 3];
    let mut i = 0;
    while i < 3 {
        let at = i * 4;
        words[i] = u32::from_le_bytes([name[at], name[at + 1], name[at + 2], name[at + 3]]);
        i += 1;
    }
    words
}

/// Where vCPU `index` sits: one package, one thread per core, core ID = APIC ID = `index`.
#[derive(Debug, Clone, Copy)]
struct Topology {
    index: u32,
    vcpus: u32,
    /// Bits of the APIC ID that number cores: ceil(log2(vcpus)).
    core_bits: u32,
}

impl Topology {
    /// APIC IDs a package reserves for its cores.
    fn addressable_ids(&self) -> u32 {
        1 << self.core_bits
    }
}

/// The CPUID table for vCPU `index` of `vcpus`, from KVM's supported table.
///
/// Leaf 1 gets the APIC ID, logical processor count and hypervisor bit; leaves 0xB and 0x1F
/// (whenever the maximum basic leaf reaches them) are rebuilt with an SMT and a core level; cache
/// leaves 4 and 0x8000_001D share L1/L2 per core and L3 per package; AMD's 0x8000_0008 and
/// 0x8000_001E get the core count and IDs. TSC-deadline (CPUID.1:ECX[24]) stays as KVM reports
/// it. Every other entry passes through.
pub fn vcpu_cpuid(supported: &CpuId, index: u32, vcpus: u32) -> Result<CpuId, BootError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(BootError::VcpuCount(vcpus));
    }
    if index >= vcpus {
        return Err(BootError::VcpuIndex { index, vcpus });
    }
    let topo = Topology {
        index,
        vcpus,
        core_bits: u32::BITS - (vcpus - 1).leading_zeros(),
    };

    let entries = supported.as_slice();
    let leaf0 = entries.iter().find(|e| e.function == LEAF_VENDOR);
    let max_basic = leaf0.map_or(0, |e| e.eax);
    let amd = leaf0.is_some_and(|e| {
        let id = [e.ebx, e.edx, e.ecx];
        id == VENDOR_AMD || id == VENDOR_HYGON
    });

    let mut out: Vec<kvm_cpuid_entry2> = Vec::with_capacity(entries.len() + 6);
    for entry in entries {
        let mut e = *entry;
        match e.function {
            LEAF_FEATURES => features(&mut e, topo),
            LEAF_CACHE => cache(&mut e, topo, true),
            LEAF_AMD_CACHE => cache(&mut e, topo, false),
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => continue,
            LEAF_AMD_SIZES if amd => amd_sizes(&mut e, topo),
            LEAF_AMD_TOPOLOGY => amd_topology(&mut e, topo),
            _ => {}
        }
        out.push(e);
    }
    for leaf in [LEAF_TOPOLOGY, LEAF_TOPOLOGY_V2] {
        if max_basic >= leaf {
            out.extend(extended_topology(leaf, topo));
        }
    }

    CpuId::from_entries(&out).map_err(|_| BootError::CpuidEntries(out.len()))
}

/// Leaf 1: EBX[31:24] initial APIC ID, EBX[23:16] addressable logical processor IDs per package.
fn features(e: &mut kvm_cpuid_entry2, topo: Topology) {
    // 8 bits: 256 addressable IDs (129 or more vCPUs) saturate; leaf 0xB has the exact widths.
    let logical = topo.addressable_ids().min(0xff);
    e.ebx = (e.ebx & 0xffff) | (logical << 16) | (topo.index << 24);
    if topo.vcpus > 1 {
        e.edx |= EDX_HTT;
    } else {
        e.edx &= !EDX_HTT;
    }
    e.ecx |= ECX_HYPERVISOR;
}

/// Leaves 4 (Intel) and 0x8000_001D (AMD), one entry per cache: EAX[25:14] is the number of
/// logical processors sharing the cache minus one; leaf 4's EAX[31:26] the addressable core IDs
/// per package minus one.
fn cache(e: &mut kvm_cpuid_entry2, topo: Topology, intel: bool) {
    const TYPE_NULL: u32 = 0;
    if e.eax & 0x1f == TYPE_NULL {
        return;
    }
    let level = (e.eax >> 5) & 0x7;
    let sharing = if level >= 3 {
        topo.addressable_ids() - 1
    } else {
        0
    };
    e.eax = (e.eax & !(0xfff << 14)) | (sharing.min(0xfff) << 14);
    if intel {
        let cores = (topo.addressable_ids() - 1).min(0x3f);
        e.eax = (e.eax & 0x03ff_ffff) | (cores << 26);
    }
}

/// Leaf 0xB or 0x1F: subleaf 0 the SMT level (one thread), subleaf 1 the core level (`vcpus`
/// cores), subleaf 2 the terminating invalid level. EDX is the x2APIC ID at every subleaf.
fn extended_topology(leaf: u32, topo: Topology) -> [kvm_cpuid_entry2; 3] {
    let level = |subleaf: u32, shift: u32, count: u32, kind: u32| kvm_cpuid_entry2 {
        function: leaf,
        index: subleaf,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax: shift,
        ebx: count,
        ecx: (kind << 8) | subleaf,
        edx: topo.index,
        ..Default::default()
    };
    [
        level(0, 0, 1, LEVEL_SMT),
        level(1, topo.core_bits, topo.vcpus, LEVEL_CORE),
        level(2, 0, 0, LEVEL_INVALID),
    ]
}

/// AMD leaf 0x8000_0008: ECX[7:0] cores per package minus one, ECX[15:12] APIC ID core bits.
fn amd_sizes(e: &mut kvm_cpuid_entry2, topo: Topology) {
    e.ecx = (e.ecx & !0xf0ff) | (topo.vcpus - 1) | (topo.core_bits << 12);
}

/// AMD leaf 0x8000_001E: EAX the extended APIC ID, EBX[7:0] core ID and EBX[15:8] threads per
/// core minus one, ECX node 0 of one node per package.
fn amd_topology(e: &mut kvm_cpuid_entry2, topo: Topology) {
    e.eax = topo.index;
    e.ebx = (e.ebx & !0xffff) | topo.index;
    e.ecx &= !0x7ff;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            flags: if matches!(function, 0x4 | 0xb | 0x1f | 0x8000_001d) {
                KVM_CPUID_FLAG_SIGNIFCANT_INDEX
            } else {
                0
            },
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    fn vendor_leaf(max: u32, name: &[u8; 12]) -> kvm_cpuid_entry2 {
        let [ebx, edx, ecx] = vendor(name);
        entry(0, 0, [max, ebx, ecx, edx])
    }

    /// Host values as a 16-core, 2-thread Intel part would report them.
    fn intel_host() -> CpuId {
        CpuId::from_entries(&[
            vendor_leaf(0x1f, b"GenuineIntel"),
            // APIC ID 0x17, 32 logical, CLFLUSH 8; ECX: x2APIC, TSC-deadline; EDX: HTT, FPU.
            entry(0x1, 0, [0x906ea, 0x1720_0800, 0x0120_0000, 0x1000_0001]),
            entry(0x4, 0, [0x1c00_4121, 0x01c0_003f, 0x3f, 0]),
            entry(0x4, 1, [0x1c00_4122, 0x01c0_003f, 0x3f, 0]),
            entry(0x4, 2, [0x1c00_4143, 0x00c0_003f, 0x3ff, 0]),
            entry(0x4, 3, [0x1c03_c163, 0x03c0_003f, 0x3fff, 6]),
            entry(0x4, 4, [0, 0, 0, 0]),
            entry(0xb, 0, [1, 2, 0x100, 0x17]),
            entry(0xb, 1, [5, 32, 0x201, 0x17]),
            entry(0x1f, 0, [1, 2, 0x100, 0x17]),
            entry(0x1f, 1, [5, 32, 0x201, 0x17]),
            entry(0x1f, 2, [0, 0, 2, 0x17]),
            entry(0x4000_0001, 0, [0x01ff_ffff, 0, 0, 0]),
            entry(0x8000_0008, 0, [0x3027, 0, 0, 0]),
        ])
        .unwrap()
    }

    fn amd_host() -> CpuId {
        CpuId::from_entries(&[
            vendor_leaf(0x10, b"AuthenticAMD"),
            entry(0x1, 0, [0xa20f10, 0x0b10_0800, 0x0020_0000, 0x1000_0001]),
            entry(0x8000_0008, 0, [0x3030, 0, 0x0003_700f, 0]),
            entry(0x8000_001d, 0, [0x0000_4121, 0x01c0_003f, 0x3f, 0]),
            entry(0x8000_001d, 1, [0x0000_c163, 0x03c0_003f, 0x7fff, 1]),
            entry(0x8000_001e, 0, [0x0b, 0x0105, 0x0300, 0]),
        ])
        .unwrap()
    }

    fn find(cpuid: &CpuId, function: u32, index: u32) -> Option<kvm_cpuid_entry2> {
        cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .copied()
    }

    fn leaf(cpuid: &CpuId, function: u32, index: u32) -> [u32; 4] {
        let e = find(cpuid, function, index).unwrap_or_else(|| panic!("no leaf {function:#x}"));
        [e.eax, e.ebx, e.ecx, e.edx]
    }

    #[test]
    fn leaf_1_carries_the_apic_id() {
        let host = intel_host();
        for (index, apic_id) in [(0, 0), (3, 3)] {
            let cpuid = vcpu_cpuid(&host, index, 4).unwrap();
            let [eax, ebx, ecx, edx] = leaf(&cpuid, 1, 0);
            assert_eq!(eax, 0x906ea);
            assert_eq!(ebx >> 24, apic_id);
            assert_eq!((ebx >> 16) & 0xff, 4, "addressable logical IDs");
            assert_eq!(ebx & 0xffff, 0x0800, "CLFLUSH size kept");
            assert_ne!(ecx & ECX_HYPERVISOR, 0);
            assert_ne!(ecx & (1 << 24), 0, "TSC-deadline kept as supported");
            assert_ne!(edx & EDX_HTT, 0);
        }

        let cpuid = vcpu_cpuid(&host, 0, 1).unwrap();
        let [_, ebx, _, edx] = leaf(&cpuid, 1, 0);
        assert_eq!(((ebx >> 16) & 0xff, edx & EDX_HTT), (1, 0));

        // Not supported: not offered.
        let mut no_deadline = host.as_slice().to_vec();
        no_deadline[1].ecx &= !(1 << 24);
        let host = CpuId::from_entries(&no_deadline).unwrap();
        let cpuid = vcpu_cpuid(&host, 0, 4).unwrap();
        assert_eq!(leaf(&cpuid, 1, 0)[2] & (1 << 24), 0);
    }

    #[test]
    fn extended_topology_is_one_package_of_single_thread_cores() {
        let host = intel_host();
        for index in [0, 3] {
            let cpuid = vcpu_cpuid(&host, index, 4).unwrap();
            for function in [0xb, 0x1f] {
                assert_eq!(leaf(&cpuid, function, 0), [0, 1, 0x100, index]);
                assert_eq!(leaf(&cpuid, function, 1), [2, 4, 0x201, index]);
                assert_eq!(leaf(&cpuid, function, 2), [0, 0, 2, index]);
                assert_eq!(find(&cpuid, function, 3), None);
                let e = find(&cpuid, function, 1).unwrap();
                assert_eq!(e.flags, KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
                let n = cpuid
                    .as_slice()
                    .iter()
                    .filter(|e| e.function == function)
                    .count();
                assert_eq!(n, 3, "host subleaves replaced, not added to");
            }
        }
        // 5 vCPUs need 3 bits of core ID.
        let cpuid = vcpu_cpuid(&host, 4, 5).unwrap();
        assert_eq!(leaf(&cpuid, 0xb, 1), [3, 5, 0x201, 4]);
        assert_eq!((leaf(&cpuid, 1, 0)[1] >> 16) & 0xff, 8);
    }

    #[test]
    fn topology_leaves_follow_the_maximum_basic_leaf() {
        // Max leaf 0xd: 0xB must exist even though KVM listed none, 0x1F must not.
        let mut entries: Vec<_> = intel_host()
            .as_slice()
            .iter()
            .filter(|e| e.function != 0xb && e.function != 0x1f)
            .copied()
            .collect();
        entries[0].eax = 0xd;
        let cpuid = vcpu_cpuid(&CpuId::from_entries(&entries).unwrap(), 3, 4).unwrap();
        assert_eq!(leaf(&cpuid, 0xb, 0)[3], 3);
        assert!(find(&cpuid, 0x1f, 0).is_none());
    }

    #[test]
    fn intel_cache_sharing() {
        let cpuid = vcpu_cpuid(&intel_host(), 3, 4).unwrap();
        // L1d, L1i, L2 per core; L3 shared by the package's 4 addressable IDs.
        for (subleaf, sharing) in [(0, 0), (1, 0), (2, 0), (3, 3)] {
            let eax = leaf(&cpuid, 4, subleaf)[0];
            assert_eq!((eax >> 14) & 0xfff, sharing, "subleaf {subleaf}");
            assert_eq!(eax >> 26, 3, "addressable core IDs - 1");
        }
        assert_eq!(leaf(&cpuid, 4, 3)[0] & 0x3fff, 0x163, "type and level kept");
        assert_eq!(leaf(&cpuid, 4, 4), [0, 0, 0, 0], "null subleaf untouched");
        assert_eq!(leaf(&cpuid, 4, 3)[1..], [0x03c0_003f, 0x3fff, 6]);
        // Not AMD: 0x8000_0008 ECX stays as is.
        assert_eq!(leaf(&cpuid, 0x8000_0008, 0), [0x3027, 0, 0, 0]);
        // Others pass through.
        assert_eq!(leaf(&cpuid, 0x4000_0001, 0)[0], 0x01ff_ffff);
    }

    #[test]
    fn amd_topology_leaves() {
        for index in [0, 3] {
            let cpuid = vcpu_cpuid(&amd_host(), index, 4).unwrap();
            assert_eq!(leaf(&cpuid, 1, 0)[1] >> 24, index);
            assert_eq!(leaf(&cpuid, 0x8000_001e, 0), [index, index, 0, 0]);
            let [_, _, ecx, _] = leaf(&cpuid, 0x8000_0008, 0);
            assert_eq!(ecx, 0x0003_2003, "NC 3, core ID bits 2, PerfTscSize kept");
            assert_eq!((leaf(&cpuid, 0x8000_001d, 0)[0] >> 14) & 0xfff, 0);
            assert_eq!((leaf(&cpuid, 0x8000_001d, 1)[0] >> 14) & 0xfff, 3);
            // Max basic leaf 0x10: 0xB but no 0x1F.
            assert_eq!(leaf(&cpuid, 0xb, 1), [2, 4, 0x201, index]);
            assert!(find(&cpuid, 0x1f, 0).is_none());
        }
    }

    #[test]
    fn rejects_impossible_indices() {
        let host = intel_host();
        assert!(matches!(
            vcpu_cpuid(&host, 4, 4),
            Err(BootError::VcpuIndex { index: 4, vcpus: 4 })
        ));
        assert!(matches!(
            vcpu_cpuid(&host, 0, 0),
            Err(BootError::VcpuCount(0))
        ));
        assert!(matches!(
            vcpu_cpuid(&host, 0, MAX_VCPUS + 1),
            Err(BootError::VcpuCount(n)) if n == MAX_VCPUS + 1
        ));
        let last = vcpu_cpuid(&host, MAX_VCPUS - 1, MAX_VCPUS).unwrap();
        assert_eq!(leaf(&last, 1, 0)[1] >> 24, MAX_VCPUS - 1);
        assert_eq!(leaf(&last, 0xb, 1), [8, MAX_VCPUS, 0x201, MAX_VCPUS - 1]);
    }
}

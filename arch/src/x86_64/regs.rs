//! The boot vCPU's state for the 64-bit Linux boot protocol: GDT, empty IDT and identity-mapped
//! page tables in guest memory, and the segment, control, general-purpose, FPU, MSR and local
//! APIC values given to KVM before the first run.

use std::mem::size_of_val;

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::x86_64::boot::BootError;
use crate::x86_64::layout;

/// Segment descriptor access byte (bits 40..48).
const ACCESS_PRESENT: u8 = 1 << 7;
/// S: a code or data segment, not a system one.
const ACCESS_CODE_DATA: u8 = 1 << 4;
const TYPE_CODE_EXEC_READ_ACCESSED: u8 = 0xb;
const TYPE_DATA_READ_WRITE_ACCESSED: u8 = 0x3;
const TYPE_TSS_BUSY: u8 = 0xb;
/// Segment descriptor flags nibble (bits 52..56).
const FLAG_GRANULARITY_4K: u8 = 1 << 3;
const FLAG_DEFAULT_32: u8 = 1 << 2;
const FLAG_LONG_MODE: u8 = 1 << 1;
/// The largest 20-bit limit: 4 GiB with 4 KiB granularity.
const FLAT_LIMIT: u32 = 0xf_ffff;
/// A 64-bit TSS is 104 bytes.
const TSS_LIMIT: u32 = 0x67;

/// A GDT segment descriptor (Intel SDM Vol. 3A, 3.4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentDescriptor(pub u64);

impl SegmentDescriptor {
    /// `access` is the type, S, DPL and P byte; `flags` the AVL, L, D/B and G nibble.
    pub const fn new(base: u32, limit: u32, access: u8, flags: u8) -> Self {
        let (base, limit) = (base as u64, limit as u64);
        SegmentDescriptor(
            (limit & 0xffff)
                | (base & 0xff_ffff) << 16
                | (access as u64) << 40
                | ((limit >> 16) & 0xf) << 48
                | ((flags & 0xf) as u64) << 52
                | ((base >> 24) & 0xff) << 56,
        )
    }

    pub const fn base(self) -> u64 {
        ((self.0 >> 16) & 0xff_ffff) | ((self.0 >> 56) & 0xff) << 24
    }

    /// The 20-bit limit field, in bytes or 4 KiB units as G says.
    pub const fn raw_limit(self) -> u32 {
        ((self.0 & 0xffff) | ((self.0 >> 48) & 0xf) << 16) as u32
    }

    /// The last valid offset in bytes.
    pub const fn limit(self) -> u32 {
        if self.granularity_4k() {
            (self.raw_limit() << 12) | 0xfff
        } else {
            self.raw_limit()
        }
    }

    pub const fn segment_type(self) -> u8 {
        ((self.0 >> 40) & 0xf) as u8
    }

    /// S: a code or data segment (clear for system segments such as a TSS).
    pub const fn code_or_data(self) -> bool {
        self.0 & (1 << 44) != 0
    }

    pub const fn dpl(self) -> u8 {
        ((self.0 >> 45) & 0x3) as u8
    }

    pub const fn present(self) -> bool {
        self.0 & (1 << 47) != 0
    }

    pub const fn available(self) -> bool {
        self.0 & (1 << 52) != 0
    }

    pub const fn long_mode(self) -> bool {
        self.0 & (1 << 53) != 0
    }

    pub const fn default_32(self) -> bool {
        self.0 & (1 << 54) != 0
    }

    pub const fn granularity_4k(self) -> bool {
        self.0 & (1 << 55) != 0
    }

    /// The hidden segment-register state KVM loads for `selector` referring to this descriptor.
    pub fn to_kvm_segment(self, selector: u16) -> kvm_segment {
        kvm_segment {
            base: self.base(),
            limit: self.limit(),
            selector,
            type_: self.segment_type(),
            present: self.present().into(),
            dpl: self.dpl(),
            db: self.default_32().into(),
            s: self.code_or_data().into(),
            l: self.long_mode().into(),
            g: self.granularity_4k().into(),
            avl: self.available().into(),
            unusable: (!self.present()).into(),
            padding: 0,
        }
    }
}

/// The boot protocol asks for flat segments at `__BOOT_CS` (0x10) and `__BOOT_DS` (0x18); the TSS
/// takes the slot before them, so the GDT fits the four slots the layout leaves before the IDT.
pub const TSS_SELECTOR: u16 = 0x08;
pub const CODE_SELECTOR: u16 = 0x10;
pub const DATA_SELECTOR: u16 = 0x18;

/// The boot GDT. The TSS entry only records TR's state: a 64-bit TSS descriptor takes 16 bytes,
/// but the CPU reads this one only on `ltr`, and the kernel loads its own GDT and TR first.
pub const GDT: [SegmentDescriptor; 4] = [
    SegmentDescriptor(0),
    SegmentDescriptor::new(0, TSS_LIMIT, ACCESS_PRESENT | TYPE_TSS_BUSY, 0),
    SegmentDescriptor::new(
        0,
        FLAT_LIMIT,
        ACCESS_PRESENT | ACCESS_CODE_DATA | TYPE_CODE_EXEC_READ_ACCESSED,
        FLAG_GRANULARITY_4K | FLAG_LONG_MODE,
    ),
    SegmentDescriptor::new(
        0,
        FLAT_LIMIT,
        ACCESS_PRESENT | ACCESS_CODE_DATA | TYPE_DATA_READ_WRITE_ACCESSED,
        FLAG_GRANULARITY_4K | FLAG_DEFAULT_32,
    ),
];

const GDT_LIMIT: u16 = (size_of_val(&GDT) - 1) as u16;
/// One 16-byte interrupt gate, left not present: the guest runs with interrupts off until it
/// installs its own IDT, and any exception before that ends the VM (triple fault).
const IDT_LIMIT: u16 = 15;

const _: () = assert!(layout::GDT_ADDR + (GDT_LIMIT as u64) < layout::IDT_ADDR);
const _: () = assert!(GDT[(CODE_SELECTOR >> 3) as usize].long_mode());
const _: () = assert!(GDT[(DATA_SELECTOR >> 3) as usize].default_32());
const _: () = assert!(GDT[(TSS_SELECTOR >> 3) as usize].segment_type() == TYPE_TSS_BUSY);

/// Page-table entry bits.
pub const PTE_PRESENT: u64 = 1 << 0;
pub const PTE_WRITABLE: u64 = 1 << 1;
/// In a page directory entry: maps a 2 MiB page instead of pointing to a page table.
pub const PTE_HUGE: u64 = 1 << 7;
const ENTRIES_PER_TABLE: u64 = 512;
const HUGE_PAGE_SIZE: u64 = 2 << 20;

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

// The boot stack lies in the free page between the zero page and the page tables.
const _: () = assert!(layout::BOOT_STACK > layout::ZERO_PAGE + 0x1000);
const _: () = assert!(layout::BOOT_STACK <= layout::PML4);

/// Bit 1 of RFLAGS is reserved and always set.
const RFLAGS_RESERVED: u64 = 1 << 1;

/// x87 control word after FNINIT: all exceptions masked, 64-bit precision, round to nearest.
const FPU_FCW: u16 = 0x37f;
/// MXCSR at reset: all SIMD exceptions masked.
const FPU_MXCSR: u32 = 0x1f80;

pub const MSR_IA32_TSC: u32 = 0x10;
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
pub const MSR_STAR: u32 = 0xc000_0081;
pub const MSR_LSTAR: u32 = 0xc000_0082;
pub const MSR_CSTAR: u32 = 0xc000_0083;
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// IA32_MISC_ENABLE bit 0: fast-string operations (`rep movs`/`stos`).
pub const MISC_ENABLE_FAST_STRING: u64 = 1 << 0;

/// Local APIC LVT registers, as offsets into the APIC page (and `kvm_lapic_state::regs`).
pub const APIC_LVT_LINT0: usize = 0x350;
pub const APIC_LVT_LINT1: usize = 0x360;

/// LVT delivery modes (bits 8..11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum DeliveryMode {
    Fixed = 0b000,
    Nmi = 0b100,
    ExtInt = 0b111,
}

const LVT_DELIVERY_MODE_SHIFT: u32 = 8;
const LVT_DELIVERY_MODE_MASK: u32 = 0b111 << LVT_DELIVERY_MODE_SHIFT;

/// Writes the GDT at [`layout::GDT_ADDR`], an empty IDT at [`layout::IDT_ADDR`], and page tables
/// at [`layout::PML4`], [`layout::PDPT`] and [`layout::PD`] identity-mapping the first 1 GiB
/// with 2 MiB pages.
pub fn setup_boot_memory<M: GuestMemory>(mem: &M) -> Result<(), BootError> {
    let gdt: Vec<u8> = GDT.iter().flat_map(|d| d.0.to_le_bytes()).collect();
    write(mem, "GDT", layout::GDT_ADDR, &gdt)?;
    write(mem, "IDT", layout::IDT_ADDR, &[0; IDT_LIMIT as usize + 1])?;

    let mut pml4 = [0u64; ENTRIES_PER_TABLE as usize];
    pml4[0] = layout::PDPT | PTE_PRESENT | PTE_WRITABLE;
    let mut pdpt = [0u64; ENTRIES_PER_TABLE as usize];
    pdpt[0] = layout::PD | PTE_PRESENT | PTE_WRITABLE;
    let mut pd = [0u64; ENTRIES_PER_TABLE as usize];
    for (i, entry) in (0u64..).zip(pd.iter_mut()) {
        *entry = (i * HUGE_PAGE_SIZE) | PTE_PRESENT | PTE_WRITABLE | PTE_HUGE;
    }
    for (what, addr, table) in [
        ("PML4", layout::PML4, &pml4),
        ("PDPT", layout::PDPT, &pdpt),
        ("page directory", layout::PD, &pd),
    ] {
        let bytes: Vec<u8> = table.iter().flat_map(|e| e.to_le_bytes()).collect();
        write(mem, what, addr, &bytes)?;
    }
    Ok(())
}

fn write<M: GuestMemory>(
    mem: &M,
    what: &'static str,
    addr: u64,
    bytes: &[u8],
) -> Result<(), BootError> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|source| BootError::GuestWrite { what, addr, source })
}

/// Long-mode special registers for the boot vCPU. Everything not named here (APIC base, CR8,
/// LDT, pending interrupts) is kept from `base`, normally the vCPU's KVM_GET_SREGS state.
pub fn boot_sregs(base: &kvm_sregs) -> kvm_sregs {
    let code = GDT[usize::from(CODE_SELECTOR >> 3)].to_kvm_segment(CODE_SELECTOR);
    let data = GDT[usize::from(DATA_SELECTOR >> 3)].to_kvm_segment(DATA_SELECTOR);
    let tss = GDT[usize::from(TSS_SELECTOR >> 3)].to_kvm_segment(TSS_SELECTOR);
    let mut sregs = *base;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.gdt.base = layout::GDT_ADDR;
    sregs.gdt.limit = GDT_LIMIT;
    sregs.idt.base = layout::IDT_ADDR;
    sregs.idt.limit = IDT_LIMIT;
    // Caches on (CD and NW clear), paging on: the kernel sets its own CR0 soon after entry.
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.cr3 = layout::PML4;
    sregs.cr4 = X86_CR4_PAE;
    sregs.efer = EFER_LME | EFER_LMA;
    sregs
}

/// General-purpose registers for entering the kernel at `entry` with the zero page in RSI.
pub fn boot_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rsi: layout::ZERO_PAGE,
        rsp: layout::BOOT_STACK,
        rbp: layout::BOOT_STACK,
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    }
}

/// The FPU state after FNINIT with MXCSR at its reset value.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: FPU_FCW,
        mxcsr: FPU_MXCSR,
        ..Default::default()
    }
}

/// MSRs for the boot vCPU: system-call entry points cleared, TSC from zero, fast strings on.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

/// Routes the local APIC's LINT0 to ExtINT (the legacy PIC) and LINT1 to NMI, as a PC BIOS does.
pub fn set_lint(lapic: &mut kvm_lapic_state) {
    set_delivery_mode(lapic, APIC_LVT_LINT0, DeliveryMode::ExtInt);
    set_delivery_mode(lapic, APIC_LVT_LINT1, DeliveryMode::Nmi);
}

fn set_delivery_mode(lapic: &mut kvm_lapic_state, offset: usize, mode: DeliveryMode) {
    let lvt = lapic_reg(lapic, offset);
    let lvt = (lvt & !LVT_DELIVERY_MODE_MASK) | ((mode as u32) << LVT_DELIVERY_MODE_SHIFT);
    for (dst, byte) in lapic.regs[offset..offset + 4]
        .iter_mut()
        .zip(lvt.to_le_bytes())
    {
        *dst = byte as _;
    }
}

/// A 32-bit APIC register from the KVM APIC page image.
pub fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let mut bytes = [0u8; 4];
    for (dst, src) in bytes.iter_mut().zip(&lapic.regs[offset..offset + 4]) {
        *dst = *src as u8;
    }
    u32::from_le_bytes(bytes)
}

/// The delivery mode field of an LVT register value.
pub fn lvt_delivery_mode(lvt: u32) -> u32 {
    (lvt & LVT_DELIVERY_MODE_MASK) >> LVT_DELIVERY_MODE_SHIFT
}

#[cfg(test)]
mod tests {
    use super::*;

    type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    const PTE_ADDRESS: u64 = 0x000f_ffff_ffff_f000;

    fn boot_memory(size: u64) -> GuestMemoryMmap {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap();
        setup_boot_memory(&mem).unwrap();
        mem
    }

    fn read_u64(mem: &GuestMemoryMmap, addr: u64) -> u64 {
        mem.read_obj(GuestAddress(addr)).unwrap()
    }

    fn gdt_entry(mem: &GuestMemoryMmap, selector: u16) -> SegmentDescriptor {
        SegmentDescriptor(read_u64(mem, layout::GDT_ADDR + u64::from(selector)))
    }

    #[test]
    fn descriptor_fields_round_trip() {
        let d = SegmentDescriptor::new(0x1234_5678, 0xa_bcde, 0x9b, 0xd);
        assert_eq!(d.base(), 0x1234_5678);
        assert_eq!(d.raw_limit(), 0xa_bcde);
        assert_eq!(d.limit(), 0xabcd_efff);
        assert_eq!(d.segment_type(), 0xb);
        assert!(d.code_or_data() && d.present() && d.available() && d.default_32());
        assert!(d.granularity_4k() && !d.long_mode());
        assert_eq!(d.dpl(), 0);
        // The classic encodings of flat 64-bit code and 32-bit data.
        assert_eq!(GDT[2].0, 0x00af_9b00_0000_ffff);
        assert_eq!(GDT[3].0, 0x00cf_9300_0000_ffff);
    }

    #[test]
    fn gdt_in_memory_decodes_to_flat_segments() {
        let mem = boot_memory(2 * MIB);
        assert_eq!(read_u64(&mem, layout::GDT_ADDR), 0, "null descriptor");

        let code = gdt_entry(&mem, CODE_SELECTOR);
        assert_eq!((code.base(), code.limit()), (0, 0xffff_ffff));
        assert!(code.present() && code.code_or_data() && code.long_mode());
        assert!(!code.default_32(), "L with D/B set is reserved");
        assert_eq!(
            (code.segment_type(), code.dpl()),
            (TYPE_CODE_EXEC_READ_ACCESSED, 0)
        );

        let data = gdt_entry(&mem, DATA_SELECTOR);
        assert_eq!((data.base(), data.limit()), (0, 0xffff_ffff));
        assert!(data.present() && data.code_or_data() && data.default_32());
        assert!(!data.long_mode());
        assert_eq!(
            (data.segment_type(), data.dpl()),
            (TYPE_DATA_READ_WRITE_ACCESSED, 0)
        );

        let tss = gdt_entry(&mem, TSS_SELECTOR);
        assert_eq!((tss.base(), tss.limit()), (0, TSS_LIMIT));
        assert!(tss.present() && !tss.code_or_data() && !tss.granularity_4k());
        assert_eq!(tss.segment_type(), TYPE_TSS_BUSY);

        let mut idt = [0xffu8; 16];
        mem.read_slice(&mut idt, GuestAddress(layout::IDT_ADDR))
            .unwrap();
        assert_eq!(idt, [0; 16]);
    }

    /// Walks the 4-level page tables from CR3 = PML4.
    fn translate(mem: &GuestMemoryMmap, va: u64) -> Option<u64> {
        let pml4e = read_u64(mem, layout::PML4 + ((va >> 39) & 0x1ff) * 8);
        if pml4e & PTE_PRESENT == 0 {
            return None;
        }
        let pdpte = read_u64(mem, (pml4e & PTE_ADDRESS) + ((va >> 30) & 0x1ff) * 8);
        if pdpte & PTE_PRESENT == 0 || pdpte & PTE_HUGE != 0 {
            return None;
        }
        let pde = read_u64(mem, (pdpte & PTE_ADDRESS) + ((va >> 21) & 0x1ff) * 8);
        if pde & PTE_PRESENT == 0 || pde & PTE_HUGE == 0 || pde & PTE_WRITABLE == 0 {
            return None;
        }
        Some((pde & PTE_ADDRESS & !(HUGE_PAGE_SIZE - 1)) | (va & (HUGE_PAGE_SIZE - 1)))
    }

    #[test]
    fn page_tables_identity_map_the_first_gib() {
        let mem = boot_memory(2 * MIB);
        for va in (0..GIB).step_by(HUGE_PAGE_SIZE as usize).chain([
            0x1234,
            layout::HIMEM_START + 0x200,
            0x3fff_f000,
            GIB - 1,
        ]) {
            assert_eq!(translate(&mem, va), Some(va), "{va:#x}");
        }
        assert_eq!(translate(&mem, GIB), None);
        assert_eq!(translate(&mem, 512 * GIB), None);
    }

    #[test]
    fn sregs_enter_long_mode() {
        let base = kvm_sregs {
            apic_base: 0xfee0_0900,
            cr0: 0x6000_0010,
            cr8: 3,
            ..Default::default()
        };
        let s = boot_sregs(&base);
        assert_eq!(s.cr0, 0x8000_0011);
        assert_eq!(s.cr3, layout::PML4);
        assert_eq!(s.cr4, 0x20);
        assert_eq!(s.efer, 0x500);
        assert_eq!((s.apic_base, s.cr8), (0xfee0_0900, 3));
        assert_eq!((s.gdt.base, s.gdt.limit), (layout::GDT_ADDR, 0x1f));
        assert_eq!((s.idt.base, s.idt.limit), (layout::IDT_ADDR, 15));
        assert_eq!(
            (s.cs.selector, s.cs.l, s.cs.db, s.cs.type_),
            (0x10, 1, 0, 0xb)
        );
        assert_eq!((s.cs.base, s.cs.limit, s.cs.g), (0, 0xffff_ffff, 1));
        for seg in [s.ds, s.es, s.fs, s.gs, s.ss] {
            assert_eq!((seg.selector, seg.type_, seg.s, seg.db), (0x18, 3, 1, 1));
            assert_eq!((seg.present, seg.unusable, seg.dpl), (1, 0, 0));
        }
        assert_eq!((s.tr.selector, s.tr.type_, s.tr.s), (0x08, 0xb, 0));
        assert_eq!((s.tr.limit, s.tr.present), (0x67, 1));
    }

    #[test]
    fn regs_fpu_msrs() {
        let regs = boot_regs(0x10_0200);
        assert_eq!(regs.rip, 0x10_0200);
        assert_eq!(regs.rsi, layout::ZERO_PAGE);
        assert_eq!(regs.rflags, 2);
        assert_eq!(
            (regs.rsp, regs.rbp),
            (layout::BOOT_STACK, layout::BOOT_STACK)
        );

        let fpu = boot_fpu();
        assert_eq!((fpu.fcw, fpu.mxcsr), (0x37f, 0x1f80));

        let msrs = boot_msrs();
        let find = |index| msrs.iter().find(|m| m.index == index).map(|m| m.data);
        assert_eq!(find(MSR_IA32_MISC_ENABLE), Some(1));
        assert_eq!(find(MSR_IA32_TSC), Some(0));
        for index in [
            MSR_IA32_SYSENTER_CS,
            MSR_IA32_SYSENTER_ESP,
            MSR_IA32_SYSENTER_EIP,
            MSR_STAR,
            MSR_CSTAR,
            MSR_KERNEL_GS_BASE,
            MSR_SYSCALL_MASK,
            MSR_LSTAR,
        ] {
            assert_eq!(find(index), Some(0), "MSR {index:#x}");
        }
        assert_eq!(msrs.len(), 10);
    }

    #[test]
    fn lint_pins_get_extint_and_nmi() {
        let mut lapic = kvm_lapic_state::default();
        // Masked, level-triggered, Fixed: other bits must survive.
        for offset in [APIC_LVT_LINT0, APIC_LVT_LINT1] {
            for (i, b) in 0x0001_8000u32.to_le_bytes().into_iter().enumerate() {
                lapic.regs[offset + i] = b as _;
            }
        }
        set_lint(&mut lapic);
        let lint0 = lapic_reg(&lapic, APIC_LVT_LINT0);
        let lint1 = lapic_reg(&lapic, APIC_LVT_LINT1);
        assert_eq!(lint0, 0x0001_8700);
        assert_eq!(lint1, 0x0001_8400);
        assert_eq!(lvt_delivery_mode(lint0), DeliveryMode::ExtInt as u32);
        assert_eq!(lvt_delivery_mode(lint1), DeliveryMode::Nmi as u32);
    }

    /// Runs the boot state on this host's /dev/kvm.
    mod kvm {
        use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, Msrs, kvm_userspace_memory_region};
        use kvm_ioctls::{Kvm, VcpuExit, VmFd};
        use vm_memory::GuestMemoryBackend;

        use super::*;
        use crate::x86_64::cpuid::vcpu_cpuid;

        const MEM_SIZE: u64 = 4 * MIB;
        const ENTRY: u64 = layout::HIMEM_START + 0x200;

        fn open_kvm() -> Option<Kvm> {
            if !std::path::Path::new("/dev/kvm").exists() {
                eprintln!("skipped: no /dev/kvm on this host");
                return None;
            }
            Some(Kvm::new().expect("/dev/kvm exists but cannot be opened"))
        }

        /// Gives `vm` the memory of `mem`, which must outlive it.
        fn map(vm: &VmFd, mem: &GuestMemoryMmap) {
            let host = mem.get_host_address(GuestAddress(0)).unwrap();
            let region = kvm_userspace_memory_region {
                slot: 0,
                flags: 0,
                guest_phys_addr: 0,
                memory_size: MEM_SIZE,
                userspace_addr: host as u64,
            };
            // SAFETY: `host` is the start of one mapping of MEM_SIZE bytes owned by `mem`, which
            // every caller declares before the VM so that it is dropped after it.
            unsafe { vm.set_user_memory_region(region) }.unwrap();
        }

        /// 64-bit code: CPUID leaves 1 and 0xB into EDI and R8, a 64-bit immediate through the
        /// stack into RBX, then 'K' to COM1 and HLT. In 32-bit mode the REX prefixes decode as
        /// `dec`/`inc` and the immediate as code, so the result shows the vCPU was in long mode.
        const PAYLOAD: &[u8] = &[
            0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax, 1
            0x31, 0xc9, // xor ecx, ecx
            0x0f, 0xa2, // cpuid
            0x89, 0xdf, // mov edi, ebx
            0xb8, 0x0b, 0x00, 0x00, 0x00, // mov eax, 0xb
            0x31, 0xc9, // xor ecx, ecx
            0x0f, 0xa2, // cpuid
            0x49, 0x89, 0xd0, // mov r8, rdx
            0x48, 0xb8, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, // mov rax, imm64
            0x50, // push rax
            0x5b, // pop rbx
            0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
            0xb0, b'K', // mov al, 'K'
            0xee, // out dx, al
            0xf4, // hlt
        ];

        #[test]
        fn long_mode_payload_runs() {
            let Some(kvm) = open_kvm() else { return };
            let mem = boot_memory(MEM_SIZE);
            mem.write_slice(PAYLOAD, GuestAddress(ENTRY)).unwrap();
            let vm = kvm.create_vm().unwrap();
            map(&vm, &mem);

            // vCPU 3 of 4, so the APIC IDs the guest reads are not zero by accident.
            let mut vcpu = vm.create_vcpu(3).unwrap();
            let supported = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
            vcpu.set_cpuid2(&vcpu_cpuid(&supported, 3, 4).unwrap())
                .unwrap();
            let sregs = boot_sregs(&vcpu.get_sregs().unwrap());
            vcpu.set_sregs(&sregs).unwrap();
            vcpu.set_regs(&boot_regs(ENTRY)).unwrap();
            vcpu.set_fpu(&boot_fpu()).unwrap();
            let msrs = Msrs::from_entries(&boot_msrs()).unwrap();
            assert_eq!(vcpu.set_msrs(&msrs).unwrap(), boot_msrs().len());

            match vcpu.run().unwrap() {
                VcpuExit::IoOut(port, data) => {
                    assert_eq!(port, layout::COM1_PORT);
                    assert_eq!(data, b"K");
                }
                other => panic!("expected the write to COM1, got {other:?}"),
            }
            match vcpu.run().unwrap() {
                VcpuExit::Hlt => {}
                other => panic!("expected HLT, got {other:?}"),
            }

            let regs = vcpu.get_regs().unwrap();
            assert_eq!(regs.rbx, 0x1122_3344_5566_7788);
            assert_eq!(regs.rax, 0x1122_3344_5566_774b);
            assert_eq!(regs.rsp, layout::BOOT_STACK);
            assert_eq!(regs.rdi >> 24, 3, "CPUID.1:EBX initial APIC ID");
            assert_eq!(regs.r8, 3, "CPUID.0xB:EDX x2APIC ID");
            assert_eq!(regs.rip, ENTRY + PAYLOAD.len() as u64);
            let sregs = vcpu.get_sregs().unwrap();
            assert_ne!(sregs.efer & EFER_LMA, 0);
            assert_eq!(sregs.cs.l, 1);
        }

        #[test]
        fn lint_routing_is_accepted_by_kvm() {
            let Some(kvm) = open_kvm() else { return };
            let vm = kvm.create_vm().unwrap();
            vm.create_irq_chip().unwrap();
            let vcpu = vm.create_vcpu(0).unwrap();
            let mut lapic = vcpu.get_lapic().unwrap();
            set_lint(&mut lapic);
            vcpu.set_lapic(&lapic).unwrap();
            let back = vcpu.get_lapic().unwrap();
            let mode = |offset| lvt_delivery_mode(lapic_reg(&back, offset));
            assert_eq!(mode(APIC_LVT_LINT0), DeliveryMode::ExtInt as u32);
            assert_eq!(mode(APIC_LVT_LINT1), DeliveryMode::Nmi as u32);
        }
    }
}

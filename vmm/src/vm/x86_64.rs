//! x86_64 specifics of the VM build: in-kernel irqchip and PIT, COM1, the ACPI power block, the
//! bzImage, initramfs, ACPI tables, zero page and the boot CPU state.

use std::sync::{Arc, Mutex};

use arch::platform::ArchParts;
use arch::x86_64::{boot, cpuid, layout, regs};
use devices::bus::BusDevice;
use devices::power::{AcpiPowerBlock, POWER_BLOCK_SIZE, PowerEvents};
use devices::serial::SERIAL_REGISTERS;
use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY, Msrs, kvm_pit_config};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};

use super::exit::{ExitSignal, GuestExit};
use super::{BuildContext, VmError, kvm_err};
use crate::payload::PayloadError;

/// Nothing beyond the VM fd needs keeping alive on x86.
pub struct ArchState;

/// Why the boot state of an x86 guest cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("the plan is for another architecture than this x86 host")]
    OtherArch,
    #[error("loading the payload")]
    Payload(#[from] PayloadError),
    #[error("writing the zero page and the command line")]
    BootParams(#[source] boot::BootError),
    #[error("writing the boot page tables and GDT")]
    BootMemory(#[source] boot::BootError),
    #[error("the boot MSR list")]
    MsrList(#[source] vmm_sys_util::fam::Error),
    #[error("KVM refused boot MSR {0:#x}")]
    MsrRefused(u32),
    #[error("the CPUID of vCPU {index}")]
    Cpuid {
        index: u32,
        #[source]
        source: boot::BootError,
    },
}

/// The TSS needs three pages of guest physical space outside RAM; KVM's customary spot.
const TSS_ADDRESS: usize = 0xfffb_d000;

/// The GSI table: KVM's PIC and I/O APIC lines, MSIs above.
pub fn irq_routing(vm: &Arc<VmFd>, platform: &arch::platform::Platform) -> super::irq::IrqRouting {
    let pins = match platform.interrupt_controller {
        arch::platform::InterruptController::X86Apic { ioapic_pins, .. } => ioapic_pins,
        _ => layout::IOAPIC_PINS,
    };
    super::irq::IrqRouting::for_ioapic(vm.clone(), pins)
}

pub fn create_vm(kvm: &Kvm) -> Result<VmFd, VmError> {
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    vm.set_tss_address(TSS_ADDRESS)
        .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip()
        .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
    Ok(vm)
}

/// Guest power requests become the VM's exit reason.
struct ExitOnPower(Arc<ExitSignal>);

impl PowerEvents for ExitOnPower {
    fn power_off(&self) {
        self.0.report(GuestExit::PowerOff);
    }
    fn reset(&self) {
        self.0.report(GuestExit::Reset);
    }
}

pub(crate) fn setup(ctx: &mut BuildContext) -> Result<(Vec<VcpuFd>, ArchState), VmError> {
    attach_devices(ctx)?;

    let tables = ctx
        .payload
        .load(ctx.memory, ctx.plan)
        .map_err(BootError::Payload)?;
    let rsdp = tables.rsdp.unwrap_or(0);
    boot::write_boot_params(ctx.memory, &ctx.plan.platform, ctx.payload.bzimage(), rsdp)
        .map_err(BootError::BootParams)?;
    regs::setup_boot_memory(ctx.memory).map_err(BootError::BootMemory)?;

    let vcpus = create_vcpus(ctx, ctx.plan.boot.entry)?;
    Ok((vcpus, ArchState))
}

fn attach_devices(ctx: &mut BuildContext) -> Result<(), VmError> {
    let ArchParts::X86_64(parts) = ctx.plan.parts() else {
        return Err(BootError::OtherArch.into());
    };
    if let (Some(serial), Some(uart), Some(irq)) = (&ctx.serial, parts.uart, &ctx.serial_irq) {
        let device: Arc<Mutex<dyn BusDevice>> = serial.clone();
        ctx.buses
            .pio
            .insert(u64::from(uart.port), SERIAL_REGISTERS, device)?;
        ctx.vm
            .register_irqfd(irq, uart.gsi)
            .map_err(kvm_err("KVM_IRQFD for COM1"))?;
    }
    let power = parts.power;
    let block = AcpiPowerBlock::new(
        power.s5_sleep_type,
        power.reset_value,
        Box::new(ExitOnPower(ctx.exit.clone())),
    );
    ctx.buses.pio.insert(
        u64::from(power.sleep_control),
        POWER_BLOCK_SIZE,
        Arc::new(Mutex::new(block)),
    )?;
    Ok(())
}

fn create_vcpus(ctx: &BuildContext, entry: u64) -> Result<Vec<VcpuFd>, VmError> {
    let supported = ctx
        .kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    let count = ctx.plan.vcpus;
    let msrs = Msrs::from_entries(&regs::boot_msrs()).map_err(BootError::MsrList)?;
    (0..count)
        .map(|index| {
            let vcpu = ctx
                .vm
                .create_vcpu(u64::from(index))
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            let cpuid = cpuid::vcpu_cpuid(&supported, index, count)
                .map_err(|source| BootError::Cpuid { index, source })?;
            vcpu.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
            let written = vcpu.set_msrs(&msrs).map_err(kvm_err("KVM_SET_MSRS"))?;
            if written != msrs.as_slice().len() {
                let refused = msrs.as_slice().get(written).map_or(0, |m| m.index);
                return Err(BootError::MsrRefused(refused).into());
            }
            let sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
            vcpu.set_sregs(&regs::boot_sregs(&sregs))
                .map_err(kvm_err("KVM_SET_SREGS"))?;
            vcpu.set_regs(&regs::boot_regs(entry))
                .map_err(kvm_err("KVM_SET_REGS"))?;
            vcpu.set_fpu(&regs::boot_fpu())
                .map_err(kvm_err("KVM_SET_FPU"))?;
            let mut lapic = vcpu.get_lapic().map_err(kvm_err("KVM_GET_LAPIC"))?;
            regs::set_lint(&mut lapic);
            vcpu.set_lapic(&lapic).map_err(kvm_err("KVM_SET_LAPIC"))?;
            Ok(vcpu)
        })
        .collect()
}

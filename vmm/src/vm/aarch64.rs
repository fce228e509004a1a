//! aarch64 specifics of the VM build: vCPUs with PSCI, the GICv3 + ITS through KVM, the UART, the
//! kernel Image, initramfs and the device tree or ACPI tables.

use std::mem::offset_of;
use std::sync::Arc;

use arch::platform::{Aarch64Parts, ArchParts, Gic, InterruptController, UartModel};
use devices::pl011::PL011_REGISTERS;
use devices::serial::SERIAL_REGISTERS;
use kvm_bindings::{
    KVM_ARM_VCPU_POWER_OFF, KVM_ARM_VCPU_PSCI_0_2, KVM_DEV_ARM_VGIC_CTRL_INIT,
    KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
    KVM_REG_ARM_CORE, KVM_REG_ARM64, KVM_REG_SIZE_U64, KVM_VGIC_ITS_ADDR_TYPE,
    KVM_VGIC_V3_ADDR_TYPE_DIST, KVM_VGIC_V3_ADDR_TYPE_REDIST, kvm_create_device, kvm_device_attr,
    kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_ITS, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3, kvm_regs,
    kvm_vcpu_init, user_pt_regs,
};
use kvm_ioctls::{DeviceFd, Kvm, VcpuFd, VmFd};

use super::{BuildContext, VmError, kvm_err};
use crate::payload::PayloadError;

/// Kept alive for the VM's lifetime: the vGIC and its ITS.
pub struct ArchState {
    _gic: DeviceFd,
    _its: DeviceFd,
}

/// Why the boot state of an aarch64 guest cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("the plan is for another architecture than this aarch64 host")]
    OtherArch,
    #[error("loading the payload")]
    Payload(#[from] PayloadError),
    #[error("the boot layout has no device tree for X0")]
    NoDeviceTree,
}

/// The GSI table: every SPI on the vGIC, MSIs above.
pub fn irq_routing(vm: &Arc<VmFd>, platform: &arch::platform::Platform) -> super::irq::IrqRouting {
    let spis = match platform.interrupt_controller {
        InterruptController::GicV3 { nr_irqs, .. } => nr_irqs.saturating_sub(32),
        _ => 0,
    };
    super::irq::IrqRouting::for_gic(vm.clone(), spis)
}

pub fn create_vm(kvm: &Kvm) -> Result<VmFd, VmError> {
    kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))
}

pub(crate) fn setup(ctx: &mut BuildContext) -> Result<(Vec<VcpuFd>, ArchState), VmError> {
    let ArchParts::Aarch64(parts) = *ctx.plan.parts() else {
        return Err(BootError::OtherArch.into());
    };
    // vCPUs exist before the vGIC is initialised: it sizes its redistributors by them.
    let vcpus = create_vcpus(ctx.vm, ctx.plan.vcpus)?;
    let (gic, its) = create_gic(ctx.vm, &parts.gic)?;
    attach_serial(ctx, &parts)?;

    ctx.payload
        .load(ctx.memory, ctx.plan)
        .map_err(BootError::Payload)?;
    let fdt = ctx.plan.boot.device_tree.ok_or(BootError::NoDeviceTree)?;
    set_boot_registers(&vcpus[0], ctx.plan.boot.entry, fdt.base)?;
    Ok((
        vcpus,
        ArchState {
            _gic: gic,
            _its: its,
        },
    ))
}

fn create_vcpus(vm: &VmFd, count: u32) -> Result<Vec<VcpuFd>, VmError> {
    let mut init = kvm_vcpu_init::default();
    vm.get_preferred_target(&mut init)
        .map_err(kvm_err("KVM_ARM_PREFERRED_TARGET"))?;
    init.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;
    (0..count)
        .map(|index| {
            let vcpu = vm
                .create_vcpu(u64::from(index))
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            let mut this = init;
            // Secondary vCPUs wait for PSCI CPU_ON.
            if index > 0 {
                this.features[0] |= 1 << KVM_ARM_VCPU_POWER_OFF;
            }
            vcpu.vcpu_init(&this)
                .map_err(kvm_err("KVM_ARM_VCPU_INIT"))?;
            Ok(vcpu)
        })
        .collect()
}

fn set_attr(
    dev: &DeviceFd,
    group: u32,
    attr: u64,
    value: u64,
    step: &'static str,
) -> Result<(), VmError> {
    let attr = kvm_device_attr {
        group,
        attr,
        addr: &value as *const u64 as u64,
        flags: 0,
    };
    dev.set_device_attr(&attr).map_err(kvm_err(step))
}

fn create_device(vm: &VmFd, kind: u32, step: &'static str) -> Result<DeviceFd, VmError> {
    let mut dev = kvm_create_device {
        type_: kind,
        fd: 0,
        flags: 0,
    };
    vm.create_device(&mut dev).map_err(kvm_err(step))
}

fn create_gic(vm: &VmFd, gic_plan: &Gic) -> Result<(DeviceFd, DeviceFd), VmError> {
    let Gic {
        distributor,
        redistributors,
        its,
        nr_irqs,
        ..
    } = gic_plan;
    let gic = create_device(
        vm,
        kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
        "creating the vGICv3 (KVM_CREATE_DEVICE)",
    )?;
    let addr = KVM_DEV_ARM_VGIC_GRP_ADDR;
    set_attr(
        &gic,
        addr,
        u64::from(KVM_VGIC_V3_ADDR_TYPE_DIST),
        distributor.base,
        "vGIC distributor address",
    )?;
    set_attr(
        &gic,
        addr,
        u64::from(KVM_VGIC_V3_ADDR_TYPE_REDIST),
        redistributors.base,
        "vGIC redistributor address",
    )?;
    let its_dev = create_device(
        vm,
        kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_ITS,
        "creating the vGIC ITS (KVM_CREATE_DEVICE)",
    )?;
    set_attr(
        &its_dev,
        addr,
        u64::from(KVM_VGIC_ITS_ADDR_TYPE),
        its.base,
        "vGIC ITS address",
    )?;
    set_attr(
        &its_dev,
        KVM_DEV_ARM_VGIC_GRP_CTRL,
        u64::from(KVM_DEV_ARM_VGIC_CTRL_INIT),
        0,
        "initialising the vGIC ITS",
    )?;
    // NR_IRQS takes its value by pointer to a u32.
    let irqs = *nr_irqs;
    let attr = kvm_device_attr {
        group: KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
        attr: 0,
        addr: &irqs as *const u32 as u64,
        flags: 0,
    };
    gic.set_device_attr(&attr)
        .map_err(kvm_err("vGIC interrupt count"))?;
    set_attr(
        &gic,
        KVM_DEV_ARM_VGIC_GRP_CTRL,
        u64::from(KVM_DEV_ARM_VGIC_CTRL_INIT),
        0,
        "initialising the vGIC",
    )?;
    Ok((gic, its_dev))
}

fn attach_serial(ctx: &mut BuildContext, parts: &Aarch64Parts) -> Result<(), VmError> {
    let (Some(serial), Some(uart), Some(irq)) = (&ctx.serial, parts.uart, &ctx.serial_irq) else {
        return Ok(());
    };
    let registers = match uart.model {
        UartModel::Ns16550a => SERIAL_REGISTERS,
        UartModel::Pl011 => PL011_REGISTERS,
    };
    ctx.buses
        .mmio
        .insert(u64::from(uart.base), registers, serial.clone())?;
    // With the vGIC's default routing, GSI n is SPI n.
    ctx.vm
        .register_irqfd(irq, uart.spi)
        .map_err(kvm_err("KVM_IRQFD for the UART"))?;
    Ok(())
}

/// The arm64 boot protocol: PC at the kernel entry, X0 = device tree, EL1h with interrupts masked.
fn set_boot_registers(vcpu: &VcpuFd, entry: u64, fdt: u64) -> Result<(), VmError> {
    const PSTATE_EL1H_MASKED: u64 = 0x3c5; // D, A, I, F masked; EL1 with SP_EL1
    let core = |offset: usize| {
        KVM_REG_ARM64 | KVM_REG_SIZE_U64 | u64::from(KVM_REG_ARM_CORE) | (offset / 4) as u64
    };
    let regs = offset_of!(kvm_regs, regs);
    for (offset, value, what) in [
        (
            regs + offset_of!(user_pt_regs, pstate),
            PSTATE_EL1H_MASKED,
            "setting PSTATE",
        ),
        (regs + offset_of!(user_pt_regs, pc), entry, "setting PC"),
        (regs + offset_of!(user_pt_regs, regs), fdt, "setting X0"),
    ] {
        vcpu.set_one_reg(core(offset), &value.to_le_bytes())
            .map_err(kvm_err(what))?;
    }
    Ok(())
}

//! aarch64 specifics of the VM build: vCPUs with PSCI, the GICv3 + ITS through KVM, the UART, the
//! kernel Image, initramfs and the device tree or ACPI tables.

use std::mem::offset_of;
use std::sync::{Arc, Mutex};

use arch::aarch64::{efi, fdt, image};
use arch::platform::{FirmwareInterface, InterruptController, RegisterSpace};
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

/// Kept alive for the VM's lifetime: the vGIC and its ITS.
pub struct ArchState {
    _gic: DeviceFd,
    _its: DeviceFd,
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
    // vCPUs exist before the vGIC is initialised: it sizes its redistributors by them.
    let vcpus = create_vcpus(ctx.vm, ctx.platform.vcpus)?;
    let (gic, its) = create_gic(ctx.vm, &ctx.platform.interrupt_controller)?;
    attach_serial(ctx)?;

    let ram = ctx.platform.memory[0];
    let kernel_path = ctx
        .config
        .payload
        .kernel
        .clone()
        .expect("validated: kernel set");
    let mut kernel_file = ctx.open_payload("opening the kernel", &kernel_path)?;
    let kernel =
        image::load_kernel(ctx.memory, ram, &mut kernel_file).map_err(|e| VmError::Kernel {
            path: kernel_path.clone(),
            message: e.to_string(),
        })?;
    // The device tree carries the command line: check it against the arm64 kernel's buffer.
    image::kernel_cmdline(&ctx.platform.cmdline).map_err(|e| VmError::Kernel {
        path: kernel_path.clone(),
        message: e.to_string(),
    })?;
    let initrd_size = match &ctx.config.payload.initramfs {
        Some(path) => Some(
            std::fs::metadata(path)
                .map_err(|source| VmError::File {
                    what: "reading the size of the initramfs",
                    path: path.clone(),
                    source,
                })?
                .len(),
        ),
        None => None,
    };
    let layout = image::boot_layout(ram, &kernel, initrd_size).map_err(|e| VmError::Kernel {
        path: kernel_path.clone(),
        message: e.to_string(),
    })?;
    if let (Some(path), Some(range)) = (&ctx.config.payload.initramfs, layout.initrd) {
        let data = std::fs::read(path).map_err(|source| VmError::File {
            what: "reading the initramfs",
            path: path.clone(),
            source,
        })?;
        if data.len() as u64 != range.size {
            return Err(VmError::Initramfs {
                path: path.clone(),
                message: "changed size while being loaded".into(),
            });
        }
        ctx.write_blob("the initramfs", range.base, &data)?;
        *ctx.platform = ctx.platform.clone().with_initrd(range)?;
    }

    let dtb = match ctx.platform.firmware {
        FirmwareInterface::DeviceTree => {
            fdt::device_tree(ctx.platform).map_err(|e| VmError::Firmware(e.to_string()))?
        }
        FirmwareInterface::Acpi => {
            let boot = efi::acpi_boot(ctx.platform, layout.firmware_tables)
                .map_err(|e| VmError::Firmware(e.to_string()))?;
            for (addr, bytes) in &boot.blobs {
                ctx.write_blob("firmware tables", *addr, bytes)?;
            }
            boot.stub_dtb
        }
    };
    if dtb.len() as u64 > layout.fdt.size {
        return Err(VmError::Firmware(format!(
            "the device tree is {} bytes, more than the {} reserved",
            dtb.len(),
            layout.fdt.size
        )));
    }
    ctx.write_blob("the device tree", layout.fdt.base, &dtb)?;
    set_boot_registers(&vcpus[0], kernel.entry, layout.fdt.base)?;
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

fn create_gic(
    vm: &VmFd,
    controller: &InterruptController,
) -> Result<(DeviceFd, DeviceFd), VmError> {
    let InterruptController::GicV3 {
        distributor,
        redistributors,
        its,
        nr_irqs,
        ..
    } = controller
    else {
        return Err(VmError::Firmware(
            "aarch64 guests need a GICv3 in the plan".into(),
        ));
    };
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

fn attach_serial(ctx: &mut BuildContext) -> Result<(), VmError> {
    let (Some(serial), Some(port), Some(irq)) = (&ctx.serial, ctx.platform.serial, &ctx.serial_irq)
    else {
        return Ok(());
    };
    let RegisterSpace::Mmio(base) = port.registers else {
        return Err(VmError::Firmware(
            "the aarch64 UART must be memory mapped".into(),
        ));
    };
    let device: Arc<Mutex<dyn devices::bus::BusDevice>> = serial.clone();
    ctx.buses.mmio.insert(base, SERIAL_REGISTERS, device)?;
    // With the vGIC's default routing, GSI n is SPI n.
    ctx.vm
        .register_irqfd(irq, port.irq)
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

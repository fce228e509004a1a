//! KVM interrupt routing: the GSI table (fixed irqchip lines plus MSI routes that follow what the
//! guest programs) and the irqfds that inject through it.
//!
//! KVM_SET_GSI_ROUTING replaces the whole table, so the table is kept here and written whole on
//! every change; irqfds re-resolve their GSI on each change, so an eventfd handed to VFIO once
//! keeps working while its route moves.

use std::collections::BTreeMap;
use std::sync::Arc;

use kvm_bindings::{
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_MSI_VALID_DEVID, KvmIrqRouting,
    kvm_irq_routing_entry,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// An MSI as the guest programmed it: where the device writes, and what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Msi {
    pub address: u64,
    pub data: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum IrqError {
    #[error("creating an interrupt eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("KVM_IRQFD on GSI {gsi}")]
    Irqfd {
        gsi: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM_SET_GSI_ROUTING ({entries} entries)")]
    Routing {
        entries: usize,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("the routing table is full")]
    Full,
}

/// The GSI routing table of one VM.
pub struct IrqRouting {
    vm: Arc<VmFd>,
    /// Lines wired to the in-kernel irqchip (KVM's defaults, restated because the table is
    /// written whole).
    irqchip: Vec<kvm_irq_routing_entry>,
    msi: BTreeMap<u32, kvm_irq_routing_entry>,
    next_gsi: u32,
    /// aarch64: MSIs carry the ITS device ID.
    with_devid: bool,
}

/// Most routes KVM takes (KVM_MAX_IRQ_ROUTES).
const MAX_ROUTES: usize = 4096;

impl IrqRouting {
    /// aarch64: SPIs `0..spis` are GSIs `0..spis` on the vGIC; MSI GSIs start above them.
    pub fn for_gic(vm: Arc<VmFd>, spis: u32) -> Self {
        let irqchip = (0..spis).map(|pin| irqchip_entry(pin, 0, pin)).collect();
        IrqRouting {
            vm,
            irqchip,
            msi: BTreeMap::new(),
            next_gsi: spis,
            with_devid: true,
        }
    }

    /// x86: GSIs 0..16 go to the PICs and the I/O APIC, 16..pins to the I/O APIC only (KVM's
    /// default table); MSI GSIs start above the I/O APIC's pins.
    #[cfg(target_arch = "x86_64")]
    pub fn for_ioapic(vm: Arc<VmFd>, pins: u32) -> Self {
        use kvm_bindings::{KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE};
        let mut irqchip = Vec::new();
        for gsi in 0..pins {
            if gsi < 8 {
                irqchip.push(irqchip_entry(gsi, KVM_IRQCHIP_PIC_MASTER, gsi));
            } else if gsi < 16 {
                irqchip.push(irqchip_entry(gsi, KVM_IRQCHIP_PIC_SLAVE, gsi - 8));
            }
            // The I/O APIC's pin 2 is the PIT's IRQ 0 (the MADT override says so).
            let pin = if gsi == 0 { 2 } else { gsi };
            irqchip.push(irqchip_entry(gsi, KVM_IRQCHIP_IOAPIC, pin));
        }
        IrqRouting {
            vm,
            irqchip,
            msi: BTreeMap::new(),
            next_gsi: pins,
            with_devid: false,
        }
    }

    /// A GSI number of its own for an MSI source; its caller attaches (and detaches) the irqfd.
    pub fn reserve(&mut self) -> Result<u32, IrqError> {
        if self.irqchip.len() + self.msi.len() >= MAX_ROUTES {
            return Err(IrqError::Full);
        }
        self.next_gsi += 1;
        Ok(self.next_gsi - 1)
    }

    /// A new GSI with an eventfd registered as its irqfd; unrouted until [`Self::set_msi`].
    pub fn allocate(&mut self) -> Result<(u32, EventFd), IrqError> {
        if self.irqchip.len() + self.msi.len() >= MAX_ROUTES {
            return Err(IrqError::Full);
        }
        let gsi = self.next_gsi;
        let evt = EventFd::new(EFD_NONBLOCK).map_err(IrqError::EventFd)?;
        self.vm
            .register_irqfd(&evt, gsi)
            .map_err(|source| IrqError::Irqfd { gsi, source })?;
        self.next_gsi += 1;
        Ok((gsi, evt))
    }

    /// Points `gsi` at an MSI (with the device's ITS ID on aarch64), or unroutes it (`None`: its
    /// eventfd then injects nothing, which is how a masked vector stays quiet).
    pub fn set_msi(&mut self, gsi: u32, msi: Option<Msi>, devid: u32) -> Result<(), IrqError> {
        match msi {
            Some(m) => {
                let mut entry = kvm_irq_routing_entry {
                    gsi,
                    type_: KVM_IRQ_ROUTING_MSI,
                    ..Default::default()
                };
                entry.u.msi.address_lo = m.address as u32;
                entry.u.msi.address_hi = (m.address >> 32) as u32;
                entry.u.msi.data = m.data;
                if self.with_devid {
                    entry.flags = KVM_MSI_VALID_DEVID;
                    entry.u.msi.__bindgen_anon_1.devid = devid;
                }
                self.msi.insert(gsi, entry);
            }
            None => {
                self.msi.remove(&gsi);
            }
        }
        self.commit()
    }

    /// Writes the whole table to KVM.
    pub fn commit(&self) -> Result<(), IrqError> {
        let entries: Vec<kvm_irq_routing_entry> = self
            .irqchip
            .iter()
            .chain(self.msi.values())
            .copied()
            .collect();
        let table = KvmIrqRouting::from_entries(&entries).map_err(|_| IrqError::Full)?;
        self.vm
            .set_gsi_routing(&table)
            .map_err(|source| IrqError::Routing {
                entries: entries.len(),
                source,
            })
    }
}

fn irqchip_entry(gsi: u32, irqchip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut entry = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    entry.u.irqchip.irqchip = irqchip;
    entry.u.irqchip.pin = pin;
    entry
}

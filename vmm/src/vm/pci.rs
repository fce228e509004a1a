//! PCI host bridges with VFIO functions: one `PciRoot` per bridge of the plan on its ECAM window,
//! `PciWindow`s over its MMIO apertures, and the segment host that turns the models' requests
//! into KVM memslots (direct BAR mappings) and GSI routes (MSI/MSI-X vectors).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use arch::platform::{PciBridge, Platform};
use devices::bus::Bus;
use devices::pci::{
    BarSpace, DirectMapping, InterruptRoute, PciAddress, PciRoot, PciSegmentHost, PciWindow,
};
use devices::vfio_pci::VfioPciDevice;
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vfio_ioctls::VfioDevice;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::VmError;
use super::irq::{IrqRouting, Msi};
use crate::host::{HostDevice, ProbedHost};
use crate::vfio::VfioContext;

/// Everything PCI keeps alive for the VM's lifetime.
pub struct PciState {
    _roots: Vec<Arc<Mutex<PciRoot>>>,
    pub smmus: Vec<super::smmu::SmmuInstance>,
    /// Host fds the event loop serves (vSMMU host event queues); taken when the VM runs.
    pub watches: Vec<super::event_loop::FdWatch>,
    _vfio: VfioContext,
    _routing: Arc<Mutex<IrqRouting>>,
}

/// KVM memslots for BAR mappings, shared by all segments.
pub struct Memslots {
    next: u32,
    free: Vec<u32>,
}

impl Memslots {
    pub fn after(used: u32) -> Self {
        Memslots {
            next: used,
            free: Vec::new(),
        }
    }

    fn take(&mut self) -> u32 {
        self.free.pop().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        })
    }
}

/// One vector of one device: its GSI and (a clone of) the eventfd VFIO signals.
struct Vector {
    gsi: u32,
    eventfd: EventFd,
    routed: bool,
}

struct Function {
    device: Arc<VfioDevice>,
    msi_device_id: u32,
    vectors: Vec<Vector>,
    /// (bar, bar_offset) -> (slot, host address, size)
    mappings: BTreeMap<(u8, u64), (u32, usize, usize)>,
}

/// The VMM side of one PCI segment.
struct SegmentHost {
    vm: Arc<VmFd>,
    /// Behind a vSMMU the guest programs MSI addresses as IOVAs its stage 1 maps to the ITS
    /// doorbell; the guest's only MSI target is that doorbell, so routes use it directly.
    msi_doorbell: Option<u64>,
    routing: Arc<Mutex<IrqRouting>>,
    memslots: Arc<Mutex<Memslots>>,
    functions: BTreeMap<PciAddress, Function>,
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

impl PciSegmentHost for SegmentHost {
    fn map_direct(
        &mut self,
        address: PciAddress,
        mapping: &DirectMapping,
    ) -> Result<(), devices::pci::root::HostError> {
        let function = self.functions.get_mut(&address).ok_or("no such function")?;
        let bar = u32::from(mapping.bar);
        let fd = std::os::fd::AsRawFd::as_raw_fd(function.device.as_ref());
        let offset = function.device.get_region_offset(bar) + mapping.bar_offset;
        let size = usize::try_from(mapping.size)?;
        // SAFETY: maps `size` bytes of the VFIO device fd at a region offset VFIO reported as
        // mmap-able; the result is checked; the mapping is owned by this table until unmapped.
        let host = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                offset as libc::off_t,
            )
        };
        if host == libc::MAP_FAILED {
            return Err(Box::new(std::io::Error::last_os_error()));
        }
        let slot = self.memslots.lock().expect("memslots lock").take();
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: mapping.guest_addr,
            memory_size: mapping.size,
            userspace_addr: host as u64,
        };
        // SAFETY: `host` is a live mapping of `size` bytes kept until the slot is removed.
        if let Err(e) = unsafe { self.vm.set_user_memory_region(region) } {
            // SAFETY: unmapping what was just mapped above.
            unsafe { libc::munmap(host, size) };
            self.memslots.lock().expect("memslots lock").free.push(slot);
            return Err(Box::new(e));
        }
        log::debug!(
            "{address}: BAR{} +{:#x} mapped at {:#x} ({:#x} bytes, slot {slot})",
            mapping.bar,
            mapping.bar_offset,
            mapping.guest_addr,
            mapping.size
        );
        function.mappings.insert(
            (mapping.bar, mapping.bar_offset),
            (slot, host as usize, size),
        );
        Ok(())
    }

    fn unmap_direct(&mut self, address: PciAddress, mapping: &DirectMapping) {
        let Some(function) = self.functions.get_mut(&address) else {
            return;
        };
        let Some((slot, host, size)) = function.mappings.remove(&(mapping.bar, mapping.bar_offset))
        else {
            return;
        };
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: mapping.guest_addr,
            memory_size: 0,
            userspace_addr: host as u64,
        };
        // SAFETY: a zero-sized region deletes the slot; the mapping is unmapped after it.
        if let Err(e) = unsafe { self.vm.set_user_memory_region(region) } {
            log::error!("{address}: removing BAR{} memslot {slot}: {e}", mapping.bar);
            return;
        }
        // SAFETY: the mapping was created by map_direct and no memslot refers to it any more.
        unsafe { libc::munmap(host as *mut libc::c_void, size) };
        self.memslots.lock().expect("memslots lock").free.push(slot);
    }

    fn update_routes(&mut self, address: PciAddress, routes: &[InterruptRoute]) {
        let Some(function) = self.functions.get_mut(&address) else {
            return;
        };
        let mut routing = self.routing.lock().expect("routing lock");
        for route in routes {
            let Some(vector) = function.vectors.get_mut(usize::from(route.vector)) else {
                log::warn!("{address}: route for unknown vector {}", route.vector);
                continue;
            };
            let msi = route.message.map(|m| Msi {
                address: self.msi_doorbell.unwrap_or(m.address),
                data: m.data,
            });
            if let Err(e) = routing.set_msi(vector.gsi, msi, function.msi_device_id) {
                log::error!("{address}: vector {}: {e}", route.vector);
                continue;
            }
            // A masked vector keeps its eventfd but loses its irqfd: signals wait in the
            // eventfd (the model shows them pending) and KVM injects them when re-attached.
            let result = match (msi.is_some(), vector.routed) {
                (true, false) => self.vm.register_irqfd(&vector.eventfd, vector.gsi),
                (false, true) => self.vm.unregister_irqfd(&vector.eventfd, vector.gsi),
                _ => Ok(()),
            };
            match result {
                Ok(()) => vector.routed = msi.is_some(),
                Err(e) => log::error!("{address}: vector {} irqfd: {e}", route.vector),
            }
        }
    }
}

impl Drop for SegmentHost {
    fn drop(&mut self) {
        for function in self.functions.values() {
            for &(_, host, size) in function.mappings.values() {
                // SAFETY: mappings made by map_direct; the VM (and its memslots) is going away.
                unsafe { libc::munmap(host as *mut libc::c_void, size) };
            }
        }
    }
}

/// Builds every bridge of the plan with its VFIO functions and puts them on the MMIO bus.
pub fn attach(
    vm: &Arc<VmFd>,
    platform: &Platform,
    memory: &GuestMemoryMmap,
    host: &ProbedHost,
    mmio: &Bus,
    routing: IrqRouting,
    memslots: Memslots,
) -> Result<Option<PciState>, VmError> {
    if platform.pci_bridges.is_empty() {
        return Ok(None);
    }
    let pci_err = |what: String| VmError::Firmware(what);
    let Some(handles) = host.handles() else {
        return Err(VmError::NotProbed);
    };
    let hosts = &host.description.devices;
    let vfio =
        VfioContext::new(vm, memory, hosts, handles).map_err(|e| VmError::Vfio(Box::new(e)))?;
    routing
        .commit()
        .map_err(|e| pci_err(format!("initial GSI routing: {e}")))?;
    let routing = Arc::new(Mutex::new(routing));
    let memslots = Arc::new(Mutex::new(memslots));
    let page = page_size();
    let mut roots = Vec::new();
    let mut smmus = Vec::new();
    let mut watches = Vec::new();
    for bridge in &platform.pci_bridges {
        let mut functions = BTreeMap::new();
        let mut models = Vec::new();
        let mut backends = Vec::new();
        for function in &bridge.functions {
            let host = hosts
                .iter()
                .find(|h| h.bdf.to_string() == function.label)
                .ok_or_else(|| pci_err(format!("no host device for {}", function.label)))?;
            let backend = vfio
                .open(host, handles)
                .map_err(|e| VmError::Vfio(Box::new(e)))?;
            backends.push((function, host, backend));
        }
        // The vSMMU in front of this bridge takes its functions before their models reset and
        // probe them: from then on their DMA follows the guest's stream table.
        if let Some(plan) = platform.smmus.iter().find(|s| s.segment == bridge.segment) {
            let members = backends
                .iter()
                .map(|(function, host, backend)| {
                    Ok(super::smmu::SmmuFunction {
                        device: backend.device(),
                        dev_id: backend.dev_id(),
                        sid: u32::from(function.rid),
                        bdf: host.bdf.to_string(),
                    })
                })
                .collect::<Result<Vec<_>, VmError>>()?;
            let (instance, watch) =
                super::smmu::attach(vm, plan, memory, vfio.iommufd(), &members, mmio)?;
            smmus.push(instance);
            watches.push(watch);
        }
        for (function, host, backend) in backends {
            let handle = backend.device();
            let model = VfioPciDevice::new(Box::new(backend), page).map_err(|e| {
                VmError::Vfio(format!("devices[{}] ({}): {e}", host.index, host.bdf).into())
            })?;
            let address = PciAddress::new(function.bus, function.device, function.function)
                .ok_or_else(|| pci_err(format!("bad PCI address for {}", function.label)))?;
            let vectors = allocate_vectors(&routing, &model, host)?;
            attach_intx(vm, bridge, function.device, &model, host)?;
            functions.insert(
                address,
                Function {
                    device: handle,
                    msi_device_id: function.msi_device_id,
                    vectors,
                    mappings: BTreeMap::new(),
                },
            );
            models.push((address, Arc::new(Mutex::new(model))));
            log::info!(
                "{} -> guest {:04x}:{address}",
                function.label,
                bridge.segment
            );
        }
        let behind_smmu = platform.smmus.iter().any(|s| s.segment == bridge.segment);
        let host = SegmentHost {
            vm: vm.clone(),
            msi_doorbell: its_doorbell(platform).filter(|_| behind_smmu),
            routing: routing.clone(),
            memslots: memslots.clone(),
            functions,
        };
        let mut root = PciRoot::new(bridge.bus_start, bridge.bus_end, Box::new(host));
        for (address, model) in models {
            root.add_device(address, model)
                .map_err(|e| pci_err(format!("placing {address}: {e}")))?;
        }
        let root = Arc::new(Mutex::new(root));
        mmio.insert(bridge.ecam.base, bridge.ecam.size, root.clone())?;
        for window in [bridge.mmio32, bridge.mmio64] {
            let w = PciWindow::new(root.clone(), window.base, BarSpace::Memory);
            mmio.insert(window.base, window.size, Arc::new(Mutex::new(w)))?;
        }
        roots.push(root);
    }
    Ok(Some(PciState {
        _roots: roots,
        smmus,
        watches,
        _vfio: vfio,
        _routing: routing,
    }))
}

/// GITS_TRANSLATER of the guest's ITS (Arm GIC architecture: ITS base + 0x10040).
fn its_doorbell(platform: &Platform) -> Option<u64> {
    match platform.interrupt_controller {
        arch::platform::InterruptController::GicV3 { its, .. } => Some(its.base + 0x1_0040),
        _ => None,
    }
}

/// A GSI for every MSI/MSI-X vector the device model has, unrouted until the guest programs it.
fn allocate_vectors(
    routing: &Arc<Mutex<IrqRouting>>,
    model: &VfioPciDevice,
    host: &HostDevice,
) -> Result<Vec<Vector>, VmError> {
    let mut routing = routing.lock().expect("routing lock");
    model
        .vector_eventfds()
        .iter()
        .map(|evt| {
            let gsi = routing.reserve().map_err(|e| {
                VmError::Vfio(format!("devices[{}] ({}): {e}", host.index, host.bdf).into())
            })?;
            let eventfd = evt.try_clone().map_err(|e| VmError::Vfio(Box::new(e)))?;
            Ok(Vector {
                gsi,
                eventfd,
                routed: false,
            })
        })
        .collect()
}

/// Legacy INTx on the slot's swizzled line, level-triggered through a resampling irqfd.
fn attach_intx(
    vm: &VmFd,
    bridge: &PciBridge,
    slot: u8,
    model: &VfioPciDevice,
    host: &HostDevice,
) -> Result<(), VmError> {
    let pin = model.interrupt_pin();
    let Some((trigger, resample)) = model.intx_eventfds() else {
        return Ok(());
    };
    if pin == 0 {
        return Ok(());
    }
    let line = bridge.intx[(usize::from(slot) + usize::from(pin) - 1) % 4];
    vm.register_irqfd_with_resample(trigger, resample, line)
        .map_err(|e| {
            VmError::Vfio(format!("devices[{}] ({}): INTx irqfd: {e}", host.index, host.bdf).into())
        })
}

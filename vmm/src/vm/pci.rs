//! PCI host bridges with VFIO functions: one `PciRoot` per bridge of the plan on its ECAM window,
//! `PciWindow`s over its MMIO apertures, and the segment host that turns the models' requests
//! into KVM memslots (direct BAR mappings) and GSI routes (MSI/MSI-X vectors).
//!
//! Teardown runs in reverse order of acquisition: each function's host resources (irqfds, then
//! BAR memslots, then their mappings) go before the device models (which turn the host
//! interrupts off, then reset the function), then the vSMMUs, then iommufd.

mod resources;

pub use resources::Memslots;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use arch::platform::{IntxPin, PciBridge, Platform};
use devices::bus::{Bus, BusError};
use devices::pci::{
    BarSpace, DirectMapping, InterruptRoute, PciAddress, PciRoot, PciSegmentHost, PciWindow,
};
use devices::vfio_pci::{VfioPciDevice, VfioPciError};
use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryMmap;

use super::irq::{IrqError, IrqRouting, Msi};
use super::smmu::VsmmuError;
use crate::bdf::PciBdf;
use crate::host::{HostDevice, ProbedHost};
use crate::vfio::{VfioContext, VfioError};
use resources::{FunctionResources, Irqfd, MemslotSink, Vector};

/// Why passthrough could not be set up; each names the device, bridge or vSMMU.
#[derive(Debug, thiserror::Error)]
pub enum PassthroughError {
    #[error("the plan names host devices, but they were described, not probed on this host")]
    NotProbed,
    #[error(transparent)]
    Vfio(#[from] VfioError),
    #[error(transparent)]
    Vsmmu(#[from] VsmmuError),
    #[error("writing the initial GSI routing table")]
    Routing(#[source] IrqError),
    #[error("devices[{index}] ({bdf}): its VFIO-PCI model")]
    Model {
        index: usize,
        bdf: PciBdf,
        #[source]
        source: VfioPciError,
    },
    #[error("devices[{index}] ({bdf}): its MSI/MSI-X vectors")]
    Vectors {
        index: usize,
        bdf: PciBdf,
        #[source]
        source: IrqError,
    },
    #[error("devices[{index}] ({bdf}): its INTx irqfd on line {line}")]
    Intx {
        index: usize,
        bdf: PciBdf,
        line: u32,
        #[source]
        source: IrqError,
    },
    #[error("devices[{index}] ({bdf}): placing it at {segment:04x}:{address}")]
    Place {
        index: usize,
        bdf: PciBdf,
        segment: u16,
        address: PciAddress,
        #[source]
        source: devices::pci::root::PciError,
    },
    #[error("PCI segment {segment}: {bus:02x}:{device:02x}.{function} is no PCI address")]
    Address {
        segment: u16,
        bus: u8,
        device: u8,
        function: u8,
    },
    #[error("PCI segment {segment}: placing its windows on the MMIO bus")]
    Bus {
        segment: u16,
        #[source]
        source: BusError,
    },
}

/// The host resources of one segment's functions, shared by its [`SegmentHost`] (which changes
/// them as the guest programs the devices) and [`PciState`] (which releases them first).
type Functions = Arc<Mutex<BTreeMap<PciAddress, FunctionResources>>>;

/// Everything PCI keeps alive for the VM's lifetime. Built field by field, so a build that
/// fails half way releases what it acquired through the same `Drop`.
pub struct PciState {
    functions: Vec<Functions>,
    _roots: Vec<Arc<Mutex<PciRoot>>>,
    pub smmus: Vec<super::smmu::SmmuInstance>,
    /// Host fds the event loop serves (vSMMU host event queues); taken when the VM runs.
    pub watches: Vec<super::event_loop::FdWatch>,
    _vfio: VfioContext,
    _routing: Arc<Mutex<IrqRouting>>,
}

impl Drop for PciState {
    /// The functions' irqfds and BAR memslots and mappings go while the device models that
    /// feed them still exist; the fields then drop in order (models, vSMMUs, iommufd).
    fn drop(&mut self) {
        for functions in &self.functions {
            functions
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clear();
        }
    }
}

/// The VMM side of one PCI segment.
struct SegmentHost {
    vm: Arc<VmFd>,
    /// Behind a vSMMU the guest programs MSI addresses as IOVAs its stage 1 maps to the ITS
    /// doorbell; the guest's only MSI target is that doorbell, so routes use it directly.
    msi_doorbell: Option<u64>,
    routing: Arc<Mutex<IrqRouting>>,
    memslots: Arc<Mutex<Memslots>>,
    functions: Functions,
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
        let mut functions = self.functions.lock().expect("functions lock");
        let function = functions.get_mut(&address).ok_or("no such function")?;
        let sink: Arc<dyn MemslotSink> = self.vm.clone();
        let slot = function.map(sink, self.memslots.clone(), mapping)?;
        log::debug!(
            "{address}: BAR{} +{:#x} mapped at {:#x} ({:#x} bytes, slot {slot})",
            mapping.bar,
            mapping.bar_offset,
            mapping.guest_addr,
            mapping.size
        );
        Ok(())
    }

    fn unmap_direct(&mut self, address: PciAddress, mapping: &DirectMapping) {
        if let Some(function) = self
            .functions
            .lock()
            .expect("functions lock")
            .get_mut(&address)
        {
            function.unmap(mapping);
        }
    }

    fn update_routes(&mut self, address: PciAddress, routes: &[InterruptRoute]) {
        let mut functions = self.functions.lock().expect("functions lock");
        let Some(function) = functions.get_mut(&address) else {
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
            let result = match (msi.is_some(), vector.irqfd.take()) {
                (true, None) => {
                    Irqfd::attach(self.vm.clone(), vector.eventfd.clone(), vector.gsi, None)
                        .map(|irqfd| vector.irqfd = Some(irqfd))
                }
                (false, Some(irqfd)) => irqfd.detach().map_err(|(irqfd, e)| {
                    vector.irqfd = Some(irqfd);
                    e
                }),
                (_, irqfd) => {
                    vector.irqfd = irqfd;
                    Ok(())
                }
            };
            if let Err(e) = result {
                log::error!("{address}: vector {} irqfd: {e}", route.vector);
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
) -> Result<Option<PciState>, PassthroughError> {
    if platform.pci_bridges.is_empty() {
        return Ok(None);
    }
    let handles = host.handles().ok_or(PassthroughError::NotProbed)?;
    let hosts = &host.description.devices;
    let vfio = VfioContext::new(vm, memory, hosts, handles)?;
    crate::startup::mark("guest RAM mapped into the IOAS for DMA");
    routing.commit().map_err(PassthroughError::Routing)?;
    let routing = Arc::new(Mutex::new(routing));
    let memslots = Arc::new(Mutex::new(memslots));
    let page = page_size();
    let mut state = PciState {
        functions: Vec::new(),
        _roots: Vec::new(),
        smmus: Vec::new(),
        watches: Vec::new(),
        _vfio: vfio,
        _routing: routing.clone(),
    };
    let vfio = &state._vfio;
    for bridge in &platform.pci_bridges {
        let mut backends = Vec::new();
        for function in &bridge.functions {
            let host = &hosts[function.host_index];
            let backend = vfio.open(host, handles)?;
            backends.push((function, host, backend));
        }
        // The vSMMU in front of this bridge takes its functions before their models reset and
        // probe them: from then on their DMA follows the guest's stream table.
        if let Some(plan) = platform.smmu_for(bridge) {
            let members: Vec<_> = backends
                .iter()
                .map(|(function, host, backend)| super::smmu::SmmuFunction {
                    device: backend.device(),
                    dev_id: backend.dev_id(),
                    sid: function.stream_id(),
                    bdf: host.bdf.to_string(),
                })
                .collect();
            let (instance, watch) =
                super::smmu::attach(vm, plan, memory, vfio.iommufd(), &members, mmio)?;
            state.smmus.push(instance);
            state.watches.push(watch);
            crate::startup::mark(&format!("vSMMU {} attached", plan.index));
        }
        // The root (with the models) and the functions' host resources join the state as they
        // are made, so a failure below releases them in the teardown order.
        let functions = Functions::default();
        state.functions.push(functions.clone());
        let behind_smmu = platform.smmu_for(bridge).is_some();
        let host = SegmentHost {
            vm: vm.clone(),
            msi_doorbell: its_doorbell(platform).filter(|_| behind_smmu),
            routing: routing.clone(),
            memslots: memslots.clone(),
            functions: functions.clone(),
        };
        let root = PciRoot::new(bridge.bus_start, bridge.bus_end, Box::new(host));
        let root = Arc::new(Mutex::new(root));
        state._roots.push(root.clone());
        for (function, host, backend) in backends {
            let handle = backend.device();
            let model = VfioPciDevice::new(Box::new(backend), page).map_err(|source| {
                PassthroughError::Model {
                    index: host.index,
                    bdf: host.bdf,
                    source,
                }
            })?;
            let address = PciAddress::new(function.bus, function.device, function.function).ok_or(
                PassthroughError::Address {
                    segment: bridge.segment,
                    bus: function.bus,
                    device: function.device,
                    function: function.function,
                },
            )?;
            let vectors = allocate_vectors(&routing, &model, host)?;
            let intx = attach_intx(vm, bridge, function.device, &model, host)?;
            let model = Arc::new(Mutex::new(model));
            root.lock()
                .expect("PCI root lock")
                .add_device(address, model)
                .map_err(|source| PassthroughError::Place {
                    index: host.index,
                    bdf: host.bdf,
                    segment: bridge.segment,
                    address,
                    source,
                })?;
            functions.lock().expect("functions lock").insert(
                address,
                FunctionResources::new(handle, function.msi_device_id, vectors, intx),
            );
            log::info!(
                "{} -> guest {:04x}:{address}",
                function.label,
                bridge.segment
            );
        }
        let bus_err = |source| PassthroughError::Bus {
            segment: bridge.segment,
            source,
        };
        mmio.insert(bridge.ecam.base, bridge.ecam.size, root.clone())
            .map_err(bus_err)?;
        for window in [bridge.mmio32, bridge.mmio64] {
            let w = PciWindow::new(root.clone(), window.base, BarSpace::Memory);
            mmio.insert(window.base, window.size, Arc::new(Mutex::new(w)))
                .map_err(bus_err)?;
        }
    }
    Ok(Some(state))
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
) -> Result<Vec<Vector>, PassthroughError> {
    let err = |source| PassthroughError::Vectors {
        index: host.index,
        bdf: host.bdf,
        source,
    };
    let mut routing = routing.lock().expect("routing lock");
    model
        .vector_eventfds()
        .iter()
        .map(|evt| {
            let gsi = routing.reserve().map_err(err)?;
            let eventfd = evt.try_clone().map_err(|e| err(IrqError::EventFd(e)))?;
            Ok(Vector {
                gsi,
                eventfd: Arc::new(eventfd),
                irqfd: None,
            })
        })
        .collect()
}

/// Legacy INTx on the slot's swizzled line, level-triggered through a resampling irqfd.
fn attach_intx(
    vm: &Arc<VmFd>,
    bridge: &PciBridge,
    slot: u8,
    model: &VfioPciDevice,
    host: &HostDevice,
) -> Result<Option<Irqfd>, PassthroughError> {
    let Some((trigger, resample)) = model.intx_eventfds() else {
        return Ok(None);
    };
    let Some(pin) = IntxPin::from_register(model.interrupt_pin()) else {
        return Ok(None);
    };
    let line = bridge.intx_line(slot, pin);
    let err = |source| PassthroughError::Intx {
        index: host.index,
        bdf: host.bdf,
        line,
        source,
    };
    let trigger = trigger.try_clone().map_err(|e| err(IrqError::EventFd(e)))?;
    Irqfd::attach(vm.clone(), Arc::new(trigger), line, Some(resample))
        .map(Some)
        .map_err(|source| err(IrqError::Irqfd { gsi: line, source }))
}

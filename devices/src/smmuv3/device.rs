//! The vSMMUv3 device: register file, command queue consumer, stream configuration tracking and
//! event queue producer.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use log::{debug, warn};

use super::backend::{
    BackendStats, GuestMemoryAccess, SmmuBackend, SmmuInterrupts, SmmuIrq, SmmuMode, StreamConfig,
};
use super::command::{COMMAND_BYTES, Command, Invalidation, SyncSignal};
use super::event::{EVENT_BYTES, Event};
use super::queue::Queue;
use super::regs::{
    CmdqError, Cr0, Cr1, Cr2, Gbpa, Gerror, IrqCfg, IrqCtrl, PAGE_SIZE, QUEUE_OVERFLOW_FLAG,
    QueueBase, StrtabBase, StrtabBaseCfg, offset,
};
use super::ste::{Ste, StreamFault, StreamTable};
use super::{CMDQS, EVENTQS, FeatureRegisters, SmmuError, SmmuFeatures};
use crate::bus::BusDevice;
use crate::pci::MsiMessage;

/// PROD/CONS index and wrap bits for the largest queue an SMMUv3 can have (2^19 entries).
const QUEUE_POINTER_MASK: u32 = (1 << 20) - 1;

/// Counters since creation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SmmuStats {
    /// Guest commands consumed, by opcode (illegal ones included).
    pub commands: BTreeMap<u8, u64>,
    pub cmd_syncs: u64,
    /// `SmmuBackend::invalidate` calls and the commands they carried.
    pub invalidation_calls: u64,
    pub invalidation_commands: u64,
    /// `SmmuBackend::set_stream` calls.
    pub stream_updates: u64,
    /// Host events written to the guest's event queue.
    pub host_events: u64,
    /// Events the model raised itself (C_BAD_STE, C_BAD_STREAMID, F_STE_FETCH).
    pub model_events: u64,
    /// Events the guest never saw: queue disabled, full or unwritable.
    pub events_dropped: u64,
    /// Commands that stopped the queue (CERROR_ILL, CERROR_ABT).
    pub command_errors: u64,
    pub backend_errors: u64,
}

/// The guest-programmed registers, already reduced to their implemented bits.
#[derive(Debug, Clone, Default)]
struct Registers {
    cr0: Cr0,
    cr1: Cr1,
    cr2: Cr2,
    gbpa: Gbpa,
    irq_ctrl: IrqCtrl,
    gerror: Gerror,
    gerrorn: Gerror,
    gerror_irq: IrqCfg,
    strtab_base: StrtabBase,
    strtab_base_cfg: StrtabBaseCfg,
    cmdq_base: QueueBase,
    cmdq_prod: u32,
    /// Pointer and ERR.
    cmdq_cons: u32,
    eventq_base: QueueBase,
    /// Pointer and OVFLG.
    eventq_prod: u32,
    /// Pointer and OVACKFLG.
    eventq_cons: u32,
    eventq_irq: IrqCfg,
}

/// One virtual SMMUv3. See the module documentation for how the VMM drives it.
pub struct Smmuv3 {
    features: SmmuFeatures,
    idr: [u32; 6],
    memory: Box<dyn GuestMemoryAccess>,
    backend: Box<dyn SmmuBackend>,
    interrupts: Box<dyn SmmuInterrupts>,
    regs: Registers,
    /// The StreamIDs with a device behind them, and the configuration the backend last applied
    /// (`None`: unknown, the next refresh calls the backend).
    streams: BTreeMap<u32, Option<StreamConfig>>,
    /// Invalidations collected since the last CMD_SYNC.
    pending: Vec<Invalidation>,
    stats: SmmuStats,
}

impl Smmuv3 {
    pub fn new(
        features: SmmuFeatures,
        memory: Box<dyn GuestMemoryAccess>,
        backend: Box<dyn SmmuBackend>,
        interrupts: Box<dyn SmmuInterrupts>,
    ) -> Result<Self, SmmuError> {
        Ok(Smmuv3 {
            idr: features.id_registers()?,
            features,
            memory,
            backend,
            interrupts,
            regs: Registers::default(),
            streams: BTreeMap::new(),
            pending: Vec::new(),
            stats: SmmuStats::default(),
        })
    }

    /// A device with StreamID `sid` sits behind this vSMMU: the backend immediately hears what
    /// the stream does now (GBPA's bypass right after reset).
    pub fn add_stream(&mut self, sid: u32) -> Result<(), SmmuError> {
        if u64::from(sid) >> self.features.sid_bits != 0 {
            return Err(SmmuError::StreamId {
                sid,
                sid_bits: self.features.sid_bits,
            });
        }
        self.streams.insert(sid, None);
        self.refresh_stream(sid, false);
        Ok(())
    }

    /// Back to the reset state (a guest reboot); every stream follows GBPA again.
    pub fn reset(&mut self) {
        self.regs = Registers::default();
        self.pending.clear();
        self.refresh_streams(0..=u32::MAX, false);
    }

    /// Moves the backend's pending events into the guest's event queue; returns how many the
    /// guest received.
    pub fn service_host_events(&mut self) -> usize {
        match self.backend.read_events() {
            Ok(batch) => {
                let written = self.write_events(&batch.events, batch.lost);
                self.stats.host_events += written as u64;
                written
            }
            Err(e) => {
                warn!("vSMMU: reading host events failed: {e}");
                self.stats.backend_errors += 1;
                0
            }
        }
    }

    pub fn stats(&self) -> SmmuStats {
        self.stats.clone()
    }

    /// The backend's own counters.
    pub fn backend_stats(&self) -> BackendStats {
        self.backend.stats()
    }

    pub fn mode(&self) -> SmmuMode {
        self.backend.mode()
    }

    // Register file.

    /// The page-0 offset of the register at `offset`, resolving the page-1 aliases; `None` for
    /// everything else in page 1 (RAZ/WI).
    fn register_offset(offset: u64) -> Option<u64> {
        if offset < PAGE_SIZE {
            return Some(offset);
        }
        let in_page = offset - PAGE_SIZE;
        matches!(in_page, offset::EVENTQ_PROD | offset::EVENTQ_CONS).then_some(in_page)
    }

    fn read64(&self, reg: u64) -> u64 {
        let r = &self.regs;
        match reg {
            offset::GERROR_IRQ_CFG0 => r.gerror_irq.address,
            offset::STRTAB_BASE => r.strtab_base.0,
            offset::CMDQ_BASE => r.cmdq_base.0,
            offset::EVENTQ_BASE => r.eventq_base.0,
            offset::EVENTQ_IRQ_CFG0 => r.eventq_irq.address,
            _ => 0,
        }
    }

    fn read32(&self, reg: u64) -> u32 {
        let r = &self.regs;
        if offset::REG64.contains(&(reg & !7)) {
            return (self.read64(reg & !7) >> ((reg & 4) * 8)) as u32;
        }
        match reg {
            offset::IDR0..=offset::IDR5 => self.idr[(reg / 4) as usize],
            offset::IIDR => 0,
            offset::AIDR => self.features.aidr(),
            offset::CR0 | offset::CR0ACK => r.cr0.0,
            offset::CR1 => r.cr1.0,
            offset::CR2 => r.cr2.0,
            // UPDATE completes at once, so it always reads 0.
            offset::GBPA => r.gbpa.0,
            offset::IRQ_CTRL | offset::IRQ_CTRLACK => r.irq_ctrl.0,
            offset::GERROR => r.gerror.0,
            offset::GERRORN => r.gerrorn.0,
            offset::GERROR_IRQ_CFG1 => r.gerror_irq.data,
            offset::GERROR_IRQ_CFG2 => r.gerror_irq.attributes,
            offset::STRTAB_BASE_CFG => r.strtab_base_cfg.0,
            offset::CMDQ_PROD => r.cmdq_prod,
            offset::CMDQ_CONS => r.cmdq_cons,
            offset::EVENTQ_PROD => r.eventq_prod,
            offset::EVENTQ_CONS => r.eventq_cons,
            offset::EVENTQ_IRQ_CFG1 => r.eventq_irq.data,
            offset::EVENTQ_IRQ_CFG2 => r.eventq_irq.attributes,
            _ => 0,
        }
    }

    fn write64(&mut self, reg: u64, value: u64) {
        let r = &mut self.regs;
        match reg {
            offset::GERROR_IRQ_CFG0 => r.gerror_irq.set_address(value),
            // The table and queue bases are read-only while in use.
            offset::STRTAB_BASE if !r.cr0.smmu_enabled() => {
                r.strtab_base = StrtabBase::from_guest(value)
            }
            offset::CMDQ_BASE if !r.cr0.cmdq_enabled() => {
                r.cmdq_base = QueueBase::from_guest(value)
            }
            offset::EVENTQ_BASE if !r.cr0.eventq_enabled() => {
                r.eventq_base = QueueBase::from_guest(value)
            }
            offset::EVENTQ_IRQ_CFG0 => r.eventq_irq.set_address(value),
            _ => {}
        }
    }

    fn write32(&mut self, reg: u64, value: u32) {
        if offset::REG64.contains(&(reg & !7)) {
            let shift = (reg & 4) * 8;
            let old = self.read64(reg & !7);
            let merged = (old & !(0xffff_ffff << shift)) | u64::from(value) << shift;
            self.write64(reg & !7, merged);
            return;
        }
        let r = &mut self.regs;
        match reg {
            offset::CR0 => self.write_cr0(Cr0::from_guest(value)),
            offset::CR1 => r.cr1 = Cr1::from_guest(value),
            offset::CR2 => r.cr2 = Cr2::from_guest(value),
            offset::GBPA if Gbpa::update_requested(value) => {
                r.gbpa = Gbpa::from_guest(value);
                if !r.cr0.smmu_enabled() {
                    self.refresh_streams(0..=u32::MAX, false);
                }
            }
            offset::IRQ_CTRL => r.irq_ctrl = IrqCtrl::from_guest(value),
            offset::GERRORN => {
                let was_stopped = self.cmdq_stopped();
                self.regs.gerrorn = Gerror::from_guest(value);
                if was_stopped && !self.cmdq_stopped() {
                    // Acknowledged: retry from CONS (Linux turned the bad entry into a CMD_SYNC).
                    self.regs.cmdq_cons &= !CmdqError::MASK;
                    self.consume_commands();
                }
            }
            offset::GERROR_IRQ_CFG1 => r.gerror_irq.data = value,
            offset::GERROR_IRQ_CFG2 => r.gerror_irq.set_attributes(value),
            offset::STRTAB_BASE_CFG if !r.cr0.smmu_enabled() => {
                r.strtab_base_cfg = StrtabBaseCfg::from_guest(value)
            }
            offset::CMDQ_PROD => {
                r.cmdq_prod = value & QUEUE_POINTER_MASK;
                self.consume_commands();
            }
            offset::CMDQ_CONS if !r.cr0.cmdq_enabled() => r.cmdq_cons = value & QUEUE_POINTER_MASK,
            offset::EVENTQ_PROD if !r.cr0.eventq_enabled() => {
                r.eventq_prod = value & (QUEUE_POINTER_MASK | QUEUE_OVERFLOW_FLAG)
            }
            offset::EVENTQ_CONS => {
                r.eventq_cons = value & (QUEUE_POINTER_MASK | QUEUE_OVERFLOW_FLAG)
            }
            offset::EVENTQ_IRQ_CFG1 => r.eventq_irq.data = value,
            offset::EVENTQ_IRQ_CFG2 => r.eventq_irq.set_attributes(value),
            _ => {}
        }
    }

    /// CR0ACK follows at once; enabling the SMMU or the command queue takes effect here.
    fn write_cr0(&mut self, cr0: Cr0) {
        let old = self.regs.cr0;
        self.regs.cr0 = cr0;
        if old.smmu_enabled() != cr0.smmu_enabled() {
            self.refresh_streams(0..=u32::MAX, false);
        }
        if !old.cmdq_enabled() && cr0.cmdq_enabled() {
            self.consume_commands();
        }
    }

    // Command queue.

    fn cmdq_stopped(&self) -> bool {
        (self.regs.gerror.0 ^ self.regs.gerrorn.0) & Gerror::CMDQ_ERR != 0
    }

    /// Executes commands from CONS up to PROD; stops at an erroneous one (CONS stays on it).
    fn consume_commands(&mut self) {
        if !self.regs.cr0.cmdq_enabled() || self.cmdq_stopped() {
            return;
        }
        let queue = Queue::new(self.regs.cmdq_base, CMDQS, COMMAND_BYTES);
        let prod = queue.pointer(self.regs.cmdq_prod);
        let mut cons = queue.pointer(self.regs.cmdq_cons);
        let mut error = None;
        // A full queue holds `entries()` commands; the bound only guards the arithmetic.
        for _ in 0..=queue.entries() {
            if queue.is_empty(prod, cons) {
                break;
            }
            match self.execute_at(&queue, cons) {
                Ok(()) => cons = queue.next(cons),
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        self.flush_invalidations();
        self.regs.cmdq_cons = cons;
        if let Some(error) = error {
            self.stats.command_errors += 1;
            self.regs.cmdq_cons |= (error as u32) << CmdqError::SHIFT;
            self.raise_gerror(Gerror::CMDQ_ERR);
        }
    }

    fn execute_at(&mut self, queue: &Queue, cons: u32) -> Result<(), CmdqError> {
        let mut raw = [[0u8; 8]; 2];
        let fetched = queue
            .entry_address(cons)
            .is_some_and(|address| self.memory.read(address, raw.as_flattened_mut()).is_ok());
        if !fetched {
            debug!("vSMMU: command fetch at CONS {cons:#x} aborted");
            return Err(CmdqError::Abort);
        }
        let words = raw.map(u64::from_le_bytes);
        *self
            .stats
            .commands
            .entry(Command::opcode(&words))
            .or_default() += 1;
        let command = Command::decode(words).map_err(|e| {
            debug!("vSMMU: {e} at CONS {cons:#x}");
            CmdqError::Illegal
        })?;
        match command {
            Command::NoOp => {}
            Command::CfgiSte { sid } => self.refresh_streams(sid..=sid, true),
            Command::CfgiSteRange { first, last } => self.refresh_streams(first..=last, true),
            Command::Invalidate(invalidation) => self.pending.push(invalidation),
            Command::Sync {
                signal,
                msi_address,
                msi_data,
            } => {
                self.stats.cmd_syncs += 1;
                self.flush_invalidations();
                self.complete_sync(signal, msi_address, msi_data);
            }
        }
        Ok(())
    }

    /// Hands the collected invalidations to the backend in one call.
    fn flush_invalidations(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let commands = std::mem::take(&mut self.pending);
        self.stats.invalidation_calls += 1;
        self.stats.invalidation_commands += commands.len() as u64;
        match self.backend.invalidate(&commands) {
            Ok(done) if done >= commands.len() => {}
            Ok(done) => {
                warn!(
                    "vSMMU: host applied {done} of {} invalidations",
                    commands.len()
                );
                self.stats.backend_errors += 1;
            }
            Err(e) => {
                warn!("vSMMU: invalidation failed: {e}");
                self.stats.backend_errors += 1;
            }
        }
    }

    fn complete_sync(&mut self, signal: SyncSignal, msi_address: u64, msi_data: u32) {
        match signal {
            SyncSignal::None | SyncSignal::Sev => {}
            SyncSignal::Irq if msi_address == 0 => self.interrupts.trigger(SmmuIrq::Sync),
            SyncSignal::Irq => {
                if !self.msi_write(msi_address, msi_data) {
                    self.raise_gerror(Gerror::MSI_CMDQ_ABT_ERR);
                }
            }
        }
    }

    // Stream configurations.

    fn refresh_streams(&mut self, sids: RangeInclusive<u32>, invalidation: bool) {
        let sids: Vec<u32> = self.streams.range(sids).map(|(&sid, _)| sid).collect();
        for sid in sids {
            self.refresh_stream(sid, invalidation);
        }
    }

    /// Re-reads what `sid` does and tells the backend if that changed. `invalidation`: the guest
    /// asked (CFGI_STE*), which also drops CDs cached through the STE; an unchanged stage-1 STE
    /// therefore becomes a CFGI_CD_ALL in the current batch.
    fn refresh_stream(&mut self, sid: u32, invalidation: bool) {
        let config = self.resolve_stream(sid).unwrap_or_else(|fault| {
            debug!("vSMMU: StreamID {sid:#x}: {fault}");
            self.push_model_event(Event::for_stream_fault(sid, fault));
            StreamConfig::Abort
        });
        let Some(current) = self.streams.get(&sid).copied() else {
            return;
        };
        if current == Some(config) {
            if invalidation && matches!(config, StreamConfig::Stage1(_)) {
                self.pending.push(Invalidation::cfgi_cd_all(sid));
            }
            return;
        }
        self.stats.stream_updates += 1;
        let applied = match self.backend.set_stream(sid, config) {
            Ok(()) => Some(config),
            Err(e) => {
                warn!("vSMMU: StreamID {sid:#x}: host refused {config:?}: {e}");
                self.stats.backend_errors += 1;
                if config == StreamConfig::Abort {
                    None
                } else {
                    // The guest sees the STE as bad, and the stream must not keep its old
                    // translation.
                    self.push_model_event(Event::for_stream_fault(
                        sid,
                        StreamFault::BadSte("refused by the host"),
                    ));
                    self.stats.stream_updates += 1;
                    self.backend
                        .set_stream(sid, StreamConfig::Abort)
                        .ok()
                        .map(|()| StreamConfig::Abort)
                }
            }
        };
        self.streams.insert(sid, applied);
    }

    fn resolve_stream(&self, sid: u32) -> Result<StreamConfig, StreamFault> {
        if !self.regs.cr0.smmu_enabled() {
            return Ok(if self.regs.gbpa.abort() {
                StreamConfig::Abort
            } else {
                StreamConfig::Bypass
            });
        }
        let table = StreamTable::new(
            self.regs.strtab_base,
            self.regs.strtab_base_cfg,
            &self.features,
        );
        match table.fetch(sid, &*self.memory)? {
            None => Ok(StreamConfig::Abort),
            Some(words) => Ok(Ste::parse(&words, &self.features, &*self.memory)?.stream_config()),
        }
    }

    // Events and interrupts.

    fn push_model_event(&mut self, event: Event) {
        self.stats.model_events += 1;
        self.write_events(&[event.0], false);
    }

    /// Appends records at EVENTQ_PROD; a full queue (or `lost`) sets the overflow flag. Returns
    /// how many were written.
    fn write_events(&mut self, events: &[[u64; 4]], lost: bool) -> usize {
        if events.is_empty() && !lost {
            return 0;
        }
        if !self.regs.cr0.eventq_enabled() {
            self.stats.events_dropped += events.len() as u64;
            return 0;
        }
        let queue = Queue::new(self.regs.eventq_base, EVENTQS, EVENT_BYTES);
        let mut prod = queue.pointer(self.regs.eventq_prod);
        let cons = queue.pointer(self.regs.eventq_cons);
        let mut written = 0;
        let mut overflow = lost;
        for event in events {
            if queue.is_full(prod, cons) {
                overflow = true;
                break;
            }
            let bytes = event.map(u64::to_le_bytes);
            let stored = queue
                .entry_address(prod)
                .is_some_and(|address| self.memory.write(address, bytes.as_flattened()).is_ok());
            if !stored {
                self.raise_gerror(Gerror::EVENTQ_ABT_ERR);
                break;
            }
            prod = queue.next(prod);
            written += 1;
        }
        self.stats.events_dropped += (events.len() - written) as u64;
        let mut overflow_flag = self.regs.eventq_prod & QUEUE_OVERFLOW_FLAG;
        // A new overflow shows only once the guest acknowledged the previous one.
        if overflow && overflow_flag == self.regs.eventq_cons & QUEUE_OVERFLOW_FLAG {
            overflow_flag ^= QUEUE_OVERFLOW_FLAG;
        }
        self.regs.eventq_prod = prod | overflow_flag;
        if written > 0 || overflow {
            self.signal_eventq();
        }
        written
    }

    fn signal_eventq(&mut self) {
        if !self.regs.irq_ctrl.eventq() {
            return;
        }
        let irq = self.regs.eventq_irq;
        if irq.address == 0 {
            self.interrupts.trigger(SmmuIrq::Event);
        } else if !self.msi_write(irq.address, irq.data) {
            self.raise_gerror(Gerror::MSI_EVENTQ_ABT_ERR);
        }
    }

    /// Activates global errors not already active and signals them.
    fn raise_gerror(&mut self, bits: u32) {
        let active = self.regs.gerror.0 ^ self.regs.gerrorn.0;
        let new = bits & !active;
        if new == 0 {
            return;
        }
        self.regs.gerror.0 ^= new;
        if !self.regs.irq_ctrl.gerror() {
            return;
        }
        let irq = self.regs.gerror_irq;
        if irq.address == 0 {
            self.interrupts.trigger(SmmuIrq::Gerror);
        } else if !self.msi_write(irq.address, irq.data) {
            // Recorded without another interrupt: there is nowhere left to send one.
            let active = self.regs.gerror.0 ^ self.regs.gerrorn.0;
            self.regs.gerror.0 ^= Gerror::MSI_GERROR_ABT_ERR & !active;
        }
    }

    /// A 32-bit MSI write: into guest RAM (how Linux polls CMD_SYNC), else to the interrupt sink
    /// (the ITS doorbell). False when nothing took it.
    fn msi_write(&mut self, address: u64, data: u32) -> bool {
        if self.memory.contains(address, 4) {
            return self.memory.write(address, &data.to_le_bytes()).is_ok();
        }
        self.interrupts.msi(MsiMessage { address, data })
    }
}

impl BusDevice for Smmuv3 {
    /// 32-bit accesses to any register, 64-bit ones too (a 32-bit pair reads as both); other
    /// widths and misaligned accesses read as zero.
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let aligned = offset.is_multiple_of(data.len().max(1) as u64);
        match (data.len(), Self::register_offset(offset)) {
            (4, Some(reg)) if aligned => data.copy_from_slice(&self.read32(reg).to_le_bytes()),
            (8, Some(reg)) if aligned => {
                let value = u64::from(self.read32(reg)) | u64::from(self.read32(reg + 4)) << 32;
                data.copy_from_slice(&value.to_le_bytes());
            }
            _ => data.fill(0),
        }
    }

    /// Writes of other widths, or misaligned, are ignored.
    fn write(&mut self, offset: u64, data: &[u8]) {
        let aligned = offset.is_multiple_of(data.len().max(1) as u64);
        match (data, Self::register_offset(offset)) {
            (&[a, b, c, d], Some(reg)) if aligned => {
                self.write32(reg, u32::from_le_bytes([a, b, c, d]))
            }
            (&[a, b, c, d, e, f, g, h], Some(reg)) if aligned => {
                let value = u64::from_le_bytes([a, b, c, d, e, f, g, h]);
                if offset::REG64.contains(&reg) {
                    self.write64(reg, value);
                } else {
                    self.write32(reg, value as u32);
                    self.write32(reg + 4, (value >> 32) as u32);
                }
            }
            _ => {}
        }
    }
}

//! In-memory [`SmmuBackend`] and [`SmmuInterrupts`] that record every call, for tests of the
//! model and of code that drives it. Clones share their state.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use super::backend::{
    BackendError, BackendStats, EventBatch, SmmuBackend, SmmuInterrupts, SmmuIrq, SmmuMode,
    StreamConfig,
};
use super::command::Invalidation;
use crate::pci::MsiMessage;

#[derive(Debug, Default)]
pub struct FakeBackendState {
    /// Every `set_stream` call, in order.
    pub stream_calls: Vec<(u32, StreamConfig)>,
    /// Every `invalidate` call's batch, one entry per call.
    pub invalidate_calls: Vec<Vec<Invalidation>>,
    /// Batches `read_events` hands out, oldest first (then empty batches).
    pub queued_events: VecDeque<EventBatch>,
    /// `set_stream` fails for stage-1 configs (an STE the host kernel rejects).
    pub refuse_stage1: bool,
}

#[derive(Debug, Clone, Default)]
pub struct FakeBackend(Arc<Mutex<FakeBackendState>>);

impl FakeBackend {
    pub fn state(&self) -> MutexGuard<'_, FakeBackendState> {
        self.0.lock().expect("fake backend lock poisoned")
    }
}

impl SmmuBackend for FakeBackend {
    /// The model cannot tell; the plan's only mode so far.
    fn mode(&self) -> SmmuMode {
        SmmuMode::Nested
    }

    fn set_stream(&mut self, sid: u32, config: StreamConfig) -> Result<(), BackendError> {
        let mut state = self.state();
        state.stream_calls.push((sid, config));
        if state.refuse_stage1 && matches!(config, StreamConfig::Stage1(_)) {
            return Err("stage 1 refused".into());
        }
        Ok(())
    }

    fn invalidate(&mut self, batch: &[Invalidation]) -> Result<usize, BackendError> {
        self.state().invalidate_calls.push(batch.to_vec());
        Ok(batch.len())
    }

    fn read_events(&mut self) -> Result<EventBatch, BackendError> {
        Ok(self.state().queued_events.pop_front().unwrap_or_default())
    }

    fn stats(&self) -> BackendStats {
        let state = self.state();
        BackendStats(vec![
            ("stream calls", state.stream_calls.len() as u64),
            ("invalidate calls", state.invalidate_calls.len() as u64),
        ])
    }
}

#[derive(Debug, Default)]
pub struct FakeInterruptsState {
    pub triggered: Vec<SmmuIrq>,
    pub msis: Vec<MsiMessage>,
    /// MSI writes outside RAM land only in this range (the ITS doorbell).
    pub doorbell: Option<(u64, u64)>,
}

#[derive(Debug, Clone, Default)]
pub struct FakeInterrupts(Arc<Mutex<FakeInterruptsState>>);

impl FakeInterrupts {
    pub fn state(&self) -> MutexGuard<'_, FakeInterruptsState> {
        self.0.lock().expect("fake interrupts lock poisoned")
    }
}

impl SmmuInterrupts for FakeInterrupts {
    fn trigger(&mut self, irq: SmmuIrq) {
        self.state().triggered.push(irq);
    }

    fn msi(&mut self, message: MsiMessage) -> bool {
        let mut state = self.state();
        let hit = state
            .doorbell
            .is_some_and(|(base, size)| message.address.wrapping_sub(base) < size);
        if hit {
            state.msis.push(message);
        }
        hit
    }
}

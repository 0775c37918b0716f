//! Driving a world by hand, for benchmarks that issue HyDFS operations themselves instead of
//! through the scenario's random workload, or that watch a scenario's RainStorm job.
//!
//! A benchmark builds a scenario whose workload has no clients (so HyDFS runs with the
//! workload's config but nothing is issued for it), then interleaves [`World::submit`],
//! [`World::crash_now`] and [`World::step`] / [`World::run_until_or`] with reads of the
//! processes' state through [`World::node`]. Everything stays a pure function of the scenario and
//! the calls made: the same calls give the same run.
//!
//! Operation results (`HydfsEvent::OpDone`) go to the world's checkers, not to the caller; a
//! benchmark that needs them drives an actor that records its own events (a wrapper around
//! `rainstorm_core::Node`) and reads them through [`World::node_mut`]. A scenario's RainStorm job
//! runs by itself; [`World::job_stats`] and [`World::job_judged`] show how far it got.

use super::{describe_op, Process, World};
use crate::actor::Actor;
use crate::rainstorm::harness::JobStats;
use crate::scenario::Slot;
use rainstorm_core::hydfs::{ClientOp, HydfsError, OpId};
use rainstorm_core::{NodeAddr, Time};

impl<A: Actor> World<A> {
    /// The simulated time (the clock of the last event handled or the last `run_until`).
    pub fn now(&self) -> Time {
        self.now
    }

    /// The number of slots.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// The address of a slot.
    pub fn addr(&self, slot: Slot) -> NodeAddr {
        self.slots[slot].addr
    }

    /// The slot at an address.
    pub fn slot_of(&self, addr: NodeAddr) -> Option<Slot> {
        self.by_addr.get(&addr).copied()
    }

    /// The process at `slot`, unless it is down (a paused process is returned).
    pub fn node(&self, slot: Slot) -> Option<&A> {
        match &self.slots.get(slot)?.process {
            Process::Up(a) | Process::Paused(a, _) => Some(a),
            Process::Down => None,
        }
    }

    /// The running process at `slot`, to read what it recorded. Inputs must go through the world
    /// ([`World::submit`]), or their outputs would not be drained.
    pub fn node_mut(&mut self, slot: Slot) -> Option<&mut A> {
        match &mut self.slots.get_mut(slot)?.process {
            Process::Up(a) | Process::Paused(a, _) => Some(a),
            Process::Down => None,
        }
    }

    /// What the scenario's RainStorm job has done so far (`None`: the scenario runs no job).
    pub fn job_stats(&self) -> Option<&JobStats> {
        self.rainstorm.as_ref().map(|r| &r.stats)
    }

    /// Whether the scenario's RainStorm job has been judged: once it completes, its destination
    /// is read back and compared with the reference run, and [`World::end`] then reports that
    /// verdict. `false` for a scenario without a job.
    pub fn job_judged(&self) -> bool {
        self.rainstorm.as_ref().is_some_and(|r| !r.active())
    }

    /// Starts the processes (and the scenario's timers) if no `run_until` did yet.
    pub fn start(&mut self) {
        if !self.started {
            self.run_until(self.now);
        }
    }

    /// Submits a HyDFS operation at `slot` now (on the slot's clock) and drains its outputs.
    /// `None` if the process is not running or has no HyDFS.
    pub fn submit(&mut self, slot: Slot, op: ClientOp) -> Option<Result<OpId, HydfsError>> {
        self.start();
        let local = self.local_now(slot);
        let now = self.now;
        let result = match &mut self.slots[slot].process {
            Process::Up(actor) => {
                self.trace.line(now, Some(slot), || format!("client: {}", describe_op(&op)));
                actor.submit(local, op)
            }
            _ => None,
        };
        self.drain(slot);
        result
    }

    /// Crashes the process at `slot` now, as a `Fault::Crash` would.
    pub fn crash_now(&mut self, slot: Slot) {
        self.start();
        let fault = crate::scenario::Fault::Crash { node: slot };
        self.apply_fault(fault);
    }

    /// When the next queued event is due, if any (at most the scenario's end).
    pub fn next_event_at(&self) -> Option<Time> {
        let at = self.queue.peek()?.0.at;
        (at.0 <= self.scenario.duration_ms).then_some(at)
    }

    /// Handles every event due at the next event time, but none later than `limit`, and returns
    /// the clock. Stepping this way sees the state after every distinct instant.
    pub fn step(&mut self, limit: Time) -> Time {
        self.start();
        let at = self.next_event_at().map_or(limit, |t| t.min(limit));
        self.run_until(at.max(self.now));
        self.now
    }

    /// Steps until `done` holds (checked after every instant), or until `limit`. Returns the time
    /// `done` first held.
    pub fn run_until_or(&mut self, limit: Time, mut done: impl FnMut(&mut Self) -> bool) -> Option<Time> {
        self.start();
        loop {
            if done(self) {
                return Some(self.now);
            }
            if self.now >= limit || self.now.0 >= self.scenario.duration_ms {
                return None;
            }
            self.step(limit);
        }
    }
}

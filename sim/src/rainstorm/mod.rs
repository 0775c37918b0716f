//! RainStorm jobs in the simulator: inputs, operator pairs, and the verdict on a job's output.

pub mod harness;
pub mod input;
pub mod programs;
pub mod verdict;

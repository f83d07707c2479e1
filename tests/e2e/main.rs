//! Process-level tests: real `cod` processes on loopback, driven through the REST API and the CLI.

mod boards;
mod cli;
mod cluster;
mod durability;
mod fixtures;
mod harness;
mod hybrid;

//! The client against the real stack, in-process: a gateway (or two
//! replicas of it) and the mock bank, each on a free port and a fresh
//! database in the run's shared Postgres. One binary, so one cluster.

mod example;
mod flows;
mod helpers;
mod in_use;
mod replicas;
mod resume;

//! The route file: its language ([`types`]), how YAML is read with positions ([`yaml`]) and how
//! `${VAR}`s are resolved ([`env`]). Checking and compiling it is [`crate::check`].

pub mod env;
pub mod types;
pub mod yaml;

//! Given / when / then tests of the domain through its public API.

mod envelope;
mod rules;
mod support;
mod view;

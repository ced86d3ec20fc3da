//! Given / when / then tests of the domain through its public API.

mod envelope;
mod intake;
mod personal;
mod query;
mod rules;
mod support;
mod view;

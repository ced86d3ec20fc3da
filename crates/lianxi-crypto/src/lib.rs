//! Sealing personal fields, and the key store.
//!
//! - `keys`: a case's [`DataKey`], the city's [`IndexKey`] and the node's
//!   key-encryption key ([`Kek`]) that wraps both. Keys are zeroized on drop
//!   and never printed.
//! - `seal` (pure, deterministic): [`seal_entry`] moves an event's personal
//!   values into sealed items before the event is hashed; [`reveal_entry`]
//!   and [`reveal_view`] put back what a caller may read and say why the
//!   rest is not shown; [`person_token`] recognises a repeat person without
//!   keeping the reference.
//! - `store` (async): [`KeyStore`] keeps the wrapped keys in a JetStream
//!   key-value bucket shared by the nodes and the unwrapped keys in memory
//!   only; [`KeyStore::destroy_case_key`] is the erasure;
//!   [`purge_case_messages`] drops an erased case's messages from the
//!   events stream.
//!
//! Architecture invariants:
//! - No key, wrapped or not, is ever written to the node's data directory;
//!   the key-encryption key never enters NATS.
//! - Sealing the same event with the same key gives the same bytes on every
//!   node (the nonce is derived, never random).
//! - No error message or log line carries key material or a personal value.

#![forbid(unsafe_code)]

mod error;
mod keys;
mod seal;
mod store;

pub use error::{Error, Result};
pub use keys::{DataKey, IndexKey, Kek};
pub use seal::{
    Verdict, conceal, open_value, person_token, reveal_entry, reveal_view, seal_entry, seal_value,
    strip,
};
pub use store::{KeyStore, purge_case_messages};

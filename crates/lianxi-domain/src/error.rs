//! The two ways this crate says no: a [`Rejection`] of an event (a value the
//! log records and shows to the agency that sent it) and a [`PolicyError`] for
//! a configuration that cannot be trusted to compute deadlines.

use std::fmt;

use lianxi_proto::v1::RejectionCode;

/// The longest rejection reason, in characters; longer ones are cut
/// (ending in `...`).
pub const MAX_REASON_CHARS: usize = 2_000;

/// Why an event was not applied.
///
/// A rejection is a value, not a panic: the log keeps it next to the raw bytes
/// so that nothing an agency sends is dropped silently. `reason` is written for
/// the clerk who sent the event: it names the thing that is wrong and what to
/// do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The machine-readable class, stored in `RejectionRecord.code`.
    pub code: RejectionCode,
    /// One sentence an agency clerk can read and act on.
    pub reason: String,
}

impl Rejection {
    /// A rejection with the given code and reason. The reason is made safe
    /// to echo ([`crate::printable`]): at most [`MAX_REASON_CHARS`]
    /// characters, no control or invisible format character, whatever
    /// agency input it quotes.
    pub fn new(code: RejectionCode, reason: impl Into<String>) -> Self {
        Rejection {
            code,
            reason: crate::agency::printable(&reason.into(), MAX_REASON_CHARS),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str_name(), self.reason)
    }
}

impl std::error::Error for Rejection {}

/// A policy file that cannot be used. Deadlines computed from a bad policy
/// would be wrong on every replica at once, so the service refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The text is not TOML, or names a key this version does not know (a
    /// misspelt key would otherwise silently fall back to its default).
    #[error("policy file is not valid: {0}")]
    Parse(#[from] toml::de::Error),
    /// A value outside the range that makes sense for its key.
    #[error("policy key `{key}` is {value}; it must be between {min} and {max}")]
    OutOfRange {
        /// The TOML key.
        key: &'static str,
        /// The value found.
        value: u64,
        /// Smallest accepted value.
        min: u64,
        /// Largest accepted value.
        max: u64,
    },
    /// Two values that are each in range but contradict each other.
    #[error("policy key `{key}` is {value}; it must not exceed `{other_key}` ({other_value})")]
    Inconsistent {
        /// The TOML key that is too large.
        key: &'static str,
        /// Its value.
        value: u64,
        /// The key it must not exceed.
        other_key: &'static str,
        /// That key's value.
        other_value: u64,
    },
}

//! Deadlines are local rules, so they are configuration. The defaults are the
//! figures in DOMAIN.md; a city overrides any of them in `policy.toml`.

use serde::Deserialize;

use crate::error::PolicyError;

/// The deadline policy every replica applies to event times.
///
/// Every replica and every replay must load the same policy to reach the same
/// view; a change of policy is a change of the views' meaning, not a
/// correction of the log.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Time for a referred agency to accept or return a referral that names
    /// no due time of its own.
    pub referral_response_hours: u32,
    /// Time for the court to decide a protection-order application.
    pub order_decision_hours: u32,
    /// Time for the court to decide an urgent application.
    pub order_decision_urgent_hours: u32,
    /// The longest term of a protection order, in calendar months from the
    /// decision (or from the extension).
    pub order_max_months: u32,
    /// Time for police to check a granted order with the respondent.
    pub order_check_hours: u32,
    /// Time for police to visit after a written warning.
    pub warning_follow_up_days: u32,
    /// Longest emergency placement before the person goes home or to a
    /// shelter stay proper.
    pub emergency_placement_hours: u32,
    /// Shelter stay before a review, unless extended.
    pub shelter_stay_days: u32,
    /// 110 arrival time in an urban area.
    pub alarm_arrival_urban_minutes: u32,
    /// 110 arrival time in a suburban area, or where the area is not known.
    pub alarm_arrival_suburban_minutes: u32,
    /// Time to send an acceptance notice for a petition letter or visit.
    pub petition_acceptance_days: u32,
    /// Time to handle a petition letter or visit to closure.
    pub petition_handling_days: u32,
    /// Working days (Monday to Friday, China Standard Time) for a legal-aid
    /// decision. Public holidays are not modelled.
    pub legal_aid_decision_working_days: u32,
    /// A case of the same person opened within this many days before is a
    /// repeat case. Days rather than months, so that the window is the same
    /// length whatever the month.
    pub repeat_window_days: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            referral_response_hours: 72,
            order_decision_hours: 72,
            order_decision_urgent_hours: 24,
            order_max_months: 6,
            order_check_hours: 24,
            warning_follow_up_days: 90,
            emergency_placement_hours: 24,
            shelter_stay_days: 10,
            alarm_arrival_urban_minutes: 5,
            alarm_arrival_suburban_minutes: 10,
            petition_acceptance_days: 15,
            petition_handling_days: 60,
            legal_aid_decision_working_days: 7,
            repeat_window_days: 365,
        }
    }
}

impl Policy {
    /// Parses and validates a policy. Keys left out keep their defaults;
    /// unknown keys are an error so that a typo cannot go unnoticed.
    pub fn from_toml(s: &str) -> Result<Policy, PolicyError> {
        let policy: Policy = toml::from_str(s)?;
        policy.validate()?;
        Ok(policy)
    }

    /// Checks every value against a range that makes sense for it. Zero is
    /// never accepted: a zero deadline makes every obligation overdue at birth.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let ranges: [(&'static str, u32, u32, u32); 14] = [
            (
                "referral_response_hours",
                self.referral_response_hours,
                1,
                8_760,
            ),
            ("order_decision_hours", self.order_decision_hours, 1, 720),
            (
                "order_decision_urgent_hours",
                self.order_decision_urgent_hours,
                1,
                720,
            ),
            ("order_max_months", self.order_max_months, 1, 60),
            ("order_check_hours", self.order_check_hours, 1, 720),
            (
                "warning_follow_up_days",
                self.warning_follow_up_days,
                1,
                3_650,
            ),
            (
                "emergency_placement_hours",
                self.emergency_placement_hours,
                1,
                720,
            ),
            ("shelter_stay_days", self.shelter_stay_days, 1, 365),
            (
                "alarm_arrival_urban_minutes",
                self.alarm_arrival_urban_minutes,
                1,
                1_440,
            ),
            (
                "alarm_arrival_suburban_minutes",
                self.alarm_arrival_suburban_minutes,
                1,
                1_440,
            ),
            (
                "petition_acceptance_days",
                self.petition_acceptance_days,
                1,
                365,
            ),
            (
                "petition_handling_days",
                self.petition_handling_days,
                1,
                3_650,
            ),
            (
                "legal_aid_decision_working_days",
                self.legal_aid_decision_working_days,
                1,
                365,
            ),
            ("repeat_window_days", self.repeat_window_days, 1, 3_650),
        ];
        for (key, value, min, max) in ranges {
            if value < min || value > max {
                return Err(PolicyError::OutOfRange {
                    key,
                    value: u64::from(value),
                    min: u64::from(min),
                    max: u64::from(max),
                });
            }
        }
        let pairs: [(&'static str, u32, &'static str, u32); 3] = [
            (
                "order_decision_urgent_hours",
                self.order_decision_urgent_hours,
                "order_decision_hours",
                self.order_decision_hours,
            ),
            (
                "alarm_arrival_urban_minutes",
                self.alarm_arrival_urban_minutes,
                "alarm_arrival_suburban_minutes",
                self.alarm_arrival_suburban_minutes,
            ),
            (
                "petition_acceptance_days",
                self.petition_acceptance_days,
                "petition_handling_days",
                self.petition_handling_days,
            ),
        ];
        for (key, value, other_key, other_value) in pairs {
            if value > other_value {
                return Err(PolicyError::Inconsistent {
                    key,
                    value: u64::from(value),
                    other_key,
                    other_value: u64::from(other_value),
                });
            }
        }
        Ok(())
    }
}

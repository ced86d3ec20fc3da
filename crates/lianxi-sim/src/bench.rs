//! The figures of one benchmark run as one line for `scripts/bench`:
//! `BENCH-JSON {"key": number, ...}`, printed last by every benchmark
//! example. `scripts/bench` collects these lines from each step's output
//! and merges them into `target/bench/results.json` (BENCHMARKS.md,
//! "results.json"). A flat object of numbers and strings, so no JSON crate
//! is needed to write it.

/// Builds one `BENCH-JSON` line; starts with `machine`.
#[derive(Debug, Clone)]
pub struct BenchJson {
    fields: Vec<(String, String)>,
}

impl Default for BenchJson {
    fn default() -> Self {
        BenchJson::new()
    }
}

impl BenchJson {
    /// A line holding `machine` ([`crate::machine`]).
    pub fn new() -> BenchJson {
        let mut b = BenchJson { fields: Vec::new() };
        b.text("machine", &crate::machine());
        b
    }

    /// A measured number: rounded to a whole number from 100 up, to three
    /// decimals below; `null` when it is not finite (nothing was measured).
    pub fn num(&mut self, key: &str, value: f64) -> &mut Self {
        let v = if !value.is_finite() {
            "null".to_owned()
        } else if value.abs() >= 100.0 {
            format!("{value:.0}")
        } else {
            format!("{value:.3}")
        };
        self.set(key, v)
    }

    /// A count.
    pub fn int(&mut self, key: &str, value: u64) -> &mut Self {
        self.set(key, value.to_string())
    }

    /// A string.
    pub fn text(&mut self, key: &str, value: &str) -> &mut Self {
        self.set(key, quote(value))
    }

    fn set(&mut self, key: &str, value: String) -> &mut Self {
        match self.fields.iter_mut().find(|(k, _)| k == key) {
            Some(f) => f.1 = value,
            None => self.fields.push((key.to_owned(), value)),
        }
        self
    }

    /// `BENCH-JSON {...}`.
    pub fn line(&self) -> String {
        let body: Vec<String> = self
            .fields
            .iter()
            .map(|(k, v)| format!("{}: {v}", quote(k)))
            .collect();
        format!("BENCH-JSON {{{}}}", body.join(", "))
    }

    /// Prints [`BenchJson::line`] on stdout.
    pub fn print(&self) {
        println!("{}", self.line());
    }
}

/// A JSON string.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A size as it appears in a key: 10,000,000 is `10m`, 200,000 is `200k`,
/// 1,500 is `1500`.
pub fn size_tag(n: u64) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}m", n / 1_000_000)
    } else if n >= 1_000 && n.is_multiple_of(1_000) {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_one_flat_json_object() {
        let mut b = BenchJson::new();
        b.num("rate_per_s", 12_345.678)
            .num("p99_ms", 0.41234)
            .num("none", f64::NAN)
            .int("entries", 10_000_000)
            .text("note", "a \"quoted\"\\ line\n\u{1}");
        b.num("rate_per_s", 7.0);
        let line = b.line();
        let body = line.strip_prefix("BENCH-JSON {").unwrap();
        assert!(body.starts_with("\"machine\": \""), "{line}");
        assert!(body.ends_with(
            "\"rate_per_s\": 7.000, \"p99_ms\": 0.412, \"none\": null, \"entries\": 10000000, \"note\": \"a \\\"quoted\\\"\\\\ line\\n\\u0001\"}"
        ), "{line}");
    }

    #[test]
    fn sizes_are_named_short() {
        assert_eq!(size_tag(10_000_000), "10m");
        assert_eq!(size_tag(1_000_000), "1m");
        assert_eq!(size_tag(200_000), "200k");
        assert_eq!(size_tag(1_500_000), "1500k");
        assert_eq!(size_tag(1_500), "1500");
        assert_eq!(size_tag(999), "999");
    }
}

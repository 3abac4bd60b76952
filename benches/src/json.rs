//! Just enough JSON to print one flat object per line, without pulling in serde.

use std::fmt::{self, Write};

/// A flat JSON object under construction; `Display` prints it on one line.
#[derive(Clone, Debug, Default)]
pub struct Json {
    body: String,
}

impl Json {
    fn key(&mut self, key: &str) {
        if !self.body.is_empty() {
            self.body.push(',');
        }
        push_string(&mut self.body, key);
        self.body.push(':');
    }

    /// Adds a string field.
    #[must_use]
    pub fn str(mut self, key: &str, value: &str) -> Json {
        self.key(key);
        push_string(&mut self.body, value);
        self
    }

    /// Adds an integer field.
    #[must_use]
    pub fn int(mut self, key: &str, value: impl Into<i128>) -> Json {
        self.key(key);
        let _ = write!(self.body, "{}", value.into());
        self
    }

    /// Adds a number with three decimals; NaN and infinities become `null`.
    #[must_use]
    pub fn num(mut self, key: &str, value: f64) -> Json {
        self.key(key);
        if value.is_finite() {
            let _ = write!(self.body, "{value:.3}");
        } else {
            self.body.push_str("null");
        }
        self
    }

    /// Adds a number, or `null` when it is unknown.
    #[must_use]
    pub fn opt_num(self, key: &str, value: Option<f64>) -> Json {
        self.num(key, value.unwrap_or(f64::NAN))
    }

    /// Adds an integer, or `null` when it is unknown.
    #[must_use]
    pub fn opt_int(mut self, key: &str, value: Option<u64>) -> Json {
        match value {
            Some(v) => self.int(key, v),
            None => {
                self.key(key);
                self.body.push_str("null");
                self
            }
        }
    }

    /// Adds a boolean field.
    #[must_use]
    pub fn bool(mut self, key: &str, value: bool) -> Json {
        self.key(key);
        self.body.push_str(if value { "true" } else { "false" });
        self
    }
}

fn push_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl fmt::Display for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{{}}}", self.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_escaped_and_unknowns_are_null() {
        let json = Json::default().str("a\"b", "x\\y\n").int("n", 3u64).num("r", 0.5).opt_num("u", None).bool("t", true);
        assert_eq!(json.to_string(), r#"{"a\"b":"x\\y\u000a","n":3,"r":0.500,"u":null,"t":true}"#);
    }
}

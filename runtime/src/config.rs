//! Checking a configuration and reading its values: every problem collected
//! and reported at once, durations as the flags write them, URLs safe to log.
//! The argument groups themselves build domain objects and live in
//! caas-core's `config`.

use std::time::Duration;

/// Every problem found in the configuration, reported at once.
#[derive(Debug, Default)]
pub struct Problems(Vec<String>);

impl Problems {
    pub fn add(&mut self, problem: impl Into<String>) {
        self.0.push(problem.into());
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Err` listing every problem (secrets are never part of a message).
    pub fn finish(self) -> Result<(), String> {
        if self.0.is_empty() {
            return Ok(());
        }
        let mut out = String::from("invalid configuration:");
        for problem in &self.0 {
            out.push_str("\n  - ");
            out.push_str(problem);
        }
        Err(out)
    }
}

/// `900` (seconds), `250ms`, `900s`, `15m`, `1h`, `7d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let value: u64 =
        digits.parse().map_err(|_| format!("'{text}' is not a duration (e.g. 900, 250ms, 15m, 1h, 7d)"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(value),
        "" | "s" => Duration::from_secs(value),
        "m" => Duration::from_secs(value * 60),
        "h" => Duration::from_secs(value * 3600),
        "d" => Duration::from_secs(value * 86_400),
        _ => return Err(format!("'{text}' has an unknown unit (use ms, s, m, h or d)")),
    })
}

/// A URL with any password replaced, for logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("900"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("7w").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("postgres://u:pw@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact_url("sqlite://data/caas.db"), "sqlite://data/caas.db");
    }
}

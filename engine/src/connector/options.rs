//! A table's WITH options, consumed one by one so that whatever is left over is reported as
//! unknown, with the option the connector asked for that is closest to it ("did you mean").

use std::str::FromStr;
use std::time::Duration;

use super::ConnectorError;

/// The options of one table, in the order written.
#[derive(Debug, Clone, Default)]
pub struct Options {
    entries: Vec<(String, String)>,
    taken: Vec<bool>,
    /// Every key a connector asked for: the options it knows.
    asked: Vec<String>,
}

/// Arroyo's default idle time of a source (`idle_micros`).
pub const DEFAULT_IDLE: Duration = Duration::from_secs(300);

impl Options {
    pub fn new(entries: Vec<(String, String)>) -> Self {
        let taken = vec![false; entries.len()];
        Options {
            entries,
            taken,
            asked: Vec::new(),
        }
    }

    /// Takes the value of `key`, marking it used.
    pub fn take(&mut self, key: &str) -> Option<String> {
        if !self.asked.iter().any(|k| k == key) {
            self.asked.push(key.to_string());
        }
        let i = self.entries.iter().position(|(k, _)| k == key)?;
        self.taken[i] = true;
        Some(self.entries[i].1.clone())
    }

    /// Takes a required option. When it is missing and an unknown option is a near miss of
    /// it, that option is the error (with the suggestion), not the missing one.
    pub fn require(&mut self, connector: &str, key: &str) -> Result<String, ConnectorError> {
        if let Some(value) = self.take(key) {
            return Ok(value);
        }
        let typo = self
            .entries
            .iter()
            .zip(&self.taken)
            .filter(|(_, taken)| !**taken)
            .map(|((k, _), _)| k)
            .find(|k| closest(k, std::iter::once(key)).is_some());
        Err(match typo {
            Some(typo) => ConnectorError::UnknownOption {
                connector: connector.to_string(),
                option: typo.clone(),
                suggestion: Some(key.to_string()),
            },
            None => ConnectorError::MissingOption {
                connector: connector.to_string(),
                option: key.to_string(),
            },
        })
    }

    /// Takes the required `event_rate` of a generator: a number per second above 0 and at most
    /// `max` (`unit` names what it counts, for the message).
    pub fn require_rate(
        &mut self,
        connector: &str,
        unit: &str,
        max: f64,
    ) -> Result<f64, ConnectorError> {
        let rate = self.require(connector, "event_rate")?;
        rate.trim()
            .parse()
            .ok()
            .filter(|r: &f64| r.is_finite() && *r > 0.0 && *r <= max)
            .ok_or_else(|| ConnectorError::InvalidOption {
                option: "event_rate".into(),
                value: rate.clone(),
                reason: if max.is_finite() {
                    format!("must be a number of {unit} per second above 0 and at most {max:e}")
                } else {
                    format!("must be a number of {unit} per second above 0")
                },
            })
    }

    /// Takes and parses an option.
    pub fn take_parsed<T: FromStr>(&mut self, key: &str) -> Result<Option<T>, ConnectorError>
    where
        T::Err: std::fmt::Display,
    {
        self.take(key)
            .map(|v| {
                v.trim()
                    .parse::<T>()
                    .map_err(|e| ConnectorError::InvalidOption {
                        option: key.to_string(),
                        value: v.clone(),
                        reason: e.to_string(),
                    })
            })
            .transpose()
    }

    /// Takes a duration option (`'10s'`, `'1 second'`, `'250ms'`, or microseconds as a number).
    pub fn take_duration(&mut self, key: &str) -> Result<Option<Duration>, ConnectorError> {
        self.take(key)
            .map(|v| {
                let parsed = match v.trim().parse::<u64>() {
                    Ok(micros) => Ok(Duration::from_micros(micros)),
                    Err(_) => parse_duration(&v),
                };
                parsed.map_err(|e| ConnectorError::InvalidOption {
                    option: key.to_string(),
                    value: v.clone(),
                    reason: e.to_string(),
                })
            })
            .transpose()
    }

    /// Takes Arroyo's `idle_micros` (or `idle_time`): how long a source partition or subtask
    /// may go without data before it stops holding the watermark back. A number is
    /// microseconds, anything else a duration (`'30s'`); zero or less turns idleness off;
    /// 5 minutes by default, as in Arroyo.
    pub fn take_idle(&mut self) -> Result<Option<Duration>, ConnectorError> {
        let (key, value) = match (self.take("idle_micros"), self.take("idle_time")) {
            (Some(_), Some(_)) => {
                return Err(ConnectorError::Usage(
                    "give either 'idle_micros' or 'idle_time', not both".into(),
                ));
            }
            (Some(v), None) => ("idle_micros", v),
            (None, Some(v)) => ("idle_time", v),
            (None, None) => return Ok(Some(DEFAULT_IDLE)),
        };
        if value.trim().parse::<i64>().is_ok_and(|n| n <= 0) {
            return Ok(None);
        }
        let mut one = Options::new(vec![(key.to_string(), value)]);
        one.take_duration(key)
    }

    /// The option the connector asked for that `unknown` is a near miss of, if any.
    pub fn suggestion(&self, unknown: &str) -> Option<String> {
        closest(unknown, self.asked.iter().map(String::as_str))
    }

    /// Names of the options nobody took, in the order written.
    pub fn unused(&self) -> impl Iterator<Item = &str> {
        self.entries
            .iter()
            .zip(&self.taken)
            .filter(|(_, taken)| !**taken)
            .map(|((k, _), _)| k.as_str())
    }
}

/// A value that does not parse as what an option (or a setting) wants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// Not a number followed by a time unit.
    #[error("'{0}' is not a duration such as '10s' or '500ms'")]
    NotADuration(String),
    /// A number followed by a unit that is no time unit.
    #[error("unknown time unit '{unit}' in '{text}'")]
    TimeUnit { unit: String, text: String },
    /// A duration below zero or beyond what can be represented.
    #[error("'{0}' is not a valid duration")]
    BadDuration(String),
    /// Not a whole number followed by a size unit.
    #[error("'{0}' is not a data size such as '128MB'")]
    NotASize(String),
    /// A number followed by a unit that is no size unit.
    #[error("unknown data size unit '{unit}' in '{text}'")]
    SizeUnit { unit: String, text: String },
    /// A size beyond 64 bits.
    #[error("'{0}' is too large")]
    TooLarge(String),
}

/// The candidate closest to `word`, if it is a near miss (a typo, a changed separator): a
/// Damerau-Levenshtein distance of at most a third of the word, or the same words in
/// another spelling (`idle.time` for `idle_time`).
pub(crate) fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<String> {
    let normal = |s: &str| s.to_ascii_lowercase().replace(['.', '-', ' '], "_");
    let word_n = normal(word);
    candidates
        .filter(|c| *c != word)
        .map(|c| (strsim::damerau_levenshtein(&word_n, &normal(c)), c))
        .filter(|(d, _)| *d <= (word.chars().count() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.to_string())
}

/// Parses a duration such as `10s`, `1.5 seconds`, `250ms`, `2 minutes`, `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, ValueError> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| ValueError::NotADuration(text.to_string()))?;
    let seconds = match unit.trim().to_ascii_lowercase().as_str() {
        "ns" | "nanosecond" | "nanoseconds" => 1e-9,
        "us" | "µs" | "microsecond" | "microseconds" => 1e-6,
        "ms" | "millisecond" | "milliseconds" => 1e-3,
        "" | "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
        "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
        "h" | "hour" | "hours" => 3600.0,
        "d" | "day" | "days" => 86400.0,
        other => {
            return Err(ValueError::TimeUnit {
                unit: other.to_string(),
                text: text.to_string(),
            });
        }
    };
    let total = number * seconds;
    if !total.is_finite() || total < 0.0 {
        return Err(ValueError::BadDuration(text.to_string()));
    }
    Ok(Duration::from_secs_f64(total))
}

/// Parses a data size: a whole number with an optional unit (`b`, `k`/`kb`/`kib`, `m`..., `g`,
/// `t`; powers of 1024), as `'128MB'`.
pub fn parse_data_size(text: &str) -> Result<u64, ValueError> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| ValueError::NotASize(text.to_string()))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => {
            return Err(ValueError::SizeUnit {
                unit: other.to_string(),
                text: text.to_string(),
            });
        }
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| ValueError::TooLarge(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1 second"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2 minutes"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("ten seconds").is_err());
        assert!(parse_duration("5 fortnights").is_err());
    }

    #[test]
    fn data_sizes_parse() {
        assert_eq!(parse_data_size("100"), Ok(100));
        assert_eq!(parse_data_size("5MB"), Ok(5 << 20));
        assert_eq!(parse_data_size("2 gib"), Ok(2 << 30));
        assert_eq!(parse_data_size("1k"), Ok(1024));
        assert!(parse_data_size("1.5MB").is_err());
        assert!(parse_data_size("5 parsecs").is_err());
    }

    #[test]
    fn near_misses_are_suggested() {
        let mut o = Options::new(vec![("bootstrap_server".into(), "x".into())]);
        assert_eq!(o.take("bootstrap_servers"), None);
        assert_eq!(o.take("topic"), None);
        assert_eq!(
            o.suggestion("bootstrap_server").as_deref(),
            Some("bootstrap_servers")
        );
        assert_eq!(o.suggestion("sink.commit-mode"), None);
        o.take("sink.commit_mode");
        assert_eq!(
            o.suggestion("sink.commit-mode").as_deref(),
            Some("sink.commit_mode")
        );
        assert_eq!(o.suggestion("colour"), None);
        // A required option written wrong is reported as the unknown one.
        assert_eq!(
            o.require("kafka", "bootstrap_servers"),
            Err(ConnectorError::UnknownOption {
                connector: "kafka".into(),
                option: "bootstrap_server".into(),
                suggestion: Some("bootstrap_servers".into()),
            })
        );
    }

    #[test]
    fn unused_options_are_reported_in_order() {
        let mut o = Options::new(vec![
            ("a".into(), "1".into()),
            ("b".into(), "x".into()),
            ("c".into(), "3".into()),
        ]);
        assert_eq!(o.take_parsed::<u32>("a"), Ok(Some(1)));
        assert!(o.take_parsed::<u32>("b").is_err());
        assert_eq!(o.unused().collect::<Vec<_>>(), vec!["c"]);
    }
}

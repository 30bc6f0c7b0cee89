//! Cron expressions of a worker's `[triggers] crons`, in the five-field form of the hosted
//! platform's Cron Triggers, and the times (UTC) at which they fire.
//!
//! The fields are minute, hour, day-of-month, month and day-of-week. Each accepts `*`, numbers,
//! ranges (`1-5`), steps (`*/15`, `10-50/20`) and lists (`1,15`). The month field also accepts
//! `JAN`-`DEC`, and the day-of-week field `SUN`-`SAT` with Quartz numbering: 1 is Sunday and 7 is
//! Saturday. Day-of-month also takes `L` (last day) and `W` (nearest weekday), and day-of-week
//! `L` (last of the month) and `#` (`6#3`, third Friday). When both day fields are restricted, a
//! day matches if either field matches, as in Vixie cron.
//!
//! NOTE: the Quartz numbering follows the hosted platform's published cron examples, where
//! `0 17 * * 1` runs at 17:00 on Sunday. POSIX cron counts from 0 (Sunday), so the same number
//! means Monday there. Day names mean the same in both.

use std::time::SystemTime;

use chrono::{DateTime, Utc};
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

/// Names of the five fields, in order, with the values each accepts.
const FIELDS: [(&str, &str); 5] = [
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day-of-month", "1-31, L and W"),
    ("month", "1-12 or JAN-DEC"),
    ("day-of-week", "1-7 (1 is Sunday) or SUN-SAT, L and #"),
];

const MONTH_FIELD: usize = 3;
const WEEKDAY_FIELD: usize = 4;

const MONTH_NAMES: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// One cron expression of `[triggers] crons`, parsed.
#[derive(Debug, Clone)]
pub struct CronTrigger {
    /// The expression as written in the configuration, which is what `controller.cron` shows.
    expression: String,
    schedule: Cron,
}

impl CronTrigger {
    /// Parses a five-field cron expression. The error names the expression and, where one
    /// field is at fault, that field and the values it accepts.
    pub fn parse(expression: &str) -> Result<Self, String> {
        let invalid = |reason: String| format!("invalid cron expression {expression:?}: {reason}");
        let fields: Vec<&str> = expression.split_whitespace().collect();
        if fields.len() != FIELDS.len() {
            return Err(invalid(format!(
                "it has {} fields, but a cron trigger needs five: minute, hour, day-of-month, \
                 month and day-of-week",
                fields.len()
            )));
        }
        for (index, field) in fields.iter().enumerate() {
            if let Err(reason) = check_field(index, field) {
                let (name, accepted) = FIELDS[index];
                return Err(invalid(format!(
                    "the {name} field {field:?} is invalid ({reason}); it accepts {accepted}"
                )));
            }
        }
        let schedule = parser()
            .parse(&fields.join(" "))
            .map_err(|error| invalid(error.to_string()))?;
        // A day that no month has, such as 30 February, parses but never fires.
        if schedule
            .find_next_occurrence(&DateTime::<Utc>::from(SystemTime::now()), false)
            .is_err()
        {
            return Err(invalid(
                "it matches no date, so the trigger would never fire".to_owned(),
            ));
        }
        Ok(Self {
            expression: expression.to_owned(),
            schedule,
        })
    }

    /// Returns the expression as written in the configuration.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// Returns the first time after `time` (exclusive) at which the trigger fires, always at
    /// the start of a minute, UTC. Returns `None` when no such time exists.
    pub fn next_after(&self, time: SystemTime) -> Option<SystemTime> {
        let time = DateTime::<Utc>::from(time);
        self.schedule
            .find_next_occurrence(&time, false)
            .ok()
            .map(SystemTime::from)
    }
}

/// Builds the parser for five fields with Quartz weekday numbering.
fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .alternative_weekdays(true)
        .build()
}

/// Checks one field on its own, so an error can name it. croner replaces month and day names
/// anywhere in the expression, so this rejects names in the wrong field first. It also
/// checks the day-of-week range, because croner's Quartz mode accepts 8 and never fires on it.
fn check_field(index: usize, field: &str) -> Result<(), String> {
    let upper = field.to_ascii_uppercase();
    for word in upper
        .split(|c: char| !c.is_ascii_alphabetic())
        .filter(|word| !word.is_empty())
    {
        let allowed = match index {
            MONTH_FIELD => MONTH_NAMES.contains(&word),
            WEEKDAY_FIELD => {
                let day = word.strip_suffix('L').unwrap_or(word);
                word == "L" || DAY_NAMES.contains(&day)
            }
            _ => true,
        };
        if !allowed {
            return Err(format!("{word:?} is not a name this field accepts"));
        }
    }
    if index == WEEKDAY_FIELD {
        check_weekday_numbers(&upper)?;
    }
    let mut probe = ["*"; 5];
    probe[index] = field;
    parser()
        .parse(&probe.join(" "))
        .map(|_| ())
        .map_err(|error| error.to_string())
}

/// Checks that every weekday number in `field` is 1-7. Numbers after `/` (a step) and `#` (the
/// week of the month) are not weekdays and are left to croner.
fn check_weekday_numbers(field: &str) -> Result<(), String> {
    let mut previous = ' ';
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        if !c.is_ascii_digit() {
            previous = c;
            continue;
        }
        let mut digits = c.to_string();
        while let Some(&next) = chars.peek() {
            if !next.is_ascii_digit() {
                break;
            }
            digits.push(next);
            chars.next();
        }
        let is_weekday = previous != '/' && previous != '#';
        let in_range = digits
            .parse::<u32>()
            .is_ok_and(|day| (1..=7).contains(&day));
        if is_weekday && !in_range {
            return Err(format!("{digits} is not a weekday number"));
        }
        previous = '0';
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> SystemTime {
        SystemTime::from(
            DateTime::parse_from_rfc3339(text)
                .expect("valid RFC 3339 time")
                .with_timezone(&Utc),
        )
    }

    fn next(expression: &str, after: &str) -> String {
        let trigger = CronTrigger::parse(expression).expect("expression parses");
        let time = trigger.next_after(utc(after)).expect("a next fire time");
        DateTime::<Utc>::from(time).to_rfc3339()
    }

    #[test]
    fn next_fire_of_steps_ranges_and_lists() {
        // 2026-12-04 is a Friday.
        let cases = [
            (
                "* * * * *",
                "2026-12-04T23:11:30Z",
                "2026-12-04T23:12:00+00:00",
            ),
            (
                "* * * * *",
                "2026-12-04T23:12:00Z",
                "2026-12-04T23:13:00+00:00",
            ),
            (
                "*/5 * * * *",
                "2026-12-04T23:11:30Z",
                "2026-12-04T23:15:00+00:00",
            ),
            (
                "15-45/15 9-17/4 * * *",
                "2026-12-04T13:50:00Z",
                "2026-12-04T17:15:00+00:00",
            ),
            (
                "0,30 8 * * *",
                "2026-12-04T08:10:00Z",
                "2026-12-04T08:30:00+00:00",
            ),
            (
                "0 0 1 JAN,jul *",
                "2026-12-04T00:00:00Z",
                "2027-01-01T00:00:00+00:00",
            ),
            (
                "59 23 L * *",
                "2026-12-04T00:00:00Z",
                "2026-12-31T23:59:00+00:00",
            ),
            (
                "59 23 LW * *",
                "2026-12-04T00:00:00Z",
                "2026-12-31T23:59:00+00:00",
            ),
            // 14 February 2027 is a Sunday, so the nearest weekday is Monday the 15th.
            (
                "0 9 14W 2 *",
                "2026-12-04T00:00:00Z",
                "2027-02-15T09:00:00+00:00",
            ),
        ];
        for (expression, after, expected) in cases {
            assert_eq!(
                next(expression, after),
                expected,
                "{expression} after {after}"
            );
        }
    }

    #[test]
    fn weekday_numbers_start_at_sunday() {
        let cases = [
            (
                "0 17 * * 1",
                "2026-12-04T12:00:00Z",
                "2026-12-06T17:00:00+00:00",
            ),
            (
                "0 17 * * SUN",
                "2026-12-04T12:00:00Z",
                "2026-12-06T17:00:00+00:00",
            ),
            (
                "10 7 * * MON-FRI",
                "2026-12-04T08:00:00Z",
                "2026-12-07T07:10:00+00:00",
            ),
            (
                "10 7 * * 2-6",
                "2026-12-04T08:00:00Z",
                "2026-12-07T07:10:00+00:00",
            ),
            (
                "0 18 * * 6L",
                "2026-12-04T00:00:00Z",
                "2026-12-25T18:00:00+00:00",
            ),
            (
                "0 9 * * 2#1",
                "2026-12-04T00:00:00Z",
                "2026-12-07T09:00:00+00:00",
            ),
        ];
        for (expression, after, expected) in cases {
            assert_eq!(
                next(expression, after),
                expected,
                "{expression} after {after}"
            );
        }
    }

    #[test]
    fn expression_is_kept_as_written() {
        let trigger = CronTrigger::parse("*/5  * * * mon").expect("expression parses");
        assert_eq!(trigger.expression(), "*/5  * * * mon");
    }

    #[test]
    fn invalid_fields_are_named() {
        let cases = [
            ("60 * * * *", "minute field \"60\""),
            ("* 24 * * *", "hour field \"24\""),
            ("* * 0 * *", "day-of-month field \"0\""),
            ("* * * 13 *", "month field \"13\""),
            ("* * * MON *", "month field \"MON\""),
            ("* * * * JAN", "day-of-week field \"JAN\""),
            ("* * * * 8", "day-of-week field \"8\""),
            ("* * * * 0", "day-of-week field \"0\""),
            ("*/0 * * * *", "minute field \"*/0\""),
            ("abc * * * *", "minute field \"abc\""),
            ("5-1 * * * *", "minute field \"5-1\""),
        ];
        for (expression, field) in cases {
            let error = CronTrigger::parse(expression).expect_err(expression);
            assert!(error.contains(&format!("{expression:?}")), "{error}");
            assert!(error.contains(field), "{expression}: {error}");
        }
    }

    #[test]
    fn wrong_field_count_is_rejected() {
        for expression in ["* * * *", "0 * * * * *", "@daily", ""] {
            let error = CronTrigger::parse(expression).expect_err(expression);
            assert!(error.contains("needs five"), "{expression}: {error}");
        }
    }

    #[test]
    fn expression_matching_no_date_is_rejected() {
        let error = CronTrigger::parse("0 0 30 2 *").expect_err("30 February");
        assert!(error.contains("never fire"), "{error}");
    }
}

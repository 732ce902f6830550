//! An `exec` program's output: stdout lines read by the convention (like CI workflow
//! commands) — `::progress:: 0.4 fetching pages` reports progress (a fraction, then an
//! optional message), `::checkpoint:: {"pages": 12}` appends a partial result (JSON, or the
//! raw text if it is not JSON), `::usage:: {"output_tokens": 120}` reports usage
//! increments (a JSON object of finite, non-negative numbers named as budget dimensions;
//! any other is ignored with a warning), every other line is ordinary output — and the last lines of
//! stdout and stderr kept for the result. Progress messages and kept lines are cut to
//! [`MAX_LINE_CHARS`], so an exec result (at most 40 lines of 4,000 bytes) and its progress
//! message stay within the default limits (`crate::limits`).

use std::collections::VecDeque;

use serde_json::json;
use tokio::io::Lines;

use crate::task::{Json, Usage, budget};

/// Lines of stdout and of stderr kept for the result.
const TAIL_LINES: usize = 20;
/// Longer output lines are cut to this many characters in the result.
const MAX_LINE_CHARS: usize = 1000;

/// One stdout line, read by the convention in the module docs.
#[derive(Debug, PartialEq)]
pub enum StdoutLine {
    Progress {
        fraction: f64,
        message: String,
    },
    Checkpoint(Json),
    Usage(Usage),
    /// A `::usage::` line that is not a valid increment: ignored, with a warning.
    BadUsage(String),
    Output(String),
}

pub fn parse_stdout_line(line: &str) -> StdoutLine {
    if let Some(rest) = line.strip_prefix("::progress::") {
        let rest = rest.trim();
        let (number, message) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        if let Ok(fraction) = number.parse::<f64>()
            && fraction.is_finite()
        {
            // Cut like output lines, so a progress message stays within its limit
            // (`--max-progress-message-bytes`, 4 KiB by default: 1000 characters fit).
            return StdoutLine::Progress {
                fraction,
                message: message.trim().chars().take(MAX_LINE_CHARS).collect(),
            };
        }
    } else if let Some(rest) = line.strip_prefix("::checkpoint::") {
        let rest = rest.trim();
        return StdoutLine::Checkpoint(serde_json::from_str(rest).unwrap_or_else(|_| json!(rest)));
    } else if let Some(rest) = line.strip_prefix("::usage::") {
        return match serde_json::from_str::<Usage>(rest.trim()) {
            Ok(usage) => match budget::increment_problems(&usage).into_iter().next() {
                None => StdoutLine::Usage(usage),
                Some((dimension, why)) => {
                    StdoutLine::BadUsage(format!("{}: {why}", dimension.unwrap_or_default()))
                }
            },
            Err(err) => StdoutLine::BadUsage(format!("not a JSON object of numbers: {err}")),
        };
    }
    StdoutLine::Output(line.to_owned())
}

/// The last [`TAIL_LINES`] lines of a stream, each cut to [`MAX_LINE_CHARS`].
#[derive(Default)]
pub struct Tail(VecDeque<String>);

impl Tail {
    pub fn into_lines(self) -> Vec<String> {
        self.0.into()
    }

    pub fn push(&mut self, line: String) {
        if self.0.len() == TAIL_LINES {
            self.0.pop_front();
        }
        self.0
            .push_back(line.chars().take(MAX_LINE_CHARS).collect());
    }
}

/// Reads lines until EOF; `None` once the pipe is closed (or unreadable).
pub async fn next_line<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut Option<Lines<R>>,
) -> Option<String> {
    let reader = lines.as_mut()?;
    match reader.next_line().await {
        Ok(Some(line)) => Some(line),
        _ => {
            *lines = None;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdout_lines_follow_the_progress_and_checkpoint_convention() {
        assert_eq!(
            parse_stdout_line("::progress:: 0.25 fetching pages"),
            StdoutLine::Progress {
                fraction: 0.25,
                message: "fetching pages".into()
            }
        );
        assert_eq!(
            parse_stdout_line("::progress::1"),
            StdoutLine::Progress {
                fraction: 1.0,
                message: String::new()
            }
        );
        assert_eq!(
            parse_stdout_line("::checkpoint:: {\"rows\": 3}"),
            StdoutLine::Checkpoint(json!({"rows": 3}))
        );
        assert_eq!(
            parse_stdout_line("::checkpoint:: rows 3"),
            StdoutLine::Checkpoint(json!("rows 3"))
        );
        let long = format!("::progress:: 0.5 {}", "é".repeat(MAX_LINE_CHARS + 1));
        let StdoutLine::Progress { message, .. } = parse_stdout_line(&long) else {
            panic!("a progress line");
        };
        assert_eq!(message.chars().count(), MAX_LINE_CHARS);
        assert!(message.len() <= 4096, "within the default progress limit");
        assert_eq!(
            parse_stdout_line("::progress:: soon"),
            StdoutLine::Output("::progress:: soon".into())
        );
        assert_eq!(
            parse_stdout_line("hello"),
            StdoutLine::Output("hello".into())
        );
    }

    #[test]
    fn usage_lines_carry_valid_increments_only() {
        assert_eq!(
            parse_stdout_line("::usage:: {\"output_tokens\": 120, \"cost_usd\": 0.01}"),
            StdoutLine::Usage(Usage::from([
                ("cost_usd".to_owned(), 0.01),
                ("output_tokens".to_owned(), 120.0)
            ]))
        );
        for bad in [
            "::usage:: {\"tokens\": -1}",
            "::usage:: {\"Tokens\": 1}",
            "::usage:: {\"tokens\": \"1\"}",
            "::usage:: 12",
        ] {
            assert!(
                matches!(parse_stdout_line(bad), StdoutLine::BadUsage(_)),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_tail_keeps_the_last_lines_cut_to_length() {
        let mut tail = Tail::default();
        for i in 0..(TAIL_LINES + 5) {
            tail.push(format!("{i}"));
        }
        assert_eq!(tail.0.len(), TAIL_LINES);
        assert_eq!(tail.0.front().unwrap(), "5");
        tail.push("x".repeat(MAX_LINE_CHARS * 2));
        assert_eq!(tail.0.back().unwrap().len(), MAX_LINE_CHARS);
    }
}

//! `.dev.vars`: the secrets of a worker under `kiln dev`, in dotenv syntax, as `wrangler dev`
//! reads them.
//!
//! Cloudflare's documentation specifies dotenv syntax. This parser accepts `KEY=value` lines
//! with an optional `export ` prefix, `#` comments, values in single, double or backtick quotes
//! that may span lines, `\n` and `\r` escapes in double quotes, and unquoted values that end
//! at `#` and are trimmed. A later line wins over an earlier one with the same key. A line that
//! is not `KEY=value` is an error instead of being skipped, so a typo does not drop a secret
//! silently. Errors name the line but never repeat its text, which may be a secret.

use std::collections::BTreeMap;
use std::path::Path;

/// Name of the secrets file in the worker folder.
pub const DEV_VARS_FILE: &str = ".dev.vars";

/// A `.dev.vars` file that could not be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum DevVarsError {
    #[error("failed to read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Invalid {
        path: String,
        /// 1-based line number.
        line: usize,
        message: &'static str,
    },
}

/// Reads the `.dev.vars` file of a worker folder. Returns an empty map when there is none.
pub fn load_dev_vars(dir: &Path) -> Result<BTreeMap<String, String>, DevVarsError> {
    let path = dir.join(DEV_VARS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(source) => {
            return Err(DevVarsError::Read {
                path: path.display().to_string(),
                source,
            })
        }
    };
    parse_dev_vars(&text).map_err(|(line, message)| DevVarsError::Invalid {
        path: path.display().to_string(),
        line,
        message,
    })
}

/// Parses dotenv text into name → value. The error is the 1-based line and what is wrong.
pub fn parse_dev_vars(text: &str) -> Result<BTreeMap<String, String>, (usize, &'static str)> {
    let mut vars = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut index = 0;
    while index < lines.len() {
        let number = index + 1;
        let line = lines[index].trim();
        index += 1;
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map_or(line, str::trim_start);
        let Some((key, rest)) = line.split_once('=') else {
            return Err((number, "expected KEY=value"));
        };
        let key = key.trim();
        let valid_key = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !valid_key {
            return Err((number, "invalid key: use letters, digits, '_', '.' and '-'"));
        }
        let rest = rest.trim_start();
        let value = match rest.chars().next() {
            Some(quote @ ('"' | '\'' | '`')) => {
                // The value runs to the closing quote, on this line or a later one.
                let mut quoted = rest[1..].to_owned();
                let (inner, after) = loop {
                    if let Some(end) = closing_quote(&quoted, quote) {
                        let after = quoted[end + 1..].to_owned();
                        quoted.truncate(end);
                        break (quoted, after);
                    }
                    let Some(next) = lines.get(index) else {
                        return Err((number, "the quoted value has no closing quote"));
                    };
                    index += 1;
                    quoted.push('\n');
                    quoted.push_str(next);
                };
                let after = after.trim();
                if !after.is_empty() && !after.starts_with('#') {
                    return Err((number, "unexpected text after the closing quote"));
                }
                if quote == '"' {
                    unescape_double_quoted(&inner)
                } else {
                    inner
                }
            }
            _ => rest.split('#').next().unwrap_or("").trim().to_owned(),
        };
        vars.insert(key.to_owned(), value);
    }
    Ok(vars)
}

/// Byte index of the first `quote` in `text` that no backslash escapes.
fn closing_quote(text: &str, quote: char) -> Option<usize> {
    let mut escaped = false;
    for (index, c) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == quote {
            return Some(index);
        }
    }
    None
}

/// Expands `\n`, `\r` and `\"` in a double-quoted value. Other backslashes stay as they are.
fn unescape_double_quoted(text: &str) -> String {
    text.replace("\\n", "\n")
        .replace("\\r", "\r")
        .replace("\\\"", "\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_quoted_values_parse() {
        let text = "# secrets\nAPI_KEY=abc123\nexport TOKEN = \"two words\" # comment\n\
                    SINGLE='a # b'\nBACKTICK=`a \"b\"`\nEMPTY=\nTRAILING = spaced value   \n\
                    HASH=before#after\n";
        let vars = parse_dev_vars(text).expect("valid dotenv");
        assert_eq!(vars["API_KEY"], "abc123");
        assert_eq!(vars["TOKEN"], "two words");
        assert_eq!(vars["SINGLE"], "a # b");
        assert_eq!(vars["BACKTICK"], "a \"b\"");
        assert_eq!(vars["EMPTY"], "");
        assert_eq!(vars["TRAILING"], "spaced value");
        assert_eq!(vars["HASH"], "before");
    }

    #[test]
    fn double_quotes_expand_escapes() {
        let vars = parse_dev_vars("KEY=\"line1\\nline2 \\\"q\\\"\"\nRAW='a\\nb'\n").expect("valid");
        assert_eq!(vars["KEY"], "line1\nline2 \"q\"");
        assert_eq!(vars["RAW"], "a\\nb");
    }

    #[test]
    fn multiline_value_parses() {
        let text = "PEM=\"-----BEGIN-----\nabc\n-----END-----\"\nNEXT=1\n";
        let vars = parse_dev_vars(text).expect("valid");
        assert_eq!(vars["PEM"], "-----BEGIN-----\nabc\n-----END-----");
        assert_eq!(vars["NEXT"], "1");
    }

    #[test]
    fn later_line_wins() {
        let vars = parse_dev_vars("A=1\nA=2\n").expect("valid");
        assert_eq!(vars["A"], "2");
    }

    #[test]
    fn invalid_lines_name_line_only() {
        assert_eq!(
            parse_dev_vars("A=1\nsupersecret\n"),
            Err((2, "expected KEY=value"))
        );
        assert_eq!(
            parse_dev_vars("A=\"open\nB=2\n"),
            Err((1, "the quoted value has no closing quote"))
        );
        assert_eq!(
            parse_dev_vars("A='x' y\n"),
            Err((1, "unexpected text after the closing quote"))
        );
        let error = parse_dev_vars("BAD KEY=hunter2\n").unwrap_err();
        assert_eq!(error.0, 1);
        assert!(!error.1.contains("hunter2"), "{}", error.1);
    }

    #[test]
    fn missing_file_is_empty() {
        let dir = tempfile::tempdir().expect("temp dir");
        let vars = load_dev_vars(dir.path()).expect("no file is fine");
        assert!(vars.is_empty());
    }
}

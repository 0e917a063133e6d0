//! Reading a config file: the file itself (missing, a directory, too large, not UTF-8, empty),
//! then its text through the three steps (YAML into a `Node` tree, the tree into `Config`,
//! the value rules), every failure becoming one `ConfigError` at the key's line.

use std::path::{Path, PathBuf};

use super::node::{self, Node};
use super::rules::Violation;
use super::schema::Config;
use super::tree::{self, Problem, TreeError};

/// A configuration error: `file:line: key: message`, exit code 2.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// The file the error is in.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The offending key (dotted for nested keys), when known.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": ")?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Largest config file read: a config is a few KiB; this bounds memory on a wrong path.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// The file's text, or why it cannot be a config file (no line, except for bad UTF-8).
pub fn read_text(path: &Path) -> Result<String, ConfigError> {
    let err = |message: String| ConfigError {
        file: path.to_path_buf(),
        line: None,
        key: None,
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| {
        err(match e.kind() {
            std::io::ErrorKind::NotFound => "no such file".to_string(),
            _ => format!("cannot read: {}", io_reason(&e)),
        })
    })?;
    if meta.is_dir() {
        return Err(err(
            "is a directory, expected a config file (e.g. config.yaml)".into(),
        ));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(err(format!(
            "is {} bytes, larger than any config file ({} bytes at most)",
            meta.len(),
            MAX_FILE_BYTES
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read: {}", io_reason(&e))))?;
    match String::from_utf8(bytes) {
        Ok(text) => Ok(text),
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            let line = e.as_bytes()[..at].iter().filter(|b| **b == b'\n').count() + 1;
            Err(ConfigError {
                line: Some(line),
                ..err("is not UTF-8 text".into())
            })
        }
    }
}

/// The OS reason without Rust's ` (os error N)` suffix.
fn io_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_lowercase(),
        None => s,
    }
}

/// A key as printed in an error: quoted and escaped if it holds control characters, so the
/// error stays one line.
fn printable_key(key: &str) -> String {
    if key.chars().any(char::is_control) {
        format!("{key:?}")
    } else {
        key.to_string()
    }
}

/// Whether the text holds nothing but blank lines, comments and document markers.
fn is_blank_yaml(text: &str) -> bool {
    text.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#') || t == "---" || t == "..."
    })
}

/// Parses and validates config text; `file` names it in errors.
pub fn parse_and_check(file: &Path, text: &str) -> Result<Config, ConfigError> {
    // A byte-order mark confuses the YAML reader's document count; it carries no meaning.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let error = |line: Option<usize>, key: Option<String>, message: String| ConfigError {
        file: file.to_path_buf(),
        line,
        key,
        message,
    };
    if is_blank_yaml(text) {
        return Err(error(
            None,
            None,
            "the file is empty: expected keys like `worker: 3` (see the config.yaml shipped with goloadbalancer)".into(),
        ));
    }
    let root = node::parse(text)
        .map_err(|e| error(e.line, None, format!("invalid YAML: {}", e.message)))?;
    if root == Node::Null {
        return Err(error(
            None,
            None,
            "the file is empty: expected keys like `worker: 3`".into(),
        ));
    }
    let mut config = tree::config_from_tree(&root).map_err(|e| {
        let (line, key, message) = locate_tree_error(text, e);
        error(line, key, message)
    })?;
    config.validate().map_err(|v| {
        let (line, key, message) = locate_violation(text, &v);
        error(line, Some(key), message)
    })?;
    // Scale to zero: a request arriving at zero workers waits for the one it starts.
    if config.autoscale.enabled && config.autoscale.min == 0 {
        config.proxy.hold_when_no_worker = true;
    }
    Ok(config)
}

/// Line, printed key and message of a problem found while reading the tree.
fn locate_tree_error(text: &str, e: TreeError) -> (Option<usize>, Option<String>, String) {
    let path: Vec<&str> = e.path.iter().map(String::as_str).collect();
    let line = if e.locate {
        node::key_line(text, &path, e.occurrence)
    } else {
        None
    };
    let message = match e.problem {
        Problem::Invalid(m) => m,
        Problem::Duplicate => match node::key_line(text, &path, 1) {
            Some(first) => format!("duplicate key (first set on line {first})"),
            None => "duplicate key".to_string(),
        },
    };
    let key = (!path.is_empty()).then(|| printable_key(&path.join(".")));
    (line, key, message)
}

/// Line, key and message of a broken value rule: reported at the first involved key written
/// in the file (a default has no line), else without a line.
fn locate_violation(text: &str, v: &Violation) -> (Option<usize>, String, String) {
    let candidates = std::iter::once(&v.key).chain(v.related.iter());
    for k in candidates {
        let path: Vec<&str> = k.split('.').collect();
        if let Some(line) = node::key_line(text, &path, 1) {
            // Reported at another key than the rule's own: name the rule's key.
            let message = if *k != v.key && v.message.starts_with("must ") {
                format!("{} {}", v.key, v.message)
            } else {
                v.message.clone()
            };
            return (Some(line), k.clone(), message);
        }
    }
    (None, v.key.clone(), v.message.clone())
}

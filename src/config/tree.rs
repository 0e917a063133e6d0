//! From the parsed `Node` tree (or one `goloadbalancer proxy --KEY VALUE` flag) into the typed
//! structs, through the key tables: each key must be a plain name, appear once, be known to
//! its section and have a value of the right type. Value ranges come after, in `rules.rs`.

use super::node::{self, Node};
use super::schema::{Autoscale, Config, ProxySettings, Swarm};
use super::table::Section;

/// What is wrong at a key found while reading the tree.
pub enum Problem {
    /// A bad key or value, with the message to print.
    Invalid(String),
    /// The key appeared before in the same mapping; the message names the first line.
    Duplicate,
}

/// A problem found while reading the tree, before its line is looked up.
pub struct TreeError {
    /// Key path (`["autoscale", "min"]`); empty for the document itself.
    pub path: Vec<String>,
    /// Which appearance of that key (duplicates), 1-based.
    pub occurrence: usize,
    /// What is wrong.
    pub problem: Problem,
    /// Whether `path` can be looked up for a line.
    pub locate: bool,
}

impl TreeError {
    fn at(path: &[&str], occurrence: usize, message: String) -> TreeError {
        TreeError {
            path: path.iter().map(|s| s.to_string()).collect(),
            occurrence,
            problem: Problem::Invalid(message),
            locate: true,
        }
    }
}

/// Counts appearances of keys within one mapping.
#[derive(Default)]
struct Seen(Vec<(String, usize)>);

impl Seen {
    fn add(&mut self, key: &str) -> usize {
        if let Some(e) = self.0.iter_mut().find(|(k, _)| k == key) {
            e.1 += 1;
            e.1
        } else {
            self.0.push((key.to_string(), 1));
            1
        }
    }
}

fn kind_of(v: &Node) -> &'static str {
    match v {
        Node::Null => "nothing",
        Node::Bool(_) => "a boolean",
        Node::Int(_) | Node::Float(_) => "a number",
        Node::Str(_) => "a string",
        Node::Seq => "a list",
        Node::Map(_) => "a mapping",
        Node::Tagged(_) => "a tagged value",
    }
}

/// The names of the blocks: the keys holding a section of their own.
const AUTOSCALE: &str = "autoscale";
const SWARM: &str = "swarm";

/// Every name allowed at the top level (proxy settings sit there, flattened).
fn top_level_names() -> Vec<&'static str> {
    Config::names()
        .chain(ProxySettings::names())
        .chain([AUTOSCALE, SWARM])
        .collect()
}

/// Builds a `Config` from the parsed document: known keys, right types, no duplicates.
pub fn config_from_tree(root: &Node) -> Result<Config, TreeError> {
    let Node::Map(entries) = root else {
        return Err(TreeError::at(
            &[],
            1,
            format!(
                "the top level must be a mapping of keys like `worker: 3`, got {}",
                kind_of(root)
            ),
        ));
    };
    let mut c = Config::default();
    let mut seen = Seen::default();
    for (k, v) in entries {
        let key = entry_name(k, &mut seen, None)?;
        if key == AUTOSCALE {
            read_block(AUTOSCALE, &mut c.autoscale, v)?;
            continue;
        }
        if key == SWARM {
            read_block(SWARM, &mut c.swarm, v)?;
            continue;
        }
        let set = if let Some(spec) = Config::key(&key) {
            (spec.set)(&mut c, v)
        } else if let Some(spec) = ProxySettings::key(&key) {
            (spec.set)(&mut c.proxy, v)
        } else {
            let mut m = unknown_key_message(&key, &top_level_names());
            if m == "unknown key" && Autoscale::key(&key).is_some() {
                m = format!("unknown key (did you mean `{AUTOSCALE}: {{{key}: ...}}`?)");
            } else if m == "unknown key" && Swarm::key(&key).is_some() {
                m = format!("unknown key (did you mean `{SWARM}: {{{key}: ...}}`?)");
            }
            Err(m)
        };
        set.map_err(|m| TreeError::at(&[&key], 1, m))?;
    }
    Ok(c)
}

/// Reads the `block:` section (`autoscale:`, `swarm:`) into `a`.
fn read_block<S: Section>(block: &str, a: &mut S, v: &Node) -> Result<(), TreeError> {
    let entries = match v {
        // `autoscale:` with nothing under it: all defaults.
        Node::Null => return Ok(()),
        Node::Map(e) => e,
        other => {
            let names: Vec<&str> = S::names().collect();
            return Err(TreeError::at(
                &[block],
                1,
                format!(
                    "must be a mapping of {block} keys ({}), got {}",
                    names.join(", "),
                    kind_of(other)
                ),
            ));
        }
    };
    let mut seen = Seen::default();
    for (k, v) in entries {
        let key = entry_name(k, &mut seen, Some(block))?;
        let set = match S::key(&key) {
            Some(spec) => (spec.set)(a, v),
            None => {
                let names: Vec<&str> = S::names().collect();
                let mut m = unknown_key_message(&key, &names);
                if m == "unknown key" && top_level_names().contains(&key.as_str()) {
                    m = format!(
                        "unknown key (`{key}` belongs at the top level, not under {block}:)"
                    );
                }
                Err(m)
            }
        };
        set.map_err(|m| TreeError::at(&[block, &key], 1, m))?;
    }
    Ok(())
}

/// Checks one map key and returns its name: a plain name, not seen before in this mapping.
/// `block` is the enclosing block's key (None at the top level).
fn entry_name(k: &Node, seen: &mut Seen, block: Option<&str>) -> Result<String, TreeError> {
    let key = k.key_text();
    let n = seen.add(&key);
    let example = if block.is_some() { "min" } else { "worker" };
    let message = || format!("keys must be names like `{example}`, got {}", kind_of(k));
    if matches!(k, Node::Seq | Node::Map(_)) {
        // A complex key (`? [a]`) has no name to report it by, nor a line to find it at:
        // reported at the enclosing block, or without a line at the top level.
        return Err(match block {
            Some(b) => TreeError::at(&[b], 1, message()),
            None => TreeError {
                locate: false,
                ..TreeError::at(&[], 1, message())
            },
        });
    }
    let path: Vec<&str> = block.into_iter().chain([key.as_str()]).collect();
    if !matches!(k, Node::Str(_)) {
        return Err(TreeError::at(&path, n, message()));
    }
    if n > 1 {
        return Err(TreeError {
            problem: Problem::Duplicate,
            ..TreeError::at(&path, n, String::new())
        });
    }
    Ok(key)
}

/// `unknown key`, with the closest known key when one is close.
fn unknown_key_message(key: &str, known: &[&str]) -> String {
    let typed = key.to_ascii_lowercase().replace('_', "-");
    let best = known
        .iter()
        .map(|k| (edit_distance(&typed, k), *k))
        .filter(|(d, k)| {
            *d <= if typed.len() >= 5 { 3 } else { 2 }.max(typed.len() / 3)
                || (typed.len() >= 3 && (k.starts_with(&typed) || typed.starts_with(k)))
        })
        .min();
    match best {
        Some((_, k)) => format!("unknown key (did you mean `{k}`?)"),
        None => "unknown key".to_string(),
    }
}

/// Levenshtein distance (keys are short: the quadratic table is fine).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

impl ProxySettings {
    /// Applies one `goloadbalancer proxy --<key> <value>` flag: same key names, types and
    /// ranges as config.yaml. Rules between keys (max-request-line <= max-header-bytes) are
    /// left to `validate()`, to be called once all flags are applied. On error `self` is
    /// unchanged and the message reads `key: what is wrong`.
    pub fn apply_override(&mut self, key: &str, value: &str) -> Result<(), String> {
        let Some(spec) = ProxySettings::key(key) else {
            let names: Vec<&str> = ProxySettings::names().collect();
            return Err(format!("{key}: {}", unknown_key_message(key, &names)));
        };
        // The value is read as a YAML scalar so `5000`, `true` and `http` type like the file;
        // anything YAML rejects is taken as a plain string.
        let node = node::parse(value).unwrap_or_else(|_| Node::Str(value.to_string()));
        let mut next = self.clone();
        (spec.set)(&mut next, &node)
            .and_then(|()| (spec.check)(&next))
            .map_err(|m| format!("{key}: {m}"))?;
        *self = next;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::field_reassign_with_default)]
mod tests {
    use super::*;
    use crate::config::Mode;

    #[test]
    fn every_key_is_readable() {
        // Feeding each key a value of the wrong kind must give a type error.
        let mut c = Config::default();
        for k in Config::KEYS {
            assert!((k.set)(&mut c, &Node::Seq).is_err(), "{}", k.name);
        }
        for k in ProxySettings::KEYS {
            assert!((k.set)(&mut c.proxy, &Node::Seq).is_err(), "{}", k.name);
        }
        for k in Autoscale::KEYS {
            assert!((k.set)(&mut c.autoscale, &Node::Seq).is_err(), "{}", k.name);
        }
        for k in Swarm::KEYS {
            assert!((k.set)(&mut c.swarm, &Node::Seq).is_err(), "{}", k.name);
        }
        assert_eq!(c, Config::default(), "a failed read changes nothing");
    }

    #[test]
    fn suggestions() {
        let top = top_level_names();
        assert_eq!(
            unknown_key_message("avg_delay", &top),
            "unknown key (did you mean `avg-delay`?)"
        );
        assert_eq!(unknown_key_message("zzz", &top), "unknown key");
        assert_eq!(
            unknown_key_message("autoscal", &top),
            "unknown key (did you mean `autoscale`?)"
        );
    }

    #[test]
    fn apply_override_validates_like_yaml() {
        let mut p = ProxySettings::default();
        p.apply_override("response-timeout-ms", "5000").unwrap();
        assert_eq!(p.response_timeout_ms, 5000);
        p.apply_override("mode", "tcp").unwrap();
        assert_eq!(p.mode, Mode::Tcp);
        p.apply_override("health-path", "/ready").unwrap();
        assert_eq!(p.health_path, "/ready");
        assert_eq!(
            p.apply_override("response-timeout-ms", "0"),
            Err("response-timeout-ms: must be between 1 and 604800000, got 0".into())
        );
        assert_eq!(
            p.apply_override("retries", "many"),
            Err("retries: must be a whole number, got \"many\"".into())
        );
        assert_eq!(
            p.apply_override("retry", "1"),
            Err("retry: unknown key (did you mean `retries`?)".into())
        );
        assert_eq!(
            p.apply_override("worker", "1"),
            Err("worker: unknown key".into())
        );
        assert_eq!(
            p.response_timeout_ms, 5000,
            "a failed override changes nothing"
        );
        // Rules between keys wait for validate(): raise both limits in either order.
        p.apply_override("max-request-line", "40000").unwrap();
        assert!(p.validate().is_err());
        p.apply_override("max-header-bytes", "65536").unwrap();
        assert_eq!(p.validate(), Ok(()));
    }

    #[test]
    fn every_proxy_key_is_a_flag() {
        // Each key takes its own default, written as check-config prints it, as a flag.
        let d = serde_yaml_ng::to_value(ProxySettings::default()).unwrap();
        for k in ProxySettings::KEYS {
            let text = serde_yaml_ng::to_string(&d[k.name]).unwrap();
            let mut p = ProxySettings::default();
            p.apply_override(k.name, text.trim_end()).unwrap();
            assert_eq!(p, ProxySettings::default(), "{}", k.name);
        }
    }
}

//! The YAML side of config loading: a parsed tree that keeps every map entry in file order
//! (duplicates included, so they can be reported), typed readers with operator-facing
//! messages, and the line finder that maps a key path back to its line.
//!
//! Lines come from the real YAML parser, not from scanning text: `key_line` walks the
//! document with a visitor that fails on purpose when it reaches the wanted key, and
//! serde_yaml_ng stamps that failure with the key's position. So quoting, comments, flow
//! mappings (`autoscale: {min: 2}`) and nesting are all handled the way the parser sees them.

use std::cell::Cell;
use std::fmt;
use std::net::IpAddr;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// One YAML node as read from the file. Maps keep all entries in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq,
    Map(Vec<(Node, Node)>),
    /// A value with a YAML tag (`!name value`): never what a key wants.
    Tagged(String),
}

/// A YAML syntax error: the parser's message and 1-based line when it has one.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    pub line: Option<usize>,
    pub message: String,
}

/// Parses one YAML document into a `Node`.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    serde_yaml_ng::from_str::<Node>(text).map_err(|e| SyntaxError {
        line: e.location().map(|l| l.line()),
        message: strip_marks(&e.to_string()),
    })
}

/// Rewrites libyaml's positions: the first ` at line N column M` (the problem, whose line is
/// reported in front of the message already) is dropped, a later one (the context, e.g. where
/// an unclosed `[` began) becomes ` on line N`; ` at position N` is dropped.
fn strip_marks(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    let mut first = true;
    while let Some(i) = rest.find(" at ") {
        out.push_str(&rest[..i]);
        let tail = &rest[i + 4..];
        if let Some((line, after)) = skip_mark(tail) {
            if let Some(line) = line.filter(|_| !first) {
                out.push_str(&format!(" on line {line}"));
            }
            first = false;
            rest = after;
        } else {
            out.push_str(" at ");
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

/// If `s` starts with `line N column M` or `position N`, returns the line (if any) and what
/// follows.
fn skip_mark(s: &str) -> Option<(Option<&str>, &str)> {
    fn digits(s: &str) -> Option<(&str, &str)> {
        let n = s.bytes().take_while(u8::is_ascii_digit).count();
        (n > 0).then(|| s.split_at(n))
    }
    if let Some(r) = s.strip_prefix("line ") {
        let (line, r) = digits(r)?;
        let r = r.strip_prefix(" column ")?;
        Some((Some(line), digits(r)?.1))
    } else if let Some(r) = s.strip_prefix("position ") {
        Some((None, digits(r)?.1))
    } else {
        None
    }
}

impl Node {
    /// How the value reads in an error message: `"three"`, `2.5`, `a list`.
    pub fn describe(&self) -> String {
        match self {
            Node::Null => "nothing".into(),
            Node::Bool(b) => b.to_string(),
            Node::Int(i) => i.to_string(),
            Node::Float(f) => format!("{f:?}"),
            Node::Str(s) => format!("{s:?}"),
            Node::Seq => "a list".into(),
            Node::Map(_) => "a mapping".into(),
            Node::Tagged(t) => format!("a value tagged !{t}"),
        }
    }

    /// The text a key node stands for (keys are compared as text).
    pub fn key_text(&self) -> String {
        match self {
            Node::Str(s) => s.clone(),
            Node::Null => "~".into(),
            other => other.describe(),
        }
    }

    fn no_value(&self) -> Option<String> {
        matches!(self, Node::Null)
            .then(|| "has no value (remove the key to get the default)".to_string())
    }

    /// A non-negative whole number.
    pub fn uint(&self) -> Result<u64, String> {
        if let Some(m) = self.no_value() {
            return Err(m);
        }
        match self {
            Node::Int(i) if *i < 0 => Err(format!("must not be negative, got {i}")),
            Node::Int(i) => {
                u64::try_from(*i).map_err(|_| format!("must be at most {}, got {i}", u64::MAX))
            }
            other => Err(format!("must be a whole number, got {}", other.describe())),
        }
    }

    /// A whole number that fits `T` (`u16`, `u32`, `usize`).
    pub fn uint_as<T: TryFrom<u64> + fmt::Display + Unsigned>(&self) -> Result<T, String> {
        let n = self.uint()?;
        T::try_from(n).map_err(|_| format!("must be at most {}, got {n}", T::MAX_VALUE))
    }

    /// Any number (whole or fractional).
    pub fn float(&self) -> Result<f64, String> {
        if let Some(m) = self.no_value() {
            return Err(m);
        }
        match self {
            Node::Int(i) => Ok(*i as f64),
            Node::Float(f) => Ok(*f),
            other => Err(format!("must be a number, got {}", other.describe())),
        }
    }

    /// `true` or `false`.
    pub fn boolean(&self) -> Result<bool, String> {
        if let Some(m) = self.no_value() {
            return Err(m);
        }
        match self {
            Node::Bool(b) => Ok(*b),
            other => Err(format!("must be true or false, got {}", other.describe())),
        }
    }

    /// A string (quote it in YAML if it looks like a number).
    pub fn string(&self) -> Result<String, String> {
        if let Some(m) = self.no_value() {
            return Err(m);
        }
        match self {
            Node::Str(s) => Ok(s.clone()),
            other => Err(format!(
                "must be a string, got {} (quote it: \"{}\")",
                other.describe(),
                other.key_text()
            )),
        }
    }

    /// An IPv4 or IPv6 address.
    pub fn ip(&self) -> Result<IpAddr, String> {
        if let Some(m) = self.no_value() {
            return Err(m);
        }
        match self {
            Node::Str(s) => s
                .parse()
                .map_err(|_| format!("must be an IP address (like 127.0.0.1 or ::1), got {s:?}")),
            other => Err(format!(
                "must be an IP address (like 127.0.0.1 or ::1), got {}",
                other.describe()
            )),
        }
    }

    /// One of the named values.
    pub fn one_of<T: Copy>(&self, choices: &[(&str, T)]) -> Result<T, String> {
        if let Some(m) = self.no_value() {
            return Err(m);
        }
        let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
        if let Node::Str(s) = self
            && let Some((_, v)) = choices.iter().find(|(n, _)| n == s)
        {
            return Ok(*v);
        }
        Err(format!(
            "must be one of {}, got {}",
            names.join(", "),
            self.describe()
        ))
    }
}

/// An unsigned integer type a key can hold: its largest value (for "must be at most"
/// messages) and its value widened to `u64` (for range rules).
pub trait Unsigned: Copy {
    const MAX_VALUE: u64;
    fn to_u64(self) -> u64;
}

macro_rules! unsigned {
    ($($t:ty),*) => {$(
        impl Unsigned for $t {
            const MAX_VALUE: u64 = <$t>::MAX as u64;
            fn to_u64(self) -> u64 {
                self as u64
            }
        }
    )*};
}
unsigned!(u16, u32, u64, usize);

impl<'de> de::Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Int(v.into()))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Node, E> {
        Ok(Node::Int(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Node, E> {
        i128::try_from(v)
            .map(Node::Int)
            .map_err(|_| E::custom(format!("number too large: {v}")))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Node::Seq)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(k) = map.next_key::<Node>()? {
            let v = map.next_value::<Node>()?;
            entries.push((k, v));
        }
        Ok(Node::Map(entries))
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<Node, A::Error> {
        use serde::de::VariantAccess;
        let (tag, value) = data.variant::<String>()?;
        value.newtype_variant::<Node>()?;
        Ok(Node::Tagged(tag))
    }
}

/// Marker message of the deliberate failure `key_line` provokes.
const FOUND: &str = "\u{1}glb-config-key-found\u{1}";

/// The 1-based line of the `occurrence`-th (1-based) appearance of the key at `path`
/// (`["autoscale", "min"]`), or of the document's root node when `path` is empty.
/// None when the key is not in the text (a default) or the text does not parse.
pub fn key_line(text: &str, path: &[&str], occurrence: usize) -> Option<usize> {
    let remaining = Cell::new(occurrence.max(1));
    let de = serde_yaml_ng::Deserializer::from_str(text);
    match (Find {
        path,
        remaining: &remaining,
    })
    .deserialize(de)
    {
        Ok(()) => None,
        Err(e) if e.to_string().contains(FOUND) => e.location().map(|l| l.line()),
        Err(_) => None,
    }
}

/// Walks one node looking for `path`; fails with `FOUND` at the wanted key.
struct Find<'a> {
    path: &'a [&'a str],
    remaining: &'a Cell<usize>,
}

impl<'de> DeserializeSeed<'de> for Find<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if self.path.is_empty() {
            // The root itself: fail at whatever node comes first, so the error carries its mark.
            return d.deserialize_any(FailAny);
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Find<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_i128<E>(self, _: i128) -> Result<(), E> {
        Ok(())
    }
    fn visit_u128<E>(self, _: u128) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let (first, rest) = (self.path[0], &self.path[1..]);
        while let Some(matched) = map.next_key_seed(FindKey {
            name: first,
            leaf: rest.is_empty(),
            remaining: self.remaining,
        })? {
            if matched && !rest.is_empty() {
                map.next_value_seed(Find {
                    path: rest,
                    remaining: self.remaining,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// Fails on any value: every default `visit_*` reports "invalid type, expected <FOUND>".
struct FailAny;

impl Visitor<'_> for FailAny {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(FOUND)
    }
}

/// Reads one map key; fails with `FOUND` when it is the wanted leaf occurrence, else tells
/// whether it matched the name.
struct FindKey<'a> {
    name: &'a str,
    leaf: bool,
    remaining: &'a Cell<usize>,
}

impl FindKey<'_> {
    fn check<E: de::Error>(self, text: &str) -> Result<bool, E> {
        if text != self.name {
            return Ok(false);
        }
        if self.leaf {
            let left = self.remaining.get();
            if left <= 1 {
                return Err(E::custom(FOUND));
            }
            self.remaining.set(left - 1);
        }
        Ok(true)
    }
}

impl<'de> DeserializeSeed<'de> for FindKey<'_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FindKey<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map key")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
        self.check(&Node::Bool(v).key_text())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
        self.check(&v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
        self.check(&v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<bool, E> {
        self.check(&Node::Float(v).key_text())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        self.check(v)
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        self.check("~")
    }
    fn visit_none<E: de::Error>(self) -> Result<bool, E> {
        self.check("~")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(false)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# a comment mentioning min: 3
worker: 3
pool: 2   # min: here too

autoscale:
  # max: 4 in a comment
  enabled: true
  min: 2
  max: 8
failure: 12
\"quoted\": 1
flow: {min: 5, max: 6}
";

    #[test]
    fn finds_top_level_keys() {
        assert_eq!(key_line(TEXT, &["worker"], 1), Some(2));
        assert_eq!(key_line(TEXT, &["pool"], 1), Some(3));
        assert_eq!(key_line(TEXT, &["failure"], 1), Some(10));
        assert_eq!(key_line(TEXT, &["quoted"], 1), Some(11));
    }

    #[test]
    fn finds_nested_keys_not_comments_or_other_levels() {
        assert_eq!(key_line(TEXT, &["autoscale"], 1), Some(5));
        assert_eq!(key_line(TEXT, &["autoscale", "min"], 1), Some(8));
        assert_eq!(key_line(TEXT, &["autoscale", "max"], 1), Some(9));
        assert_eq!(key_line(TEXT, &["flow", "max"], 1), Some(12));
        // `min` exists only nested: not a top-level key.
        assert_eq!(key_line(TEXT, &["min"], 1), None);
    }

    #[test]
    fn absent_key_has_no_line() {
        assert_eq!(key_line(TEXT, &["admin-port"], 1), None);
        assert_eq!(key_line(TEXT, &["autoscale", "step"], 1), None);
        assert_eq!(key_line("pool: [\nworker: 1\n", &["worker"], 1), None);
    }

    #[test]
    fn counts_occurrences_of_duplicates() {
        let t = "worker: 1\npool: 2\nworker: 3\nautoscale:\n  min: 1\n  min: 2\n";
        assert_eq!(key_line(t, &["worker"], 1), Some(1));
        assert_eq!(key_line(t, &["worker"], 2), Some(3));
        assert_eq!(key_line(t, &["worker"], 3), None);
        assert_eq!(key_line(t, &["autoscale", "min"], 2), Some(6));
    }

    #[test]
    fn root_line_skips_leading_comments() {
        assert_eq!(key_line("# hi\n\n- a\n- b\n", &[], 1), Some(3));
    }

    #[test]
    fn parse_keeps_duplicates_and_types() {
        let n = parse("a: 1\na: -2\nb: 2.5\nc: x\nd:\ne: [1]\nf: {g: true}\n").unwrap();
        let Node::Map(entries) = n else {
            panic!("not a map")
        };
        let got: Vec<(String, Node)> = entries
            .into_iter()
            .map(|(k, v)| (k.key_text(), v))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a".into(), Node::Int(1)),
                ("a".into(), Node::Int(-2)),
                ("b".into(), Node::Float(2.5)),
                ("c".into(), Node::Str("x".into())),
                ("d".into(), Node::Null),
                ("e".into(), Node::Seq),
                (
                    "f".into(),
                    Node::Map(vec![(Node::Str("g".into()), Node::Bool(true))])
                ),
            ]
        );
    }

    #[test]
    fn syntax_errors_carry_line_without_marks_in_text() {
        let e = parse("worker: 3\npool: [2\nfailure: 1\n").unwrap_err();
        assert!(e.line.is_some());
        assert!(!e.message.contains(" at line "), "{}", e.message);
    }

    #[test]
    fn strip_marks_keeps_other_text() {
        assert_eq!(
            strip_marks(
                "did not find expected key at line 3 column 1, while parsing a block mapping at line 1 column 1"
            ),
            "did not find expected key, while parsing a block mapping on line 1"
        );
        assert_eq!(strip_marks("look at this"), "look at this");
    }

    #[test]
    fn typed_readers_explain_themselves() {
        assert_eq!(
            Node::Str("three".into()).uint(),
            Err("must be a whole number, got \"three\"".into())
        );
        assert_eq!(
            Node::Int(-1).uint(),
            Err("must not be negative, got -1".into())
        );
        assert_eq!(
            Node::Int(70000).uint_as::<u16>(),
            Err("must be at most 65535, got 70000".into())
        );
        assert_eq!(Node::Int(12).float(), Ok(12.0));
        assert_eq!(
            Node::Str("yes".into()).boolean(),
            Err("must be true or false, got \"yes\"".into())
        );
        assert_eq!(
            Node::Str("localhost".into()).ip(),
            Err("must be an IP address (like 127.0.0.1 or ::1), got \"localhost\"".into())
        );
        assert_eq!(
            Node::Str("udp".into()).one_of(&[("http", 1), ("tcp", 2)]),
            Err("must be one of http, tcp, got \"udp\"".into())
        );
        assert_eq!(
            Node::Null.uint(),
            Err("has no value (remove the key to get the default)".into())
        );
    }
}

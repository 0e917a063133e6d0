//! The machinery behind the key tables in `schema.rs`: the `section!` macro that turns one
//! table into a struct, its `Default` and its list of `Key`s, plus the generic readers and
//! range rules the tables name.
//!
//! A key is written once, as one table row; everything that needs to know the keys (the
//! reader of config.yaml, `goloadbalancer proxy --KEY VALUE`, the single-key range checks,
//! check-config's output through serde) walks the generated `Section::KEYS`.

use super::node::{Node, Unsigned};

/// One key of a section: its name in config.yaml, how a YAML value sets it and the range
/// rule it must meet alone. (Its doc line is on the struct field; `section!` requires one.)
pub struct Key<S> {
    /// The name in config.yaml (kebab-case), also the serde name of the field.
    pub name: &'static str,
    /// Reads the YAML value into the field; `Err` is the type error (`must be a whole number, got "x"`).
    pub set: fn(&mut S, &Node) -> Result<(), String>,
    /// The key's own range rule; `Err` is the message (`must be between 1 and 1024, got 0`).
    pub check: fn(&S) -> Result<(), String>,
}

/// A struct declared by `section!`: its keys in file (and check-config) order.
pub trait Section: Sized + 'static {
    /// Every key of the section, in declaration order.
    const KEYS: &'static [Key<Self>];

    /// The key called `name`; None when the section has no such key.
    fn key(name: &str) -> Option<&'static Key<Self>> {
        Self::KEYS.iter().find(|k| k.name == name)
    }

    /// The key names, in declaration order.
    fn names() -> impl Iterator<Item = &'static str> {
        Self::KEYS.iter().map(|k| k.name)
    }
}

/// Declares one section of config.yaml from its key table. Each row reads
///
/// ```text
/// /// Doc line (becomes the field's doc; the key and default are appended).
/// "key-name" => field: Type = default, read READER, rule RULE;
/// ```
///
/// READER is a `Fn(&Node) -> Result<Type, String>` (`Node::uint`, `port`, a closure) and RULE a
/// `Fn(&Type) -> Result<(), String>` (`between::<1, 1024>`, `timeout`, `any_value`, or a named
/// check). Fields that are not keys of this section (a flattened or nested section) follow
/// in a `nested { .. }` block and default to their own `Default`.
macro_rules! section {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[doc = $doc:literal])+
                $key:literal => $field:ident: $ty:ty = $default:expr,
                    read $read:expr, rule $rule:expr;
            )*
        }
        $(
            nested {
                $(
                    $(#[$nmeta:meta])*
                    $nfield:ident: $nty:ty,
                )*
            }
        )?
    ) => {
        $(#[$meta])*
        pub struct $name {
            $(
                $(#[doc = $doc])+
                #[doc = ""]
                #[doc = concat!("Key `", $key, "`, default `", stringify!($default), "`.")]
                #[serde(rename = $key)]
                pub $field: $ty,
            )*
            $($(
                $(#[$nmeta])*
                pub $nfield: $nty,
            )*)?
        }

        impl Default for $name {
            fn default() -> $name {
                $name {
                    $($field: $default,)*
                    $($($nfield: Default::default(),)*)?
                }
            }
        }

        impl $crate::config::table::Section for $name {
            const KEYS: &'static [$crate::config::table::Key<$name>] = &[
                $(
                    $crate::config::table::Key {
                        name: $key,
                        set: |s, v| {
                            s.$field = $crate::config::table::read_with($read, v)?;
                            Ok(())
                        },
                        check: |s| $crate::config::table::check_with($rule, &s.$field),
                    },
                )*
            ];
        }
    };
}
pub(crate) use section;

/// Applies a table's reader (gives a closure in the table its argument type).
pub fn read_with<T>(read: impl Fn(&Node) -> Result<T, String>, v: &Node) -> Result<T, String> {
    read(v)
}

/// Applies a table's range rule (gives a closure in the table its argument type).
pub fn check_with<T>(rule: impl Fn(&T) -> Result<(), String>, v: &T) -> Result<(), String> {
    rule(v)
}

/// Reader of a port number: 1-65535.
pub fn port(v: &Node) -> Result<u16, String> {
    let n = v.uint()?;
    match u16::try_from(n) {
        Ok(p) if p >= 1 => Ok(p),
        _ => Err(format!("must be between 1 and 65535, got {n}")),
    }
}

/// A rule's verdict: `Ok` when `ok`, else the message (built only then).
pub fn require(ok: bool, message: impl FnOnce() -> String) -> Result<(), String> {
    if ok { Ok(()) } else { Err(message()) }
}

/// Rule: any value the reader accepted is fine.
pub fn any_value<T>(_: &T) -> Result<(), String> {
    Ok(())
}

/// Rule: a whole number from `LO` to `HI` inclusive.
pub fn between<const LO: u64, const HI: u64, T: Unsigned>(v: &T) -> Result<(), String> {
    let v = v.to_u64();
    require((LO..=HI).contains(&v), || {
        format!("must be between {LO} and {HI}, got {v}")
    })
}

/// Longest timeout accepted anywhere (one week): keeps `Instant + Duration` far from overflow.
pub const MAX_TIMEOUT_MS: u64 = 7 * 24 * 3600 * 1000;

/// Rule of every `*-timeout-ms` and period: 1 ms to one week.
pub fn timeout(v: &u64) -> Result<(), String> {
    between::<1, MAX_TIMEOUT_MS, u64>(v)
}

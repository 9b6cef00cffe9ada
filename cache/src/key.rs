//! Cache keys: what identifies a result before it exists.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The name of the key scheme. It is hashed first, so a change of scheme can never collide with
/// keys made by an older one.
pub const KEY_SCHEME: &str = "covflow-key-v1";

/// A 256-bit blake3 digest that names one artifact in the store.
///
/// ```
/// use covflow_cache::{CacheKey, KeyBuilder};
/// let key = KeyBuilder::new().field("kind", b"exec").finish();
/// let parsed: CacheKey = key.to_string().parse().unwrap();
/// assert_eq!(key, parsed);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey([u8; 32]);

impl CacheKey {
    /// The key made from a raw digest.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The lowercase hex form (64 characters), as used in paths and JSON.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    /// The first 12 hex characters, enough for people to tell keys apart.
    pub fn short(&self) -> String {
        self.to_hex()[..12].to_string()
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({})", self.short())
    }
}

/// The error of parsing a key that is not 64 hex characters.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a cache key (expected 64 hex characters)")]
pub struct ParseKeyError(String);

impl FromStr for CacheKey {
    type Err = ParseKeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        blake3::Hash::from_hex(s)
            .map(|h| Self(*h.as_bytes()))
            .map_err(|_| ParseKeyError(s.to_string()))
    }
}

impl Serialize for CacheKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for CacheKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Builds a key from named fields.
///
/// Encoding (the definition users audit against): blake3 over the scheme name field followed by
/// each field in the order given, every field written as
/// `u64-le(len(name)) ‖ name ‖ u64-le(len(value)) ‖ value`.
/// Length prefixes make the encoding injective: no two field lists hash the same bytes.
///
/// ```
/// use covflow_cache::KeyBuilder;
/// let a = KeyBuilder::new().field("a", b"bc").finish();
/// let b = KeyBuilder::new().field("ab", b"c").finish();
/// assert_ne!(a, b);
/// ```
#[derive(Clone)]
pub struct KeyBuilder {
    hasher: blake3::Hasher,
}

impl Default for KeyBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyBuilder {
    /// A builder that has hashed the scheme name.
    pub fn new() -> Self {
        let mut b = Self {
            hasher: blake3::Hasher::new(),
        };
        b.field("scheme", KEY_SCHEME.as_bytes());
        b
    }

    /// Appends one named field.
    pub fn field(&mut self, name: &str, value: &[u8]) -> &mut Self {
        self.hasher.update(&(name.len() as u64).to_le_bytes());
        self.hasher.update(name.as_bytes());
        self.hasher.update(&(value.len() as u64).to_le_bytes());
        self.hasher.update(value);
        self
    }

    /// The key of the fields appended so far.
    pub fn finish(&self) -> CacheKey {
        CacheKey(*self.hasher.finalize().as_bytes())
    }
}

/// Canonical JSON: object keys sorted, no whitespace, serde_json's shortest number forms.
/// Two parameter sets that mean the same thing encode to the same bytes whatever their key order.
///
/// ```
/// let a = serde_json::json!({"b": 1, "a": [true, {"y": 2, "x": 1}]});
/// let b = serde_json::json!({"a": [true, {"x": 1, "y": 2}], "b": 1});
/// assert_eq!(covflow_cache::canonical_json(&a), covflow_cache::canonical_json(&b));
/// assert_eq!(covflow_cache::canonical_json(&a), r#"{"a":[true,{"x":1,"y":2}],"b":1}"#);
/// ```
pub fn canonical_json(value: &serde_json::Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_order_matters_and_is_stable() {
        let ab = KeyBuilder::new().field("a", b"1").field("b", b"2").finish();
        let ba = KeyBuilder::new().field("b", b"2").field("a", b"1").finish();
        assert_ne!(ab, ba);
        let again = KeyBuilder::new().field("a", b"1").field("b", b"2").finish();
        assert_eq!(ab, again);
    }

    #[test]
    fn bad_hex_is_refused() {
        assert!("xyz".parse::<CacheKey>().is_err());
        assert!("ab".repeat(32).parse::<CacheKey>().is_ok());
    }
}

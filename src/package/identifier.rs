//! `PluginUniqueIdentifier`: `author/name:version@checksum`, validated by the
//! rule of the reference's `pkg/entities/plugin_entities/identity.go`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::IdentifierError;

/// A validated plugin unique identifier. The author part is optional.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PluginUniqueIdentifier(String);

fn is_id_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'
}

fn is_id(s: &str, max: usize) -> bool {
    (1..=max).contains(&s.len()) && s.chars().all(is_id_char)
}

fn is_digits(s: &str) -> bool {
    (1..=4).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
}

/// `\d{1,4}(\.\d{1,4}){1,3}(-\w{1,16})?`: two to four numeric parts and an
/// optional suffix of word characters.
fn is_identifier_version(v: &str) -> bool {
    let (numbers, suffix) = match v.split_once('-') {
        Some((n, s)) => (n, Some(s)),
        None => (v, None),
    };
    let parts: Vec<&str> = numbers.split('.').collect();
    (2..=4).contains(&parts.len())
        && parts.iter().all(|p| is_digits(p))
        && suffix.is_none_or(|s| {
            (1..=16).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
}

impl PluginUniqueIdentifier {
    /// Validates `s` as an identifier.
    pub fn parse(s: &str) -> Result<Self, IdentifierError> {
        let invalid = || IdentifierError(s.to_string());
        let (left, checksum) = s.rsplit_once('@').ok_or_else(invalid)?;
        if !(32..=64).contains(&checksum.len())
            || !checksum
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(invalid());
        }
        let (plugin_id, version) = left.split_once(':').ok_or_else(invalid)?;
        if !is_identifier_version(version) {
            return Err(invalid());
        }
        let valid_id = match plugin_id.split_once('/') {
            Some((author, name)) => is_id(author, 64) && is_id(name, 255),
            None => is_id(plugin_id, 255),
        };
        if !valid_id {
            return Err(invalid());
        }
        Ok(Self(s.to_string()))
    }

    /// Builds `author/name:version@checksum` (no `author/` when empty).
    pub fn new(
        author: &str,
        name: &str,
        version: &str,
        checksum: &str,
    ) -> Result<Self, IdentifierError> {
        if author.is_empty() {
            Self::parse(&format!("{name}:{version}@{checksum}"))
        } else {
            Self::parse(&format!("{author}/{name}:{version}@{checksum}"))
        }
    }

    /// `author/name` (or `name` when there is no author).
    pub fn plugin_id(&self) -> &str {
        self.0.split_once(':').map_or(&self.0, |(id, _)| id)
    }

    /// The version between `:` and `@`.
    pub fn version(&self) -> &str {
        let left = self.0.rsplit_once('@').map_or(self.0.as_str(), |(l, _)| l);
        left.split_once(':').map_or("", |(_, v)| v)
    }

    /// The checksum after `@`.
    pub fn checksum(&self) -> &str {
        self.0.rsplit_once('@').map_or("", |(_, c)| c)
    }

    /// The author, empty when the identifier has none.
    pub fn author(&self) -> &str {
        self.plugin_id().split_once('/').map_or("", |(a, _)| a)
    }

    /// The plugin name without author.
    pub fn name(&self) -> &str {
        let id = self.plugin_id();
        id.split_once('/').map_or(id, |(_, n)| n)
    }

    /// True when the author is a UUID, as debug-runtime plugins are named;
    /// uploaded packages may not look like that.
    pub fn remote_like(&self) -> bool {
        uuid::Uuid::parse_str(self.author()).is_ok()
    }

    /// The identifier as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for PluginUniqueIdentifier {
    type Err = IdentifierError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for PluginUniqueIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for PluginUniqueIdentifier {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PluginUniqueIdentifier {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUM: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn accessors_split_the_parts() {
        let id: PluginUniqueIdentifier = format!("langgenius/openai:0.0.1@{SUM}").parse().unwrap();
        assert_eq!(id.plugin_id(), "langgenius/openai");
        assert_eq!(id.author(), "langgenius");
        assert_eq!(id.name(), "openai");
        assert_eq!(id.version(), "0.0.1");
        assert_eq!(id.checksum(), SUM);
        assert!(!id.remote_like());
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(
            serde_json::from_str::<PluginUniqueIdentifier>(&json).unwrap(),
            id
        );
    }

    #[test]
    fn author_is_optional_and_versions_follow_the_rule() {
        for ok in [
            format!("openai:1.2@{}", &SUM[..32]),
            format!("a/b:1.2.3.4-beta_1@{SUM}"),
            format!("a/b:9999.0.0@{SUM}"),
        ] {
            assert!(PluginUniqueIdentifier::parse(&ok).is_ok(), "{ok}");
        }
        for bad in [
            format!("A/b:1.0.0@{SUM}"),
            format!("a/b:1@{SUM}"),
            format!("a/b:1.0.0.0.0@{SUM}"),
            format!("a/b:10000.0.0@{SUM}"),
            format!("a/b:1.0.0-@{SUM}"),
            format!("a/b:1.0.0@{}", &SUM[..31]),
            format!("a/b:1.0.0@{}X", &SUM[..40]),
            format!("a/b/c:1.0.0@{SUM}"),
            "a/b:1.0.0".to_string(),
            String::new(),
        ] {
            assert!(PluginUniqueIdentifier::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn uuid_authors_are_remote_like() {
        let id =
            PluginUniqueIdentifier::new("6c2a2a8e-1d5a-4a36-9a3f-3b8c1f1d2e4f", "x", "0.0.1", SUM)
                .unwrap();
        assert!(id.remote_like());
    }
}

//! `shimmer.origin.path`: where on the origin an image lives, as a template per silo.
//!
//! Origins are laid out differently: Shimmie's own web server rules answer
//! `/_images/<hash>/<name>` (the default, today's behaviour), a plain web server over
//! Shimmie's data directory has `images/<ab>/<hash>`, and Shimmie's S3 extension puts
//! `<ab>/<cd>/<hash>` into its bucket. A template is checked once when the config is
//! rendered (`shimmer -t` names the unknown variable), so the request path only
//! concatenates.

use serde::Deserialize;

use crate::object::Silo;
use crate::request::MediaRequest;

/// The variables a template may use.
pub const VARIABLES: &str = "$hash, $ab, $cd, $name, $silo";

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    /// The 32 hex digits.
    Hash,
    /// Hex digits 1-2 of the hash.
    Ab,
    /// Hex digits 3-4 of the hash.
    Cd,
    /// What followed `<hash>/` in the visitor's path, still percent-encoded (may be
    /// empty).
    Name,
    /// `_images` or `_thumbs`.
    Silo,
}

/// A validated path template, e.g. `/images/$ab/$hash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    text: String,
    parts: Vec<Part>,
}

impl PathTemplate {
    /// Parses a template; the error says what is wrong and where.
    pub fn parse(text: &str) -> Result<PathTemplate, String> {
        if !text.starts_with('/') {
            return Err(format!("{text:?} must start with /"));
        }
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            if c != '$' {
                if !allowed_literal(c) {
                    return Err(format!(
                        "{text:?}: {c:?} is not allowed in a URL path (percent-encode it)"
                    ));
                }
                literal.push(c);
                rest = &rest[c.len_utf8()..];
                continue;
            }
            let after = &rest[1..];
            let len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            let name = &after[..len];
            let part = match name {
                "hash" => Part::Hash,
                "ab" => Part::Ab,
                "cd" => Part::Cd,
                "name" => Part::Name,
                "silo" => Part::Silo,
                "" => return Err(format!("{text:?}: a lone $ (variables are {VARIABLES})")),
                other => {
                    return Err(format!(
                        "{text:?}: unknown variable ${other} (variables are {VARIABLES})"
                    ))
                }
            };
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(part);
            rest = &after[len..];
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        if !parts.contains(&Part::Hash) {
            // Without the hash every image would be the same file.
            return Err(format!("{text:?} must contain $hash"));
        }
        Ok(PathTemplate {
            text: text.to_owned(),
            parts,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The origin path for a request. Every variable is URL-safe: the hash is hex,
    /// the silo a fixed name, and the name was checked by [`crate::request::parse`]
    /// (no encoded slashes, no dot segments) and stays percent-encoded.
    pub fn render(&self, media: &MediaRequest) -> String {
        let hex_buf = media.hash.hex();
        let hex: &str = &hex_buf;
        let mut out = String::with_capacity(self.text.len() + 64);
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Hash => out.push_str(hex),
                Part::Ab => out.push_str(&hex[..2]),
                Part::Cd => out.push_str(&hex[2..4]),
                Part::Name => out.push_str(media.rest.strip_prefix('/').unwrap_or(&media.rest)),
                Part::Silo => out.push_str(media.silo.as_str()),
            }
        }
        out
    }
}

/// RFC 3986 `pchar`s and `/`, plus `%` for escapes the operator wrote (no `?` or `#`:
/// a template is a path only).
fn allowed_literal(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!&'()*+,;=:@/%".contains(c)
}

/// `shimmer.origin.path` as written: one template for both silos, or one per silo
/// (`{_images: ..., _thumbs: ...}`, either may be left out).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawOriginPath {
    Both(String),
    PerSilo(RawPerSilo),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPerSilo {
    #[serde(rename = "_images")]
    pub images: Option<String>,
    #[serde(rename = "_thumbs")]
    pub thumbs: Option<String>,
}

/// The templates in force; `None` for a silo: the origin kind's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginPaths {
    pub images: Option<PathTemplate>,
    pub thumbs: Option<PathTemplate>,
}

impl OriginPaths {
    /// Parses what the file says (nothing: the defaults).
    pub fn from_raw(raw: Option<&RawOriginPath>) -> Result<OriginPaths, String> {
        let parse = |s: &Option<String>| s.as_deref().map(PathTemplate::parse).transpose();
        Ok(match raw {
            None => OriginPaths::default(),
            Some(RawOriginPath::Both(s)) => {
                let t = PathTemplate::parse(s)?;
                OriginPaths {
                    images: Some(t.clone()),
                    thumbs: Some(t),
                }
            }
            Some(RawOriginPath::PerSilo(p)) => OriginPaths {
                images: parse(&p.images)?,
                thumbs: parse(&p.thumbs)?,
            },
        })
    }

    /// Fills the silos left unset with `default`.
    pub fn or_default(mut self, default: &PathTemplate) -> OriginPaths {
        self.images.get_or_insert_with(|| default.clone());
        self.thumbs.get_or_insert_with(|| default.clone());
        self
    }

    /// The path to ask an HTTP origin for (S3 adds its bucket in front, see
    /// [`super::s3`]). Without a template: `/<silo>/<hash><rest>`, exactly as visited.
    pub fn path_for(&self, media: &MediaRequest) -> String {
        let t = match media.silo {
            Silo::Images => &self.images,
            Silo::Thumbs => &self.thumbs,
        };
        match t {
            Some(t) => t.render(media),
            None => media.origin_path(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::parse;

    const H: &str = "e28e3076236eff37065d36416001263e";

    fn media(path: &str) -> MediaRequest {
        parse(&http::Method::GET, path, None, 2048).expect("media path")
    }

    fn render(t: &str, path: &str) -> String {
        PathTemplate::parse(t)
            .expect("template")
            .render(&media(path))
    }

    #[test]
    fn each_variable_renders() {
        let p = format!("/_images/{H}/5424912%20-%20Bocchi.jpg");
        assert_eq!(
            render("/_images/$hash/$name", &p),
            format!("/_images/{H}/5424912%20-%20Bocchi.jpg")
        );
        assert_eq!(render("/images/$ab/$hash", &p), format!("/images/e2/{H}"));
        assert_eq!(render("/$ab/$cd/$hash", &p), format!("/e2/8e/{H}"));
        assert_eq!(
            render("/$silo/x/$hash.bin", &p),
            format!("/_images/x/{H}.bin")
        );
        let t = format!("/_thumbs/{H}/thumb.jpg");
        assert_eq!(
            render("/d/$silo/$ab/$hash", &t),
            format!("/d/_thumbs/e2/{H}")
        );
    }

    #[test]
    fn name_is_empty_or_the_suffix_without_slash() {
        assert_eq!(
            render("/o/$hash/$name", &format!("/_images/{H}")),
            format!("/o/{H}/")
        );
        assert_eq!(
            render("/o/$hash$name", &format!("/_images/{H}.png")),
            format!("/o/{H}.png")
        );
    }

    #[test]
    fn bad_templates_are_refused_with_the_reason() {
        let e = PathTemplate::parse("/images/$hash_ab/$hash").unwrap_err();
        assert!(e.contains("unknown variable $hash_ab"), "{e}");
        assert!(e.contains("$hash, $ab, $cd, $name, $silo"), "{e}");
        assert!(PathTemplate::parse("/x/$/$hash")
            .unwrap_err()
            .contains("lone $"));
        assert!(PathTemplate::parse("images/$hash")
            .unwrap_err()
            .contains("start with /"));
        assert!(PathTemplate::parse("/images/$ab")
            .unwrap_err()
            .contains("$hash"));
        for bad in [
            "/a b/$hash",
            "/$hash?x=1",
            "/$hash#f",
            "/\u{7f}$hash",
            "/é/$hash",
        ] {
            assert!(PathTemplate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn per_silo_and_defaults() {
        let raw: RawOriginPath =
            serde_yaml::from_str("{_images: \"/images/$ab/$hash\"}").expect("yaml");
        let paths = OriginPaths::from_raw(Some(&raw)).expect("paths");
        let img = media(&format!("/_images/{H}/a.jpg"));
        let th = media(&format!("/_thumbs/{H}/thumb.jpg"));
        assert_eq!(paths.path_for(&img), format!("/images/e2/{H}"));
        // Unset: today's path, exactly as visited.
        assert_eq!(paths.path_for(&th), format!("/_thumbs/{H}/thumb.jpg"));
        let both: RawOriginPath = serde_yaml::from_str("\"/$ab/$cd/$hash\"").expect("yaml");
        let paths = OriginPaths::from_raw(Some(&both)).expect("paths");
        assert_eq!(paths.path_for(&th), format!("/e2/8e/{H}"));
        let d = PathTemplate::parse("/$silo/$hash").expect("t");
        let filled = OriginPaths::from_raw(Some(&raw)).expect("p").or_default(&d);
        assert_eq!(filled.path_for(&th), format!("/_thumbs/{H}"));
        assert!(serde_yaml::from_str::<RawOriginPath>("{_videos: \"/$hash\"}").is_err());
    }
}

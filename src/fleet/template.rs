//! Shimmie link templates: parsing the `{name=weight,...}` balancer exactly as
//! Shimmie's PHP does, and rendering a node's link for an image.

use super::{php, FleetError, Silo};
use std::collections::HashMap;
use std::io;

/// One node of a balanced template.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Node {
    /// The text substituted for the braces (not trimmed, may be empty).
    pub name: String,
    /// PHP `(int)` of the text after `=`; 1 for a bare name.
    pub weight: i64,
}

/// A piece of a rendered link.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    Lit(String),
    /// Where the chosen node name goes (the braces).
    Node,
    /// `$hash`
    Hash,
    /// `$hash_ab`: the hash's first two characters.
    HashAb,
    /// `$hash_cd`: the hash's third and fourth characters.
    HashCd,
}

/// A parsed link template (`image_ilink` / `image_tlink`).
///
/// Balanced when it contains `{...}`: Shimmie matches `(.*){(.*)}(.*)`, so the *last*
/// brace pair is used, and because PCRE's `.` stops at `\n`, only the first line that
/// holds a `{` followed by a `}` takes part; Shimmie's link is then that line alone,
/// `pre + name + post`, and so is ours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    raw: String,
    /// `None` when unbalanced.
    nodes: Option<Vec<Node>>,
    /// The first name that was listed more than once (flexihash refuses those).
    repeated: Option<String>,
    segs: Vec<Seg>,
    /// Index in `segs` of the first `$hash` after the node (after the start when
    /// unbalanced): where `node_url` switches to the visitor's path.
    cut: Option<usize>,
}

impl Template {
    /// Parses a template the way Shimmie does.
    ///
    /// - no braces: unbalanced, every mirror may serve every image;
    /// - entries split on `,`, each on `=`: `name` weighs 1, `name=w` weighs PHP
    ///   `(int)w` (`"5abc"` is 5, `"x"` is 0), three or more parts is an error naming
    ///   the entry;
    /// - a repeated name keeps its first place and takes the later weight (a PHP
    ///   array assignment), see [`Template::repeated_name`];
    /// - `{}` and empty entries are nodes with an empty name, as in PHP
    ///   (`explode(",", "")` is `[""]`), so Shimmie links them to `pre + post`.
    pub fn parse(s: &str) -> Result<Template, FleetError> {
        let mut segs = Vec::new();
        let (nodes, repeated) = match split_braces(s) {
            None => {
                tokenize(s, &mut segs);
                (None, None)
            }
            Some((pre, opts, post)) => {
                let (nodes, repeated) = parse_opts(opts)?;
                tokenize(pre, &mut segs);
                segs.push(Seg::Node);
                tokenize(post, &mut segs);
                (Some(nodes), repeated)
            }
        };
        let after = segs.iter().position(|s| *s == Seg::Node).unwrap_or(0);
        let cut = segs
            .iter()
            .skip(after)
            .position(|s| *s == Seg::Hash)
            .map(|i| i + after);
        Ok(Template {
            raw: s.to_owned(),
            nodes,
            repeated,
            segs,
            cut,
        })
    }

    /// The text this was parsed from.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Whether the template has a `{...}` balancer.
    pub fn is_balanced(&self) -> bool {
        self.nodes.is_some()
    }

    /// The nodes in first-seen order, weights after repeats; empty when unbalanced.
    pub fn nodes(&self) -> &[Node] {
        self.nodes.as_deref().unwrap_or(&[])
    }

    /// The first name listed more than once, if any.
    pub fn repeated_name(&self) -> Option<&str> {
        self.repeated.as_deref()
    }

    /// The pieces of the whole link for `node` (ignored when unbalanced) and `hash`:
    /// `$hash`, `$hash_ab` and `$hash_cd` substituted; other variables (`$id`,
    /// `$tags`, `$ext`, ...) are left as written, the mirror does not know them.
    fn pieces<'a>(
        &'a self,
        segs: &'a [Seg],
        node: &'a str,
        hash: &'a str,
    ) -> impl Iterator<Item = &'a str> + 'a {
        segs.iter().map(move |seg| match seg {
            Seg::Lit(text) => text.as_str(),
            Seg::Node => node,
            Seg::Hash => hash,
            Seg::HashAb => hash.get(..2).unwrap_or(""),
            Seg::HashCd => hash.get(2..4).unwrap_or(""),
        })
    }

    /// The link for `node` and `hash` (see [`Template::write_link`]).
    pub fn link(&self, node: Option<&str>, hash: &str) -> String {
        let mut out = String::new();
        for piece in self.pieces(&self.segs, node.unwrap_or(""), hash) {
            out.push_str(piece);
        }
        out
    }

    /// Writes the link for `node` and `hash`: the template with the node in place of
    /// the braces and `$hash`, `$hash_ab`, `$hash_cd` substituted; other variables stay
    /// as written. No allocation.
    pub fn write_link<W: io::Write>(
        &self,
        out: &mut W,
        node: Option<&str>,
        hash: &str,
    ) -> io::Result<()> {
        for piece in self.pieces(&self.segs, node.unwrap_or(""), hash) {
            out.write_all(piece.as_bytes())?;
        }
        Ok(())
    }

    /// The URL of `node` for this image, keeping the visitor's filename: the link
    /// rendered up to the end of the first `$hash` after the braces, then `rest` (the
    /// request path after the hash, e.g. `"/1234%20-%20tag.jpg"`).
    ///
    /// Without a `$hash` after the braces the template cannot carry the filename, so
    /// the URL is the rendered link cut at the first `/` after the node (after its
    /// `://` if one follows), then shimmer's own path `/<silo>/<hash><rest>`, which
    /// every mirror serves.
    pub fn node_url(&self, silo: Silo, node: &str, hash: &str, rest: &str) -> String {
        let mut out = String::with_capacity(self.raw.len() + hash.len() + rest.len() + 16);
        if let Some(cut) = self.cut {
            for piece in self.pieces(&self.segs[..=cut], node, hash) {
                out.push_str(piece);
            }
            out.push_str(rest);
            return out;
        }
        let mut node_end = 0;
        for (seg, piece) in self.segs.iter().zip(self.pieces(&self.segs, node, hash)) {
            out.push_str(piece);
            if *seg == Seg::Node {
                node_end = out.len();
            }
        }
        let mut from = node_end;
        if let Some(scheme) = out[from..].find("://") {
            from += scheme + 3;
        }
        if let Some(slash) = out[from..].find('/') {
            out.truncate(from + slash);
        }
        out.push('/');
        out.push_str(silo.as_str());
        out.push('/');
        out.push_str(hash);
        out.push_str(rest);
        out
    }
}

/// PCRE `(.*){(.*)}(.*)` without flags: the first line with a `{` followed by a `}`;
/// on it, the last `}` and the last `{` before it (both `.*` are greedy).
fn split_braces(s: &str) -> Option<(&str, &str, &str)> {
    s.split('\n').find_map(|line| {
        let close = line.rfind('}')?;
        let open = line[..close].rfind('{')?;
        Some((&line[..open], &line[open + 1..close], &line[close + 1..]))
    })
}

/// Shimmie's `parse_load_balancer_config`, keeping PHP array semantics for repeats.
fn parse_opts(opts: &str) -> Result<(Vec<Node>, Option<String>), FleetError> {
    let mut nodes: Vec<Node> = Vec::new();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut repeated = None;
    for entry in opts.split(',') {
        let mut parts = entry.split('=');
        let name = parts.next().unwrap_or_default();
        let weight = parts.next().map_or(1, php::int_cast);
        if parts.next().is_some() {
            return Err(FleetError::InvalidEntry {
                entry: entry.to_owned(),
            });
        }
        match seen.get(name) {
            Some(&i) => {
                nodes[i].weight = weight;
                repeated.get_or_insert_with(|| name.to_owned());
            }
            None => {
                seen.insert(name, nodes.len());
                nodes.push(Node {
                    name: name.to_owned(),
                    weight,
                });
            }
        }
    }
    Ok((nodes, repeated))
}

/// Splits text into literals and hash variables. Shimmie replaces `$hash_ab` and
/// `$hash_cd` before `$hash`, so those win where they start the same way; `$hash_ef`
/// is `$hash` followed by `_ef`.
fn tokenize(mut text: &str, out: &mut Vec<Seg>) {
    fn lit(text: &str, out: &mut Vec<Seg>) {
        if !text.is_empty() {
            out.push(Seg::Lit(text.to_owned()));
        }
    }
    while let Some(pos) = text.find("$hash") {
        lit(&text[..pos], out);
        let after = &text[pos + "$hash".len()..];
        text = if let Some(rest) = after.strip_prefix("_ab") {
            out.push(Seg::HashAb);
            rest
        } else if let Some(rest) = after.strip_prefix("_cd") {
            out.push(Seg::HashCd);
            rest
        } else {
            out.push(Seg::Hash);
            after
        };
    }
    lit(text, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "e28e3076236eff37065d36416001263e";

    fn nodes(t: &str) -> Vec<(String, i64)> {
        Template::parse(t)
            .map(|t| {
                t.nodes()
                    .iter()
                    .map(|n| (n.name.clone(), n.weight))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn n(name: &str, weight: i64) -> (String, i64) {
        (name.to_owned(), weight)
    }

    #[test]
    fn parses_shimmie_published_weights() {
        assert_eq!(
            nodes("{foo=10,bar=5,baz=5,quux=0}"),
            vec![n("foo", 10), n("bar", 5), n("baz", 5), n("quux", 0)]
        );
    }

    #[test]
    fn bare_names_weigh_one() {
        assert_eq!(nodes("x{a,b=3}y"), vec![n("a", 1), n("b", 3)]);
    }

    #[test]
    fn weights_are_php_int_casts() {
        assert_eq!(
            nodes("{a=5abc,b=x,c=,d= 7,e=-2,f=1e2}"),
            vec![
                n("a", 5),
                n("b", 0),
                n("c", 0),
                n("d", 7),
                n("e", -2),
                n("f", 100)
            ]
        );
    }

    #[test]
    fn names_are_not_trimmed() {
        assert_eq!(nodes("{a, b}"), vec![n("a", 1), n(" b", 1)]);
    }

    #[test]
    fn repeated_name_keeps_first_place_and_later_weight() {
        let t = Template::parse("{a=1,b=2,a=7}").unwrap();
        assert_eq!(
            t.nodes()[0],
            Node {
                name: "a".into(),
                weight: 7
            }
        );
        assert_eq!(t.nodes().len(), 2);
        assert_eq!(t.repeated_name(), Some("a"));
    }

    #[test]
    fn three_parts_is_an_error_naming_the_entry() {
        let err = Template::parse("{a=1,b=2=3}").unwrap_err();
        assert_eq!(
            err,
            FleetError::InvalidEntry {
                entry: "b=2=3".into()
            }
        );
        assert!(err.to_string().contains("\"b=2=3\""));
    }

    #[test]
    fn no_braces_means_unbalanced() {
        let t = Template::parse("_images/$hash/$id%20-%20$tags.$ext").unwrap();
        assert!(!t.is_balanced());
        assert!(t.nodes().is_empty());
    }

    #[test]
    fn unmatched_braces_mean_unbalanced() {
        assert!(!Template::parse("a}b{c").unwrap().is_balanced());
        assert!(!Template::parse("a{b").unwrap().is_balanced());
    }

    #[test]
    fn greedy_match_uses_last_brace_pair() {
        let t = Template::parse("https://{x,y}.com/{a,b}/$hash").unwrap();
        assert_eq!(
            nodes("https://{x,y}.com/{a,b}/$hash"),
            vec![n("a", 1), n("b", 1)]
        );
        assert_eq!(t.link(Some("a"), H), format!("https://{{x,y}}.com/a/{H}"));
        // The last `{` that still has a `}` after it, and the last `}`.
        assert_eq!(nodes("{a}{b"), vec![n("a", 1)]);
        assert_eq!(nodes("{a{b}c}"), vec![n("b}c", 1)]);
    }

    #[test]
    fn empty_braces_are_one_empty_node() {
        let t = Template::parse("https://{}.example.com/$hash").unwrap();
        assert_eq!(nodes("https://{}.example.com/$hash"), vec![n("", 1)]);
        assert_eq!(t.link(Some(""), H), format!("https://.example.com/{H}"));
    }

    #[test]
    fn only_the_first_line_with_braces_counts() {
        let t = Template::parse("junk\nhttps://{a,b}.com/$hash\n{c,d}").unwrap();
        assert_eq!(t.nodes().len(), 2);
        assert_eq!(t.link(Some("b"), H), format!("https://b.com/{H}"));
    }

    #[test]
    fn link_substitutes_node_and_hash_variables_only() {
        let t = Template::parse("https://m-{a=5,b=5}.ex/$hash_ab/$hash_cd/$hash/$id.$ext").unwrap();
        assert_eq!(
            t.link(Some("b"), H),
            format!("https://m-b.ex/e2/8e/{H}/$id.$ext")
        );
        let mut bytes = Vec::new();
        t.write_link(&mut bytes, Some("b"), H).unwrap();
        assert_eq!(bytes, t.link(Some("b"), H).into_bytes());
    }

    #[test]
    fn unknown_hash_suffix_is_hash_then_text() {
        let t = Template::parse("{a}/$hash_ef").unwrap();
        assert_eq!(t.link(Some("a"), H), format!("a/{H}_ef"));
    }

    #[test]
    fn node_url_keeps_visitor_filename() {
        let t = Template::parse("https://m-{a,b}.example.com/_images/$hash/$id%20-%20$tags.$ext")
            .unwrap();
        assert_eq!(
            t.node_url(Silo::Images, "b", H, "/5424912%20-%20Bocchi.jpg"),
            format!("https://m-b.example.com/_images/{H}/5424912%20-%20Bocchi.jpg")
        );
    }

    #[test]
    fn node_url_cuts_at_first_hash_after_node() {
        let t = Template::parse("https://{a,b}.cdn/$hash_ab/$hash/x/$hash").unwrap();
        assert_eq!(
            t.node_url(Silo::Thumbs, "a", H, ".jpg"),
            format!("https://a.cdn/e2/{H}.jpg")
        );
    }

    #[test]
    fn node_url_without_hash_uses_mirror_path() {
        let t = Template::parse("https://{a,b}.cdn.example/img/$id.$ext").unwrap();
        assert_eq!(
            t.node_url(Silo::Images, "a", H, "/1.jpg"),
            format!("https://a.cdn.example/_images/{H}/1.jpg")
        );
        let t = Template::parse("{a,b}://host").unwrap();
        assert_eq!(
            t.node_url(Silo::Thumbs, "a", H, "/t.jpg"),
            format!("a://host/_thumbs/{H}/t.jpg")
        );
    }

    #[test]
    fn node_url_with_hash_only_before_node_uses_mirror_path() {
        let t = Template::parse("https://cdn/$hash/{a,b}").unwrap();
        assert_eq!(
            t.node_url(Silo::Images, "a", H, "/x.png"),
            format!("https://cdn/{H}/a/_images/{H}/x.png")
        );
    }

    #[test]
    fn unbalanced_node_url_ignores_node() {
        let t = Template::parse("_images/$hash/thumb.jpg").unwrap();
        assert_eq!(
            t.node_url(Silo::Images, "zzz", H, "/a.jpg"),
            format!("_images/{H}/a.jpg")
        );
    }

    #[test]
    fn short_hash_does_not_panic() {
        let t = Template::parse("{a}/$hash_ab/$hash_cd/$hash").unwrap();
        assert_eq!(t.link(Some("a"), "e"), "a///e");
    }
}

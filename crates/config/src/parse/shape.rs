//! The shape of a node: allowed children, arguments and properties,
//! duplicates, and did-you-mean help.

use std::collections::HashMap;

use kdl::{KdlDocument, KdlEntry, KdlNode, KdlValue};
use miette::SourceSpan;

use super::Builder;

/// What a node may carry besides its name.
pub(super) struct Shape<'s> {
    /// Most positional arguments accepted.
    pub(super) args: usize,
    /// Properties accepted.
    pub(super) props: &'s [&'s str],
    /// Whether a `{ ... }` block is accepted.
    pub(super) children: bool,
}

pub(super) fn value_type(v: &KdlValue) -> &'static str {
    match v {
        KdlValue::String(_) => "a string",
        KdlValue::Integer(_) => "an integer",
        KdlValue::Float(_) => "a number",
        KdlValue::Bool(_) => "a boolean",
        KdlValue::Null => "null",
    }
}

pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            let v = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
            cur.push(v);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// `did you mean `x`? expected one of: ...`
pub(super) fn one_of_help(found: &str, expected: &[&str]) -> Option<String> {
    if expected.is_empty() {
        return None;
    }
    let list = expected.join(", ");
    let best = expected
        .iter()
        .map(|e| (edit_distance(found, e), *e))
        .min()
        .filter(|(d, e)| *d <= 2.max(e.len() / 3));
    Some(match best {
        Some((_, e)) => format!("did you mean `{e}`? expected one of: {list}"),
        None => format!("expected one of: {list}"),
    })
}

pub(super) fn args(node: &KdlNode) -> impl Iterator<Item = &KdlEntry> {
    node.entries().iter().filter(|e| e.name().is_none())
}

pub(super) fn prop<'n>(node: &'n KdlNode, key: &str) -> Option<&'n KdlEntry> {
    // The last one, as KDL says; duplicates are reported by `check_shape`.
    node.entries()
        .iter()
        .rev()
        .find(|e| e.name().map(|n| n.value()) == Some(key))
}

pub(super) fn name(node: &KdlNode) -> &str {
    node.name().value()
}

impl Builder<'_> {
    /// Reports extra arguments, unknown or repeated properties and unwanted blocks.
    pub(super) fn check_shape(&mut self, node: &KdlNode, what: &str, shape: &Shape<'_>) {
        let mut nargs = 0;
        let mut seen: HashMap<&str, SourceSpan> = HashMap::new();
        for e in node.entries() {
            match e.name() {
                None => {
                    nargs += 1;
                    if nargs > shape.args {
                        let msg = if shape.args == 0 {
                            format!("`{what}` takes no arguments")
                        } else {
                            format!("too many arguments to `{what}`")
                        };
                        let help = if shape.args == 0 && shape.children {
                            Some(format!("`{what}` takes a block: `{what} {{ ... }}`"))
                        } else {
                            None
                        };
                        self.error(e.span(), msg, help);
                    }
                }
                Some(key) => {
                    let k = key.value();
                    if !shape.props.contains(&k) {
                        let help = if shape.props.is_empty() {
                            Some(format!("`{what}` takes no properties"))
                        } else if self.full() {
                            None
                        } else {
                            one_of_help(k, shape.props)
                        };
                        self.error(
                            key.span(),
                            format!("unknown property `{k}` on `{what}`"),
                            help,
                        );
                    } else if let Some(first) = seen.get(k).copied() {
                        let line = self.line_of(first);
                        self.error(
                            e.span(),
                            format!("duplicate property `{k}` on `{what}`"),
                            Some(format!("first set on line {line}")),
                        );
                    } else {
                        seen.insert(k, e.span());
                    }
                }
            }
        }
        if !shape.children {
            if let Some(children) = node.children() {
                let span = children
                    .nodes()
                    .first()
                    .map(|n| n.name().span())
                    .unwrap_or_else(|| Self::name_span(node));
                self.error(span, format!("`{what}` does not take a block"), None);
            }
        }
    }

    /// The children of a block node, with an error if there is no block.
    pub(super) fn block<'n>(&mut self, node: &'n KdlNode, what: &str) -> Option<&'n KdlDocument> {
        match node.children() {
            Some(c) => Some(c),
            None => {
                self.error(
                    Self::name_span(node),
                    format!("`{what}` needs a block: `{what} {{ ... }}`"),
                    None,
                );
                None
            }
        }
    }

    /// Iterates a block of unique keys: reports unknown and duplicate ones and
    /// returns the known nodes by name.
    pub(super) fn unique_keys<'n>(
        &mut self,
        doc: &'n KdlDocument,
        what: &str,
        keys: &[&str],
    ) -> Vec<(&'n str, &'n KdlNode)> {
        let mut out: Vec<(&'n str, &'n KdlNode)> = Vec::new();
        let mut seen: HashMap<&str, SourceSpan> = HashMap::new();
        for node in doc.nodes() {
            let k = name(node);
            if !keys.contains(&k) {
                // Only counted once the report is full: no help to compute.
                let help = if self.full() {
                    None
                } else {
                    one_of_help(k, keys)
                };
                self.error(
                    Self::name_span(node),
                    format!("unknown key `{k}` in `{what}`"),
                    help,
                );
            } else if let Some(first) = seen.get(k).copied() {
                let line = self.line_of(first);
                self.error(
                    Self::name_span(node),
                    format!("duplicate key `{k}` in `{what}`"),
                    Some(format!("first defined on line {line}")),
                );
            } else {
                seen.insert(k, Self::name_span(node));
                out.push((k, node));
            }
        }
        out
    }
}

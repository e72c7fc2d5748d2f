//! Typed getters for entries: strings, integers, booleans, paths, files.

use std::path::{Path, PathBuf};

use kdl::{KdlEntry, KdlNode, KdlValue};

use super::shape::value_type;
use super::{args, name, prop, Builder, Shape};

impl Builder<'_> {
    /// The single argument of a `key VALUE` node.
    pub(super) fn single_arg<'n>(
        &mut self,
        node: &'n KdlNode,
        expected: &str,
    ) -> Option<&'n KdlEntry> {
        let what = name(node).to_string();
        self.check_shape(
            node,
            &what,
            &Shape {
                args: 1,
                props: &[],
                children: false,
            },
        );
        let arg = args(node).next();
        if arg.is_none() {
            self.error(
                Self::name_span(node),
                format!("`{what}` needs a value: {expected}"),
                None,
            );
        }
        arg
    }

    pub(super) fn string_of<'n>(&mut self, entry: &'n KdlEntry, what: &str) -> Option<&'n str> {
        match entry.value() {
            KdlValue::String(s) => Some(s.as_str()),
            other => {
                self.error(
                    entry.span(),
                    format!(
                        "`{what}` must be a string, found {} `{other}`",
                        value_type(other)
                    ),
                    Some("quote it: \"...\"".into()),
                );
                None
            }
        }
    }

    pub(super) fn nonempty_string_of(&mut self, entry: &KdlEntry, what: &str) -> Option<String> {
        let s = self.string_of(entry, what)?;
        if s.is_empty() {
            self.error(entry.span(), format!("`{what}` must not be empty"), None);
            return None;
        }
        Some(s.to_string())
    }

    /// An integer in `min..=max`.
    pub(super) fn int_of(
        &mut self,
        entry: &KdlEntry,
        what: &str,
        min: u64,
        max: u64,
    ) -> Option<u64> {
        let expected = if min == 0 {
            "a non-negative integer"
        } else {
            "a positive integer"
        };
        match entry.value() {
            KdlValue::Integer(i) => {
                if *i < i128::from(min) || *i > i128::from(max) {
                    let why = if *i < i128::from(min) {
                        format!("must be at least {min}")
                    } else {
                        format!("must be at most {max}")
                    };
                    self.error(entry.span(), format!("`{what}` {why}, found {i}"), None);
                    None
                } else {
                    u64::try_from(*i).ok()
                }
            }
            other => {
                let help = match other {
                    KdlValue::String(s) if s.trim().parse::<i128>().is_ok() => {
                        Some(format!("remove the quotes: {}", s.trim()))
                    }
                    _ => None,
                };
                self.error(
                    entry.span(),
                    format!(
                        "`{what}` must be {expected}, found {} `{other}`",
                        value_type(other)
                    ),
                    help,
                );
                None
            }
        }
    }

    pub(super) fn bool_of(&mut self, entry: &KdlEntry, what: &str) -> Option<bool> {
        match entry.value() {
            KdlValue::Bool(b) => Some(*b),
            other => {
                self.error(
                    entry.span(),
                    format!(
                        "`{what}` must be a boolean, found {} `{other}`",
                        value_type(other)
                    ),
                    Some("write true or false (#true or #false in KDL v2)".into()),
                );
                None
            }
        }
    }

    pub(super) fn absolute_path_of(&mut self, entry: &KdlEntry, what: &str) -> Option<PathBuf> {
        let s = self.nonempty_string_of(entry, what)?;
        let p = PathBuf::from(s);
        if !p.is_absolute() {
            self.error(
                entry.span(),
                format!("`{what}` must be an absolute path, found `{}`", p.display()),
                None,
            );
            return None;
        }
        Some(p)
    }

    /// A required property, with an error on the node if it is missing.
    pub(super) fn required_prop<'n>(
        &mut self,
        node: &'n KdlNode,
        key: &str,
        what: &str,
        expected: &str,
    ) -> Option<&'n KdlEntry> {
        let e = prop(node, key);
        if e.is_none() {
            self.error(
                Self::name_span(node),
                format!("`{what}` is missing `{key}`"),
                Some(format!("add {key}={expected}")),
            );
        }
        e
    }

    pub(super) fn readable_file(&mut self, entry: &KdlEntry, path: &Path, what: &str) {
        use std::os::unix::fs::OpenOptionsExt;
        // Non-blocking: opening a FIFO must not hang the loader.
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .and_then(|f| f.metadata());
        match opened {
            Ok(m) if m.is_dir() => self.error(
                entry.span(),
                format!("{what} `{}` is a directory, not a file", path.display()),
                None,
            ),
            Ok(m) if !m.is_file() => self.error(
                entry.span(),
                format!("{what} `{}` is not a regular file", path.display()),
                None,
            ),
            Ok(_) => {}
            Err(e) => self.error(
                entry.span(),
                format!("cannot read {what} `{}`: {e}", path.display()),
                None,
            ),
        }
    }
}

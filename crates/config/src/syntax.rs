//! KDL text to a [`KdlDocument`], accepting KDL v2, KDL v1 (River's configs:
//! `offer-h2=true`) and the common mix of both (v1 keywords with v2's one-line
//! blocks such as `listeners { "0.0.0.0:80" }`).

use std::panic::{catch_unwind, AssertUnwindSafe};

use kdl::{KdlDocument, KdlError};

/// A parsed document, and how to map its byte offsets back to the original text.
pub(crate) struct Parsed {
    pub(crate) doc: KdlDocument,
    /// Set when the document was parsed from a rewritten text: the original byte
    /// offset of every byte of that text (plus one entry for its end).
    offset_map: Option<Vec<usize>>,
}

impl Parsed {
    /// The offset in the original text of `offset` in the parsed text.
    pub(crate) fn original_offset(&self, offset: usize) -> usize {
        match &self.offset_map {
            None => offset,
            Some(map) => map
                .get(offset)
                .or_else(|| map.last())
                .copied()
                .unwrap_or(offset),
        }
    }
}

/// A KDL syntax error at a byte range of the original text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) message: String,
    pub(crate) help: Option<String>,
}

fn guarded<F>(f: F) -> Result<KdlDocument, KdlError>
where
    F: FnOnce() -> Result<KdlDocument, KdlError>,
{
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        // The parsers are not supposed to panic; if one does, report a syntax
        // error at the start rather than taking the caller down.
        Err(_) => Err(KdlError {
            input: Default::default(),
            diagnostics: vec![kdl::KdlDiagnostic {
                input: Default::default(),
                span: (0usize..0usize).into(),
                message: Some("the KDL parser failed on this document".into()),
                label: None,
                help: None,
                severity: miette::Severity::Error,
            }],
        }),
    }
}

/// Messages of the v2 parser's error recovery that follow from an earlier error.
const CASCADE: &[&str] = &[
    "No closing '}' for child block",
    "Closing '}' was not found after nodes",
];

/// The one syntax error worth showing: the v2 parser recovers and reports
/// follow-up errors (unclosed enclosing blocks, "expected end of document"),
/// which would only bury the real one.
fn error_of(err: &KdlError, map: Option<&[usize]>, src: &str) -> SyntaxError {
    let orig = |o: usize| match map {
        None => o.min(src.len()),
        Some(m) => m.get(o).or_else(|| m.last()).copied().unwrap_or(src.len()),
    };
    let mut diags: Vec<&kdl::KdlDiagnostic> = err.diagnostics.iter().collect();
    diags.sort_by_key(|d| d.span.offset());
    let precise: Vec<&kdl::KdlDiagnostic> = diags
        .iter()
        .copied()
        .filter(|d| !CASCADE.iter().any(|c| d.message.as_deref() == Some(*c)))
        .collect();
    let Some(d) = precise.first().or_else(|| diags.first()) else {
        return SyntaxError {
            start: 0,
            end: 0,
            message: "KDL syntax error".into(),
            help: None,
        };
    };
    let start = orig(d.span.offset());
    let end = orig(d.span.offset().saturating_add(d.span.len()));
    let found = src.get(start..).and_then(|s| s.chars().next());
    let message = match (d.message.as_deref(), found) {
        (Some("Expected end of document") | None, Some(c)) if !c.is_whitespace() => {
            format!("unexpected `{c}`")
        }
        (Some("No closing '}' for child block"), _) => "this block is never closed".into(),
        (Some(m), _) => m.trim_end_matches('.').to_string(),
        (None, _) => "invalid KDL".into(),
    };
    SyntaxError {
        start,
        end,
        message: format!("KDL syntax error: {message}"),
        help: d.help.clone().or_else(|| {
            let after_block = src
                .get(..start)
                .and_then(|s| s.trim_end_matches([' ', '\t']).chars().last())
                == Some('}');
            if message == "this block is never closed" {
                Some("add the missing `}`".into())
            } else if after_block && message.starts_with("unexpected") {
                Some("nodes on one line are separated by `;`: `a { ... }; b { ... }`".into())
            } else {
                None
            }
        }),
    }
}

/// Stack of the thread the KDL parser runs on. Its recursion is bounded by
/// `limits::check_nesting` before it starts; this is the margin for recursion
/// that check does not know about. Only the pages touched are ever allocated.
const PARSER_STACK_BYTES: usize = 256 * 1024 * 1024;

/// Parses `src` as KDL v2, else as v2 after rewriting KDL v1's spellings, else
/// as KDL v1. On failure, the error reported is the v2 parser's (on the
/// rewritten text): it accepts both syntaxes and its positions are precise.
///
/// Runs on a thread of its own with a large stack (joined before returning),
/// so that deep recursion in the parser cannot overflow the caller's stack.
pub(crate) fn parse_kdl(src: &str) -> Result<Parsed, SyntaxError> {
    std::thread::scope(|scope| {
        let parser = std::thread::Builder::new()
            .name("kdl-parser".into())
            .stack_size(PARSER_STACK_BYTES)
            .spawn_scoped(scope, || parse_kdl_here(src));
        match parser {
            Ok(parser) => parser.join().unwrap_or_else(|_| {
                Err(SyntaxError {
                    start: 0,
                    end: 0,
                    message: "the KDL parser failed on this document".into(),
                    help: None,
                })
            }),
            // No thread to be had (a process or memory limit): parse here.
            Err(_) => parse_kdl_here(src),
        }
    })
}

fn parse_kdl_here(src: &str) -> Result<Parsed, SyntaxError> {
    let v2_err = match guarded(|| KdlDocument::parse_v2(src)) {
        Ok(doc) => {
            return Ok(Parsed {
                doc,
                offset_map: None,
            })
        }
        Err(e) => e,
    };
    let mut best = error_of(&v2_err, None, src);
    if let Some((text, map)) = v1_to_v2(src) {
        match guarded(|| KdlDocument::parse_v2(&text)) {
            Ok(doc) => {
                return Ok(Parsed {
                    doc,
                    offset_map: Some(map),
                })
            }
            Err(e) => best = error_of(&e, Some(&map), src),
        }
    }
    match guarded(|| KdlDocument::parse_v1(src)) {
        Ok(doc) => Ok(Parsed {
            doc,
            offset_map: None,
        }),
        Err(_) => Err(best),
    }
}

fn is_delimiter(b: u8) -> bool {
    b.is_ascii_whitespace()
        || matches!(
            b,
            b'{' | b'}' | b'(' | b')' | b';' | b'=' | b'"' | b'\\' | b'/' | b'[' | b']' | b','
        )
}

/// Rewrites the KDL v1 constructs that KDL v2 spells differently: bare
/// `true`/`false`/`null` become `#true`/`#false`/`#null`, raw strings
/// `r"..."`/`r#"..."#` become `#"..."#`, and the v1 escape `\/` becomes `/`.
/// Returns `None` when nothing changed, else the text and, for each of its bytes,
/// the offset of the original byte it comes from.
fn v1_to_v2(src: &str) -> Option<(String, Vec<usize>)> {
    let b = src.as_bytes();
    let n = b.len();
    let mut out: Vec<u8> = Vec::with_capacity(n + 16);
    let mut map: Vec<usize> = Vec::with_capacity(n + 16);
    let mut changed = false;
    let mut i = 0;

    macro_rules! copy {
        ($from:expr, $to:expr) => {{
            let (from, to) = ($from, ($to as usize).min(n));
            for k in from..to {
                out.push(b[k]);
                map.push(k);
            }
        }};
    }
    let find = |from: usize, pat: &[u8]| -> Option<usize> {
        if from > n {
            return None;
        }
        b[from..]
            .windows(pat.len())
            .position(|w| w == pat)
            .map(|p| p + from)
    };
    let token_start = |i: usize| i == 0 || is_delimiter(b[i - 1]) || b[i - 1] >= 0x80;

    while i < n {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == b'/' && next == Some(b'/') {
            let end = find(i, b"\n").unwrap_or(n);
            copy!(i, end);
            i = end;
        } else if c == b'/' && next == Some(b'*') {
            // Nested block comments.
            let mut depth = 0usize;
            let mut j = i;
            while j < n {
                if b[j] == b'/' && b.get(j + 1) == Some(&b'*') {
                    depth += 1;
                    j += 2;
                } else if b[j] == b'*' && b.get(j + 1) == Some(&b'/') {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            copy!(i, j);
            i = j;
        } else if c == b'"' {
            if b[i..].starts_with(b"\"\"\"") {
                let end = find(i + 3, b"\"\"\"").map(|p| p + 3).unwrap_or(n);
                copy!(i, end);
                i = end;
                continue;
            }
            copy!(i, i + 1);
            i += 1;
            while i < n {
                match b[i] {
                    b'\\' if b.get(i + 1) == Some(&b'/') => {
                        // v1's `\/` is a plain `/` (v2 has no such escape).
                        changed = true;
                        copy!(i + 1, i + 2);
                        i += 2;
                    }
                    b'\\' => {
                        copy!(i, i + 2);
                        i += 2;
                    }
                    b'"' => {
                        copy!(i, i + 1);
                        i += 1;
                        break;
                    }
                    _ => {
                        copy!(i, i + 1);
                        i += 1;
                    }
                }
            }
        } else if c == b'#' && token_start(i) {
            // A v2 raw string (or keyword): copy it whole.
            let hashes = b[i..].iter().take_while(|&&x| x == b'#').count();
            let q = i + hashes;
            if b.get(q) == Some(&b'"') {
                let mut close = vec![b'"'];
                close.extend(std::iter::repeat_n(b'#', hashes));
                let end = find(q + 1, &close).map(|p| p + close.len()).unwrap_or(n);
                copy!(i, end);
                i = end;
            } else {
                copy!(i, q);
                i = q;
            }
        } else if c == b'r' && token_start(i) && matches!(next, Some(b'"') | Some(b'#')) {
            let hashes = b[i + 1..].iter().take_while(|&&x| x == b'#').count();
            let q = i + 1 + hashes;
            let mut close = vec![b'"'];
            close.extend(std::iter::repeat_n(b'#', hashes));
            match (b.get(q), find(q + 1, &close)) {
                (Some(b'"'), Some(p)) => {
                    changed = true;
                    let end = p + close.len();
                    if hashes == 0 {
                        // r"..." -> #"..."#
                        out.push(b'#');
                        map.push(i);
                        copy!(i + 1, end);
                        out.push(b'#');
                        map.push(end.saturating_sub(1));
                    } else {
                        // r#"..."# -> #"..."#
                        copy!(i + 1, end);
                    }
                    i = end;
                }
                _ => {
                    copy!(i, i + 1);
                    i += 1;
                }
            }
        } else if token_start(i) && !is_delimiter(c) {
            let end = (i..n).find(|&k| is_delimiter(b[k])).unwrap_or(n);
            let token = &b[i..end];
            let next_non_space = b[end..].iter().find(|x| !matches!(x, b' ' | b'\t'));
            if matches!(token, b"true" | b"false" | b"null") && next_non_space != Some(&b'=') {
                changed = true;
                out.push(b'#');
                map.push(i);
            }
            copy!(i, end);
            i = end;
        } else {
            copy!(i, i + 1);
            i += 1;
        }
    }
    map.push(n);
    if !changed {
        return None;
    }
    // Only ASCII bytes were inserted or removed, at ASCII positions.
    String::from_utf8(out).ok().map(|s| (s, map))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_keywords() {
        let (text, map) = v1_to_v2("a x=true {\n b false \"true\" // null\n}").unwrap();
        assert_eq!(text, "a x=#true {\n b #false \"true\" // null\n}");
        assert_eq!(map.len(), text.len() + 1);
        // `#` of `#true` maps to the `t` of the original.
        assert_eq!(map[4], 4);
        assert_eq!(map[5], 4);
        assert!(v1_to_v2("a \"x\" 1").is_none());
    }

    #[test]
    fn rewrite_raw_strings() {
        let (text, _) = v1_to_v2(r##"a r"x\d" r#"y"z"#"##).unwrap();
        assert_eq!(text, r###"a #"x\d"# #"y"z"#"###);
        let doc = KdlDocument::parse_v2(&text).unwrap();
        assert_eq!(
            doc.nodes()[0].entries()[0].value().as_string(),
            Some(r"x\d")
        );
    }
}

//! Limits that keep a hostile configuration file from taking its reader down.
//!
//! The KDL parser recurses once per nested block, nested `/* */` comment,
//! chained slashdash (`/- /- node`) and chained type annotation: 1,500 nested
//! blocks (a 6 KB file) overflow the main thread's stack and abort the process.
//! [`check_nesting`] scans the text first, without recursion, and refuses what
//! would nest deeper than any real configuration; the parser also runs on a
//! thread with a large stack of its own (see `syntax::parse_kdl`), as a second
//! line for recursion this scan does not know about.
//!
//! The other limits bound time and memory: a file larger than
//! [`MAX_CONFIG_BYTES`] is not read at all, and at most [`MAX_DIAGNOSTICS`]
//! problems are reported in full (the rest are counted), so that the report
//! of a file full of errors is built in linear time and fits a control frame.

use crate::syntax::SyntaxError;

/// Largest configuration file read (16 MiB; real ones are a few KiB).
pub const MAX_CONFIG_BYTES: u64 = 16 * 1024 * 1024;
/// Deepest nesting of blocks, or of `/* */` comments (River's schema needs 5).
pub const MAX_NESTING: usize = 64;
/// Problems reported in full; the others are only counted.
pub const MAX_DIAGNOSTICS: usize = 50;
/// Longest run of slashdashes and type annotations before one node or value.
pub const MAX_CHAIN: usize = 16;
/// Characters of a source line quoted under a diagnostic; longer lines are
/// cut around the problem.
pub const MAX_QUOTED_LINE: usize = 200;

/// Find the first place where `src` nests deeper than the limits, scanning
/// strings and comments as KDL (v1 and v2) spells them, so that braces in a
/// string do not count.
pub(crate) fn check_nesting(src: &str) -> Result<(), SyntaxError> {
    check_slashdash_runs(src.as_bytes())?;
    let b = src.as_bytes();
    let n = b.len();
    let mut blocks = 0usize;
    let mut chain = 0usize;
    let mut i = 0usize;
    let token_start = |i: usize| i == 0 || !is_ident_byte(b[i - 1]);
    while i < n {
        let c = b[i];
        let next = b.get(i + 1).copied();
        match c {
            b'/' if next == Some(b'/') => {
                i = find(b, i, b"\n").unwrap_or(n);
            }
            b'/' if next == Some(b'*') => {
                let mut depth = 0usize;
                let mut j = i;
                while j < n {
                    if b[j] == b'/' && b.get(j + 1) == Some(&b'*') {
                        depth += 1;
                        if depth > MAX_NESTING {
                            return Err(too_deep(j, 2, "comments nested"));
                        }
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
                i = j;
            }
            b'/' if next == Some(b'-') => {
                chain += 1;
                if chain > MAX_CHAIN {
                    return Err(too_long_chain(i, 2));
                }
                i += 2;
            }
            b'(' => {
                chain += 1;
                if chain > MAX_CHAIN {
                    return Err(too_long_chain(i, 1));
                }
                i = skip_annotation(b, i + 1);
            }
            b'"' => {
                chain = 0;
                i = skip_quoted(b, i);
            }
            b'#' | b'r' if token_start(i) && raw_string_quote(b, i).is_some() => {
                chain = 0;
                i = skip_raw(b, i);
            }
            b'{' => {
                chain = 0;
                blocks += 1;
                if blocks > MAX_NESTING {
                    return Err(too_deep(i, 1, "blocks nested"));
                }
                i += 1;
            }
            b'}' => {
                chain = 0;
                blocks = blocks.saturating_sub(1);
                i += 1;
            }
            b' ' | b'\t' | b'\r' | b'\n' | b'\\' => i += 1,
            _ => {
                chain = 0;
                i += 1;
            }
        }
    }
    Ok(())
}

/// Refuse a run of more than [`MAX_CHAIN`] slashdashes separated only by
/// whitespace, wherever it is, strings and comments included. The scan above
/// skips what it takes for a string, but the parser may disagree after a
/// malformed token (`a 0"` followed by `/- /- ...`): its error recovery then
/// takes time quadratic in the run (800 slashdashes: 2.3 s). No real
/// configuration, string or not, holds such a run.
fn check_slashdash_runs(b: &[u8]) -> Result<(), SyntaxError> {
    let mut run = 0usize;
    let mut i = 0usize;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'-') {
            run += 1;
            if run > MAX_CHAIN {
                return Err(too_long_chain(i, 2));
            }
            i += 2;
        } else if matches!(b[i], b' ' | b'\t' | b'\r' | b'\n' | b'\\') {
            i += 1;
        } else {
            run = 0;
            i += 1;
        }
    }
    Ok(())
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'#') || b >= 0x80
}

fn find(b: &[u8], from: usize, pat: &[u8]) -> Option<usize> {
    b.get(from..)?
        .windows(pat.len())
        .position(|w| w == pat)
        .map(|p| p + from)
}

/// The offset of the opening quote when a raw string starts at `i`
/// (`#"`, `##"`, v1's `r"` and `r#"`).
fn raw_string_quote(b: &[u8], i: usize) -> Option<usize> {
    let start = if b[i] == b'r' { i + 1 } else { i };
    let hashes = b[start..].iter().take_while(|&&x| x == b'#').count();
    let quote = start + hashes;
    (b.get(quote) == Some(&b'"') && (hashes > 0 || b[i] == b'r')).then_some(quote)
}

/// Past a raw string starting at `i`: it ends at a quote followed by as many
/// hashes as opened it (this also closes v2's multi-line `#"""`).
fn skip_raw(b: &[u8], i: usize) -> usize {
    let Some(quote) = raw_string_quote(b, i) else {
        return i + 1;
    };
    let hashes = b[i..quote].iter().filter(|&&x| x == b'#').count();
    let mut close = vec![b'"'];
    close.extend(std::iter::repeat_n(b'#', hashes));
    find(b, quote + 1, &close).map_or(b.len(), |p| p + close.len())
}

/// Past a quoted string (`"..."` or `"""..."""`) starting at `i`, escapes
/// included; an unterminated string runs to the end.
fn skip_quoted(b: &[u8], i: usize) -> usize {
    let triple = b[i..].starts_with(b"\"\"\"");
    let mut j = if triple { i + 3 } else { i + 1 };
    while j < b.len() {
        match b[j] {
            b'\\' => j += 2,
            b'"' if !triple => return j + 1,
            b'"' if b[j..].starts_with(b"\"\"\"") => return j + 3,
            _ => j += 1,
        }
    }
    b.len()
}

/// Past a type annotation's `)`, strings inside it included.
fn skip_annotation(b: &[u8], mut j: usize) -> usize {
    while j < b.len() {
        match b[j] {
            b')' => return j + 1,
            b'"' => j = skip_quoted(b, j),
            b'\n' | b'{' | b'}' => return j,
            _ => j += 1,
        }
    }
    b.len()
}

fn too_deep(offset: usize, len: usize, what: &str) -> SyntaxError {
    SyntaxError {
        start: offset,
        end: offset + len,
        message: format!("the configuration has {what} more than {MAX_NESTING} deep"),
        help: Some(format!(
            "River's schema nests blocks at most 5 deep; the limit is {MAX_NESTING}"
        )),
    }
}

fn too_long_chain(offset: usize, len: usize) -> SyntaxError {
    SyntaxError {
        start: offset,
        end: offset + len,
        message: format!(
            "more than {MAX_CHAIN} slashdashes or type annotations in a row before one node or value"
        ),
        help: Some("one `/-` comments out a whole node, with its block".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(open: &str, close: &str, depth: usize) -> String {
        format!("{}{}", open.repeat(depth), close.repeat(depth))
    }

    #[test]
    fn real_nesting_passes_and_deep_nesting_is_refused_where_it_starts() {
        assert!(check_nesting(&nested("a {", "}", MAX_NESTING)).is_ok());
        let deep = nested("a {", "}", MAX_NESTING + 1);
        let err = check_nesting(&deep).unwrap_err();
        assert_eq!(err.start, 3 * MAX_NESTING + 2, "{err:?}");
        assert!(err.message.contains("blocks nested"), "{err:?}");

        assert!(check_nesting(&nested("/*", "*/", MAX_NESTING)).is_ok());
        let err = check_nesting(&nested("/*", "*/", MAX_NESTING + 1)).unwrap_err();
        assert!(err.message.contains("comments nested"), "{err:?}");
    }

    #[test]
    fn braces_in_strings_and_comments_do_not_count() {
        let braces = "{".repeat(1000);
        for src in [
            format!("a \"{braces}\""),
            format!("a \"\"\"\n{braces}\n\"\"\""),
            format!("a #\"{braces}\"#"),
            format!("a ##\"\"#{braces}\"##"),
            format!("a r\"{braces}\""),
            format!("a r#\"{braces}\"#"),
            format!("a \"\\\"{braces}\""),
            format!("// {braces}\na 1"),
            format!("/* {braces} */ a 1"),
            format!("a (\"t{braces})\")1"),
        ] {
            assert!(check_nesting(&src).is_ok(), "{src}");
        }
    }

    #[test]
    fn chains_of_slashdashes_and_annotations_are_bounded() {
        assert!(check_nesting("/- /-(t)a 1").is_ok());
        assert!(check_nesting(&format!("{}a", "/- ".repeat(MAX_CHAIN + 1))).is_err());
        assert!(check_nesting(&format!("a {}1", "(t)".repeat(MAX_CHAIN + 1))).is_err());
        // Many separate slashdashed nodes are no chain.
        assert!(check_nesting(&"/- a 1\n".repeat(1000)).is_ok());
    }

    /// Found by the fuzzer: after `0"` the scan saw a string to the end of
    /// the file, the parser did not, and 600 slashdashes took it 10 s.
    #[test]
    fn slashdash_runs_are_bounded_where_the_scan_sees_a_string() {
        let src = format!("a 0\"{}x\n", "/- ".repeat(600));
        let err = check_nesting(&src).unwrap_err();
        assert!(err.message.contains("slashdashes"), "{err:?}");
        assert!(check_nesting(&format!("a \"{}\"", "/- ".repeat(MAX_CHAIN))).is_ok());
    }

    #[test]
    fn identifiers_ending_in_r_or_hash_are_not_raw_strings() {
        assert!(check_nesting("user \"river\"\nbar#\"x\" 1").is_ok());
    }
}

//! Errors and rustc-style diagnostics with `ORIGIN:LINE:COLUMN`.

use std::fmt;
use std::path::PathBuf;

use crate::limits::MAX_QUOTED_LINE;

/// One problem found in a configuration, with its position (1-based line and
/// column, the column counted in characters) in the file it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub message: String,
    /// The file name (or other origin) as given to [`crate::load`] / [`crate::parse`].
    pub origin: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    pub help: Option<String>,
    /// Length of the offending span in characters on `line` (at least 1).
    pub length: usize,
    /// The text of line `line` (without its line ending), shown under the
    /// message; cut around the problem when the line is long.
    pub source_line: String,
    /// 1-based column of the problem in `source_line` (differs from `column`
    /// when the line was cut).
    pub caret_column: usize,
}

impl Diagnostic {
    /// `ORIGIN:LINE:COLUMN`.
    pub fn location(&self) -> String {
        format!("{}:{}:{}", self.origin, self.line, self.column)
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let line_no = self.line.to_string();
        let pad = " ".repeat(line_no.len());
        writeln!(f, "error: {}", self.message)?;
        writeln!(f, "{pad}--> {}", self.location())?;
        writeln!(f, "{pad} |")?;
        writeln!(f, "{line_no} | {}", self.source_line)?;
        // Keep tabs in the prefix so the caret lines up with the source.
        let prefix: String = self
            .source_line
            .chars()
            .take(self.caret_column.saturating_sub(1))
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        write!(f, "{pad} | {prefix}{}", "^".repeat(self.length.max(1)))?;
        if let Some(help) = &self.help {
            write!(f, "\n{pad} = help: {help}")?;
        }
        Ok(())
    }
}

/// The problems found in one configuration (never none): the first
/// [`MAX_DIAGNOSTICS`](crate::MAX_DIAGNOSTICS) in full, the rest counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics {
    pub list: Vec<Diagnostic>,
    /// Problems found beyond `list`, not described.
    pub omitted: usize,
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.list.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        if self.omitted > 0 {
            write!(
                f,
                "\n\nerror: and {} more errors (only the first {} are shown)",
                self.omitted,
                self.list.len()
            )?;
        }
        let total = self.list.len() + self.omitted;
        if total > 1 {
            write!(f, "\n\nerror: the configuration has {total} errors")?;
        }
        Ok(())
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("error: cannot read configuration file `{}`: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "error: configuration file `{}` is {size} bytes; the limit is {limit} bytes",
        path.display()
    )]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    /// The file was read but is not a valid configuration; every problem found is listed.
    #[error("{0}")]
    Invalid(Diagnostics),
}

impl ConfigError {
    /// The problems found, each with its position; empty for [`ConfigError::Io`].
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Io { .. } | ConfigError::TooLarge { .. } => &[],
            ConfigError::Invalid(d) => &d.list,
        }
    }
}

/// Turns byte offsets of one source text into lines and columns.
pub(crate) struct SourceText<'a> {
    pub(crate) text: &'a str,
    pub(crate) origin: &'a str,
    /// Byte offset of the start of every line.
    line_starts: Vec<usize>,
}

impl<'a> SourceText<'a> {
    pub(crate) fn new(text: &'a str, origin: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(
            text.bytes()
                .enumerate()
                .filter(|&(_, b)| b == b'\n')
                .map(|(i, _)| i + 1),
        );
        SourceText {
            text,
            origin,
            line_starts,
        }
    }

    fn floor_boundary(&self, mut offset: usize) -> usize {
        offset = offset.min(self.text.len());
        while offset > 0 && !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        offset
    }

    /// Builds a diagnostic for the byte range `start..end` of the text.
    pub(crate) fn diagnostic(
        &self,
        start: usize,
        end: usize,
        message: String,
        help: Option<String>,
    ) -> Diagnostic {
        let start = self.floor_boundary(start);
        let end = self.floor_boundary(end.max(start));
        let line_idx = match self.line_starts.binary_search(&start) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        let line_start = self.line_starts.get(line_idx).copied().unwrap_or(0);
        let line_end = self
            .line_starts
            .get(line_idx + 1)
            .map(|&s| s - 1)
            .unwrap_or(self.text.len());
        let line_text = self
            .text
            .get(line_start..line_end)
            .unwrap_or("")
            .trim_end_matches('\r');
        let column = self
            .text
            .get(line_start..start)
            .map(|s| s.chars().count())
            .unwrap_or(0)
            + 1;
        let span_end = end.min(line_start + line_text.len()).max(start);
        let length = self
            .text
            .get(start..span_end)
            .map(|s| s.chars().count())
            .unwrap_or(0)
            .max(1);
        let (source_line, caret_column) = quoted_line(line_text, column);
        Diagnostic {
            message,
            origin: self.origin.to_string(),
            line: line_idx + 1,
            column,
            help,
            length: length.min(MAX_QUOTED_LINE),
            source_line,
            caret_column,
        }
    }

    /// 1-based line of a byte offset.
    pub(crate) fn line_of(&self, offset: usize) -> usize {
        match self.line_starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i.max(1),
        }
    }
}

/// At most [`MAX_QUOTED_LINE`] characters of `line` around `column`, marked
/// with `…` where cut, and the column of the problem in the result.
fn quoted_line(line: &str, column: usize) -> (String, usize) {
    let chars = line.chars().count();
    if chars <= MAX_QUOTED_LINE {
        return (line.to_string(), column);
    }
    let first = column
        .saturating_sub(MAX_QUOTED_LINE / 2)
        .min(chars - MAX_QUOTED_LINE);
    let mut out = String::new();
    let mut caret = column - first;
    if first > 0 {
        out.push('…');
        caret += 1;
    }
    out.extend(line.chars().skip(first).take(MAX_QUOTED_LINE));
    if first + MAX_QUOTED_LINE < chars {
        out.push('…');
    }
    (out, caret)
}

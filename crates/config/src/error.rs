//! Errors and rustc-style diagnostics with `ORIGIN:LINE:COLUMN`.

use std::fmt;
use std::path::PathBuf;

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
    /// The text of line `line` (without its line ending), shown under the message.
    pub source_line: String,
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
            .take(self.column.saturating_sub(1))
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        write!(f, "{pad} | {prefix}{}", "^".repeat(self.length.max(1)))?;
        if let Some(help) = &self.help {
            write!(f, "\n{pad} = help: {help}")?;
        }
        Ok(())
    }
}

/// Every problem found in one configuration (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        if self.0.len() > 1 {
            write!(
                f,
                "\n\nerror: the configuration has {} errors",
                self.0.len()
            )?;
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
    /// The file was read but is not a valid configuration; every problem found is listed.
    #[error("{0}")]
    Invalid(Diagnostics),
}

impl ConfigError {
    /// The problems found, each with its position; empty for [`ConfigError::Io`].
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Io { .. } => &[],
            ConfigError::Invalid(d) => &d.0,
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
        Diagnostic {
            message,
            origin: self.origin.to_string(),
            line: line_idx + 1,
            column,
            help,
            length,
            source_line: line_text.to_string(),
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

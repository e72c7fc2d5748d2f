//! River's configuration: KDL in River's schema, parsed into the typed, validated
//! [`Config`]. Every error carries the file, line and column it comes from.
//!
//! Both KDL v2 (`offer-h2=#true`) and KDL v1, River's own syntax (`offer-h2=true`),
//! are accepted, as is a mix of the two (v1 keywords with one-line blocks).
//!
//! ```
//! let config = river_config::parse(
//!     r#"services { Api { listeners { "127.0.0.1:8080" }; connectors { "127.0.0.1:8000" } } }"#,
//!     "inline.kdl",
//! )
//! .unwrap();
//! assert_eq!(config.services[0].name, "Api");
//!
//! let err = river_config::parse("system { wrokers 2 }\nservices {}", "river.kdl").unwrap_err();
//! assert!(err.to_string().contains("river.kdl:1:10"));
//! ```

mod error;
mod limits;
mod model;
mod parse;
mod syntax;
#[cfg(test)]
mod tests;

use std::path::Path;

pub use error::{ConfigError, Diagnostic, Diagnostics};
pub use limits::{MAX_CONFIG_BYTES, MAX_DIAGNOSTICS, MAX_NESTING};
pub use model::*;

/// The configuration used when none is given: a welcome page on 127.0.0.1:8080.
pub const EMBEDDED_DEFAULT_KDL: &str = include_str!("default.kdl");

/// The origin shown in diagnostics about [`EMBEDDED_DEFAULT_KDL`].
pub const EMBEDDED_DEFAULT_ORIGIN: &str = "<embedded default config>";

/// Reads and parses the configuration file at `path`; diagnostics name the file
/// as given. A file over [`MAX_CONFIG_BYTES`] is refused unread.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let source = read_limited(path)?;
    parse(&source, &path.display().to_string())
}

/// The file's text, if it is at most [`MAX_CONFIG_BYTES`] long (checked again
/// while reading: the file may grow meanwhile, or be a FIFO or device).
fn read_limited(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    let io = |source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    };
    let too_large = |size| ConfigError::TooLarge {
        path: path.to_path_buf(),
        size,
        limit: MAX_CONFIG_BYTES,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    if size > MAX_CONFIG_BYTES {
        return Err(too_large(size));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|err| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 text (byte {})", err.utf8_error().valid_up_to()),
        ))
    })
}

/// Parses and validates a configuration; `origin` is the name shown in messages.
/// Every problem found is reported, each with `origin:line:column`.
pub fn parse(source: &str, origin: &str) -> Result<Config, ConfigError> {
    let text = error::SourceText::new(source, origin);
    let parsed = match limits::check_nesting(source).and_then(|()| syntax::parse_kdl(source)) {
        Ok(p) => p,
        Err(e) => {
            let d = text.diagnostic(e.start, e.end, e.message, e.help);
            return Err(ConfigError::Invalid(Diagnostics {
                list: vec![d],
                omitted: 0,
            }));
        }
    };
    let mut builder = parse::Builder::new(&text, &parsed);
    match builder.config(&parsed.doc) {
        Some(config) if builder.diags.is_empty() => Ok(config),
        _ => {
            let mut list = std::mem::take(&mut builder.diags);
            list.sort_by_key(|d| (d.line, d.column));
            Err(ConfigError::Invalid(Diagnostics {
                list,
                omitted: builder.omitted,
            }))
        }
    }
}

/// The parsed [`EMBEDDED_DEFAULT_KDL`].
pub fn embedded_default() -> Config {
    // The embedded text is a constant checked by a unit test.
    parse(EMBEDDED_DEFAULT_KDL, EMBEDDED_DEFAULT_ORIGIN)
        .expect("the embedded default configuration is valid")
}

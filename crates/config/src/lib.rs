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
mod model;
mod parse;
mod syntax;
#[cfg(test)]
mod tests;

use std::path::Path;

pub use error::{ConfigError, Diagnostic, Diagnostics};
pub use model::*;

/// The configuration used when none is given: a welcome page on 127.0.0.1:8080.
pub const EMBEDDED_DEFAULT_KDL: &str = include_str!("default.kdl");

/// The origin shown in diagnostics about [`EMBEDDED_DEFAULT_KDL`].
pub const EMBEDDED_DEFAULT_ORIGIN: &str = "<embedded default config>";

/// Reads and parses the configuration file at `path`; diagnostics name the file
/// as given.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let source = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&source, &path.display().to_string())
}

/// Parses and validates a configuration; `origin` is the name shown in messages.
/// Every problem found is reported, each with `origin:line:column`.
pub fn parse(source: &str, origin: &str) -> Result<Config, ConfigError> {
    let text = error::SourceText::new(source, origin);
    let parsed = match syntax::parse_kdl(source) {
        Ok(p) => p,
        Err(e) => {
            let d = text.diagnostic(e.start, e.end, e.message, e.help);
            return Err(ConfigError::Invalid(Diagnostics(vec![d])));
        }
    };
    let mut builder = parse::Builder::new(&text, &parsed);
    match builder.config(&parsed.doc) {
        Some(config) if builder.diags.is_empty() => Ok(config),
        _ => {
            let mut diags = std::mem::take(&mut builder.diags);
            diags.sort_by_key(|d| (d.line, d.column));
            Err(ConfigError::Invalid(Diagnostics(diags)))
        }
    }
}

/// The parsed [`EMBEDDED_DEFAULT_KDL`].
pub fn embedded_default() -> Config {
    // The embedded text is a constant checked by a unit test.
    parse(EMBEDDED_DEFAULT_KDL, EMBEDDED_DEFAULT_ORIGIN)
        .expect("the embedded default configuration is valid")
}

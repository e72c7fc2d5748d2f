//! River's configuration: KDL in River's schema, parsed into the typed, validated
//! [`Config`]. Every error carries the file, line and column it comes from.

mod model;

pub use model::*;

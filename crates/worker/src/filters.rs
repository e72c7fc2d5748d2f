//! `path-control` header filters, compiled once per generation.

use http::{HeaderName, HeaderValue};
use pingora_http::{RequestHeader, ResponseHeader};
use regex::Regex;
use river_config::HeaderFilter;

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("invalid regex `{pattern}`: {source}")]
    Regex {
        pattern: String,
        source: regex::Error,
    },
    #[error("invalid header `{key}: {value}`")]
    Header { key: String, value: String },
}

/// A header filter ready to run on every request.
#[derive(Debug, Clone)]
pub enum CompiledHeaderFilter {
    Remove(Regex),
    Upsert(HeaderName, HeaderValue),
}

/// The header operations the filters need, on requests and responses alike.
pub trait HeaderEdit {
    fn header_names(&self) -> Vec<HeaderName>;
    fn remove(&mut self, name: &HeaderName);
    fn upsert(&mut self, name: &HeaderName, value: &HeaderValue);
}

macro_rules! impl_header_edit {
    ($ty:ty) => {
        impl HeaderEdit for $ty {
            fn header_names(&self) -> Vec<HeaderName> {
                self.headers.keys().cloned().collect()
            }
            fn remove(&mut self, name: &HeaderName) {
                self.remove_header(name);
            }
            fn upsert(&mut self, name: &HeaderName, value: &HeaderValue) {
                // Infallible: both halves are already a valid HeaderName and HeaderValue.
                let _ = self.insert_header(name.clone(), value.clone());
            }
        }
    };
}
impl_header_edit!(RequestHeader);
impl_header_edit!(ResponseHeader);

impl CompiledHeaderFilter {
    pub fn compile(filter: &HeaderFilter) -> Result<Self, FilterError> {
        match filter {
            HeaderFilter::RemoveHeaderKeyRegex { pattern } => Regex::new(pattern)
                .map(CompiledHeaderFilter::Remove)
                .map_err(|source| FilterError::Regex {
                    pattern: pattern.clone(),
                    source,
                }),
            HeaderFilter::UpsertHeader { key, value } => {
                let bad = || FilterError::Header {
                    key: key.clone(),
                    value: value.clone(),
                };
                let name = HeaderName::from_bytes(key.as_bytes()).map_err(|_| bad())?;
                let value = HeaderValue::from_str(value).map_err(|_| bad())?;
                Ok(CompiledHeaderFilter::Upsert(name, value))
            }
        }
    }

    pub fn apply(&self, headers: &mut impl HeaderEdit) {
        match self {
            CompiledHeaderFilter::Remove(regex) => {
                for name in headers.header_names() {
                    if regex.is_match(name.as_str()) {
                        headers.remove(&name);
                    }
                }
            }
            CompiledHeaderFilter::Upsert(name, value) => headers.upsert(name, value),
        }
    }
}

pub fn compile_all(filters: &[HeaderFilter]) -> Result<Vec<CompiledHeaderFilter>, FilterError> {
    filters.iter().map(CompiledHeaderFilter::compile).collect()
}

pub fn apply_all(filters: &[CompiledHeaderFilter], headers: &mut impl HeaderEdit) {
    for filter in filters {
        filter.apply(headers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_by_regex_and_upsert() {
        let filters = compile_all(&[
            HeaderFilter::RemoveHeaderKeyRegex {
                pattern: ".*(secret|SECRET).*".into(),
            },
            HeaderFilter::UpsertHeader {
                key: "x-proxy-friend".into(),
                value: "river".into(),
            },
        ])
        .unwrap();
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-my-secret", "hunter2").unwrap();
        req.insert_header("x-proxy-friend", "someone-else").unwrap();
        req.insert_header("accept", "*/*").unwrap();
        apply_all(&filters, &mut req);
        assert!(req.headers.get("x-my-secret").is_none());
        assert_eq!(req.headers.get("accept").unwrap(), "*/*");
        let friends: Vec<_> = req.headers.get_all("x-proxy-friend").iter().collect();
        assert_eq!(friends, vec!["river"]);
    }

    #[test]
    fn response_headers_too() {
        let filters = compile_all(&[HeaderFilter::UpsertHeader {
            key: "x-with-love-from".into(),
            value: "river".into(),
        }])
        .unwrap();
        let mut resp = ResponseHeader::build(200, None).unwrap();
        apply_all(&filters, &mut resp);
        assert_eq!(resp.headers.get("x-with-love-from").unwrap(), "river");
    }

    #[test]
    fn bad_header_name_is_an_error_not_a_panic() {
        let err = CompiledHeaderFilter::compile(&HeaderFilter::UpsertHeader {
            key: "bad key".into(),
            value: "v".into(),
        });
        assert!(matches!(err, Err(FilterError::Header { .. })));
    }
}

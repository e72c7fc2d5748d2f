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

/// The filters of one direction arranged for the HTTP/1 forwarder, which
/// copies header lines instead of building a header map: which incoming names
/// to drop and which headers to append. The outcome is that of `apply_all`
/// run in order; a test holds the two together.
#[derive(Debug, Default)]
pub struct HeaderPlan {
    removes: Vec<Regex>,
    upserted: Vec<HeaderName>,
    appended: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderPlan {
    pub fn new(filters: &[CompiledHeaderFilter]) -> Self {
        let mut plan = HeaderPlan::default();
        for (i, filter) in filters.iter().enumerate() {
            match filter {
                CompiledHeaderFilter::Remove(regex) => plan.removes.push(regex.clone()),
                CompiledHeaderFilter::Upsert(name, value) => {
                    plan.upserted.push(name.clone());
                    // A later upsert of the same name replaces it; a later
                    // matching removal removes it.
                    let later = &filters[i + 1..];
                    let survives = !later.iter().any(|f| match f {
                        CompiledHeaderFilter::Remove(regex) => regex.is_match(name.as_str()),
                        CompiledHeaderFilter::Upsert(other, _) => other == name,
                    });
                    if survives {
                        plan.appended.push((name.clone(), value.clone()));
                    }
                }
            }
        }
        plan
    }

    /// Whether a header named `name` (any case) that is present before the
    /// filters run, from the client or added by the proxy, survives them.
    pub fn keeps(&self, name: &[u8]) -> bool {
        if self
            .upserted
            .iter()
            .any(|u| u.as_str().as_bytes().eq_ignore_ascii_case(name))
        {
            return false;
        }
        if self.removes.is_empty() {
            return true;
        }
        // The filters see names as `HeaderName` has them: lower case.
        let lower = String::from_utf8_lossy(name).to_ascii_lowercase();
        !self.removes.iter().any(|regex| regex.is_match(&lower))
    }

    /// Headers the filters add, to follow the incoming ones that survive.
    pub fn appended(&self) -> &[(HeaderName, HeaderValue)] {
        &self.appended
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

    /// Run `filters` both ways over the same headers and compare.
    fn plan_agrees_with_apply_all(filters: &[HeaderFilter], incoming: &[(&str, &str)]) {
        let compiled = compile_all(filters).unwrap();
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for (name, value) in incoming {
            req.append_header(name.to_string(), *value).unwrap();
        }
        apply_all(&compiled, &mut req);
        let mut expected: Vec<(String, String)> = req
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();

        let plan = HeaderPlan::new(&compiled);
        let mut planned: Vec<(String, String)> = incoming
            .iter()
            .filter(|(name, _)| plan.keeps(name.as_bytes()))
            .map(|(n, v)| (n.to_ascii_lowercase(), v.to_string()))
            .collect();
        planned.extend(
            plan.appended()
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned())),
        );
        expected.sort();
        planned.sort();
        assert_eq!(planned, expected, "filters {filters:?}");
    }

    #[test]
    fn the_plan_has_the_outcome_of_the_filters_in_order() {
        let remove = |p: &str| HeaderFilter::RemoveHeaderKeyRegex { pattern: p.into() };
        let upsert = |k: &str, v: &str| HeaderFilter::UpsertHeader {
            key: k.into(),
            value: v.into(),
        };
        let incoming = [
            ("X-Secret-Token", "1"),
            ("x-keep", "2"),
            ("X-Forwarded-For", "10.0.0.1"),
            ("x-dup", "a"),
            ("X-Dup", "b"),
        ];
        let cases = [
            vec![],
            vec![remove(".*secret.*")],
            vec![upsert("x-keep", "new")],
            vec![upsert("x-new", "1"), remove("x-new")],
            vec![remove("x-new"), upsert("x-new", "1")],
            vec![upsert("x-new", "1"), upsert("x-new", "2")],
            vec![upsert("x-dup", "c"), remove("^x-forwarded")],
            vec![remove("(?i)X-KEEP"), upsert("x-secret-token", "s")],
        ];
        for filters in cases {
            plan_agrees_with_apply_all(&filters, &incoming);
        }
    }
}

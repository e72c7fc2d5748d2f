//! The KDL document to the typed [`Config`], validating as it goes and collecting
//! every problem with its position.

mod filters;
mod rate_limit;
mod service;
mod shape;
mod system;
mod timeouts;
mod upstreams;
mod values;

use kdl::{KdlDocument, KdlNode};
use miette::SourceSpan;

use crate::error::{Diagnostic, SourceText};
use crate::model::*;
use crate::syntax::Parsed;

use shape::{args, name, one_of_help, prop, Shape};
pub(crate) use system::default_system;

/// Walks a parsed document, collecting diagnostics.
pub(crate) struct Builder<'a> {
    src: &'a SourceText<'a>,
    parsed: &'a Parsed,
    pub(crate) diags: Vec<Diagnostic>,
}

impl<'a> Builder<'a> {
    pub(crate) fn new(src: &'a SourceText<'a>, parsed: &'a Parsed) -> Self {
        Builder {
            src,
            parsed,
            diags: Vec::new(),
        }
    }

    pub(super) fn range(&self, span: SourceSpan) -> (usize, usize) {
        let start = self.parsed.original_offset(span.offset());
        let end = self
            .parsed
            .original_offset(span.offset().saturating_add(span.len()));
        (start, end.max(start))
    }

    pub(super) fn error(
        &mut self,
        span: SourceSpan,
        message: impl Into<String>,
        help: Option<String>,
    ) {
        let (start, end) = self.range(span);
        let d = self.src.diagnostic(start, end, message.into(), help);
        if !self.diags.contains(&d) {
            self.diags.push(d);
        }
    }

    pub(super) fn line_of(&self, span: SourceSpan) -> usize {
        let (start, _) = self.range(span);
        self.src.line_of(start)
    }

    pub(super) fn name_span(node: &KdlNode) -> SourceSpan {
        node.name().span()
    }

    pub(crate) fn config(&mut self, doc: &KdlDocument) -> Option<Config> {
        let mut system = None;
        let mut services = Vec::new();
        let mut services_seen = false;
        for (key, node) in self.unique_keys(doc, "the configuration", &["system", "services"]) {
            match key {
                "system" => system = Some(self.system(node)),
                _ => {
                    services_seen = true;
                    services = self.services(node);
                }
            }
        }
        if !services_seen {
            let span: SourceSpan = doc
                .nodes()
                .first()
                .map(|n| n.name().span())
                .unwrap_or_else(|| (0usize..0usize).into());
            self.error(
                span,
                "the configuration has no `services` block",
                Some("add `services { NAME { listeners { ... } connectors { ... } } }`".into()),
            );
        }
        let system = system.unwrap_or_else(default_system);
        if self.diags.is_empty() {
            Some(Config { system, services })
        } else {
            None
        }
    }
}

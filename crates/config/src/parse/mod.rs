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

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};

use kdl::{KdlDocument, KdlNode};
use miette::SourceSpan;

use crate::error::{Diagnostic, SourceText};
use crate::limits::MAX_DIAGNOSTICS;
use crate::model::*;
use crate::syntax::Parsed;

use shape::{args, name, one_of_help, prop, Shape};
pub(crate) use system::default_system;

/// Walks a parsed document, collecting diagnostics.
pub(crate) struct Builder<'a> {
    src: &'a SourceText<'a>,
    parsed: &'a Parsed,
    /// The first [`MAX_DIAGNOSTICS`] problems, in the order found.
    pub(crate) diags: Vec<Diagnostic>,
    /// Problems found beyond those.
    pub(crate) omitted: usize,
    /// Every problem reported so far (range and message hash): the same one
    /// reached twice is reported once, in constant time per problem.
    seen: HashSet<(usize, usize, u64)>,
    /// Where `system { metrics }` was given, to report a clash with a listener.
    metrics_span: Option<SourceSpan>,
}

impl<'a> Builder<'a> {
    pub(crate) fn new(src: &'a SourceText<'a>, parsed: &'a Parsed) -> Self {
        Builder {
            src,
            parsed,
            diags: Vec::new(),
            omitted: 0,
            seen: HashSet::new(),
            metrics_span: None,
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
        let message = message.into();
        let mut hasher = DefaultHasher::new();
        message.hash(&mut hasher);
        if !self.seen.insert((start, end, hasher.finish())) {
            return;
        }
        if self.diags.len() < MAX_DIAGNOSTICS {
            let d = self.src.diagnostic(start, end, message, help);
            self.diags.push(d);
        } else {
            self.omitted += 1;
        }
    }

    /// True once [`MAX_DIAGNOSTICS`] problems are kept: further ones are only
    /// counted, so their help text need not be computed.
    pub(super) fn full(&self) -> bool {
        self.diags.len() >= MAX_DIAGNOSTICS
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
        self.check_metrics_clash(&system, &services);
        if self.diags.is_empty() {
            Some(Config { system, services })
        } else {
            None
        }
    }

    /// The metrics listener is the master's own: no service may listen there.
    fn check_metrics_clash(&mut self, system: &System, services: &[Service]) {
        let (Some(metrics), Some(span)) = (&system.metrics, self.metrics_span) else {
            return;
        };
        let clash = services.iter().find_map(|service| {
            service
                .listeners
                .iter()
                .find(|l| service::listen_conflict(&l.address, metrics))
                .map(|l| (service.name.clone(), l.address.clone()))
        });
        if let Some((service, address)) = clash {
            self.error(
                span,
                format!("`metrics` address `{metrics}` clashes with listener `{address}`"),
                Some(format!(
                    "service `{service}` listens there; give the metrics listener its own port"
                )),
            );
        }
    }
}

//! Small responses the worker writes itself (errors, redirects, the welcome page).

use bytes::Bytes;
use pingora_core::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// Write a complete response with `body` (omitted for HEAD) and `headers`.
pub async fn respond(
    session: &mut Session,
    status: u16,
    content_type: &str,
    headers: &[(&'static str, String)],
    body: Bytes,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(3 + headers.len()))?;
    resp.insert_header("content-type", content_type)?;
    resp.insert_header("content-length", body.len().to_string())?;
    for (name, value) in headers {
        resp.insert_header(*name, value.as_str())?;
    }
    let head_only = session.req_header().method == http::Method::HEAD || body.is_empty();
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// A short plain-text error page: the status line's reason as the body.
pub async fn respond_status(session: &mut Session, status: u16) -> Result<()> {
    respond_status_with(session, status, &[]).await
}

pub async fn respond_status_with(
    session: &mut Session,
    status: u16,
    headers: &[(&'static str, String)],
) -> Result<()> {
    respond(
        session,
        status,
        "text/plain; charset=utf-8",
        headers,
        status_body(status),
    )
    .await
}

pub fn status_body(status: u16) -> Bytes {
    Bytes::from(format!("{status} {}\n", reason(status)))
}

/// The standard reason phrase of `status`, or `Error` for codes without one.
pub fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error")
}

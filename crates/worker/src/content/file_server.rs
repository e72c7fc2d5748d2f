//! `file-server { base-path "..." }`: static files under one directory.
//!
//! GET and HEAD only; `Last-Modified`/`If-Modified-Since`, single byte ranges,
//! `index.html` for directories (never a listing). Nothing outside base-path is
//! ever served: the request path is decoded segment by segment (an encoded
//! `/`, a `..`, a NUL are refused before touching the disk) and the resolved
//! file must still be under the canonical base-path once symlinks are followed.

use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use crate::content::respond::{respond_status, respond_status_with};

/// Bytes read from disk and sent per body chunk: large files are streamed.
const CHUNK: usize = 64 * 1024;

pub struct FileServer {
    /// Canonical, so a resolved path can be checked with `starts_with`.
    base: PathBuf,
    /// The base directory, opened when the generation starts: files are
    /// opened beneath it.
    base_dir: OwnedFd,
    /// The kernel resolves paths beneath `base_dir` (openat2).
    beneath: bool,
}

/// Stay under the base; no /proc magic links.
const RESOLVE: ResolveFlag = ResolveFlag::RESOLVE_BENEATH.union(ResolveFlag::RESOLVE_NO_MAGICLINKS);

/// The answer to a path that cannot be opened.
fn refusal(errno: Errno) -> Refusal {
    match errno {
        // EXDEV: the path leads out of the base.
        Errno::EACCES | Errno::EPERM | Errno::EXDEV => Refusal::Forbidden,
        _ => Refusal::NotFound,
    }
}

/// Why a request path cannot name a file under the base.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is not absolute")]
    NotAbsolute,
    #[error("`..` segment")]
    DotDot,
    #[error("encoded separator or NUL")]
    ForbiddenByte,
    #[error("bad percent-encoding")]
    BadEncoding,
}

/// The segments of a request path, each percent-decoded, none empty, `.` or `..`.
pub fn sanitize(raw_path: &str) -> Result<Vec<OsString>, PathError> {
    let rest = raw_path.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    let mut segments = Vec::new();
    // Split before decoding: `%2F` must not become a separator.
    for raw in rest.split('/') {
        let decoded = percent_decode(raw)?;
        if decoded.iter().any(|b| matches!(b, b'/' | b'\\' | 0)) {
            return Err(PathError::ForbiddenByte);
        }
        match decoded.as_slice() {
            b"" | b"." => {}
            b".." => return Err(PathError::DotDot),
            _ => segments.push(OsString::from_vec(decoded)),
        }
    }
    Ok(segments)
}

/// The canonical URL of a directory, rebuilt from the decoded segments so a
/// request like `//host` cannot turn the redirect into one to another site.
fn directory_location(segments: &[OsString]) -> String {
    use percent_encoding::{percent_encode, NON_ALPHANUMERIC};
    use std::os::unix::ffi::OsStrExt;
    const SEGMENT: &percent_encoding::AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    let mut location = String::from("/");
    for segment in segments {
        location.extend(percent_encode(segment.as_bytes(), SEGMENT));
        location.push('/');
    }
    location
}

fn percent_decode(raw: &str) -> Result<Vec<u8>, PathError> {
    let bytes = raw.as_bytes();
    // Reject malformed escapes rather than passing `%zz` through literally.
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEncoding)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return Err(PathError::BadEncoding);
            }
        }
    }
    Ok(percent_encoding::percent_decode(bytes).collect())
}

/// The outcome of a `Range` header against a file of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range (absent, malformed, several ranges): send it all.
    Full,
    /// Inclusive bounds.
    Partial {
        start: u64,
        end: u64,
    },
    Unsatisfiable,
}

/// RFC 9110 single byte ranges. Invalid headers are ignored (send the whole
/// file), as the RFC allows; multiple ranges are too (no multipart responses).
pub fn parse_range(header: &str, len: u64) -> RangeRequest {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    let number = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    if first.is_empty() {
        // Suffix: the last N bytes.
        return match number(last) {
            None => RangeRequest::Full,
            Some(0) => RangeRequest::Unsatisfiable,
            Some(_) if len == 0 => RangeRequest::Unsatisfiable,
            Some(n) => RangeRequest::Partial {
                start: len.saturating_sub(n),
                end: len - 1,
            },
        };
    }
    let Some(start) = number(first) else {
        return RangeRequest::Full;
    };
    let end = if last.is_empty() {
        None
    } else {
        match number(last) {
            Some(end) if end >= start => Some(end),
            _ => return RangeRequest::Full,
        }
    };
    if start >= len {
        return RangeRequest::Unsatisfiable;
    }
    RangeRequest::Partial {
        start,
        end: end.map_or(len - 1, |e| e.min(len - 1)),
    }
}

/// Content-Type by file extension.
pub fn content_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("txt") => "text/plain; charset=utf-8",
        Some("md") => "text/markdown; charset=utf-8",
        Some("csv") => "text/csv; charset=utf-8",
        Some("xml") => "application/xml",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("avif") => "image/avif",
        Some("ico") => "image/x-icon",
        Some("woff") => "font/woff",
        Some("woff2") => "font/woff2",
        Some("ttf") => "font/ttf",
        Some("otf") => "font/otf",
        Some("pdf") => "application/pdf",
        Some("wasm") => "application/wasm",
        Some("mp4") => "video/mp4",
        Some("webm") => "video/webm",
        Some("mp3") => "audio/mpeg",
        Some("ogg") => "audio/ogg",
        Some("wav") => "audio/wav",
        Some("zip") => "application/zip",
        Some("gz") => "application/gzip",
        Some("tar") => "application/x-tar",
        _ => "application/octet-stream",
    }
}

/// What a sanitized path resolves to.
enum Target {
    File(Box<Opened>),
    /// A directory requested without its trailing slash.
    AddSlash,
    Refused(Refusal),
}

struct Opened {
    file: std::fs::File,
    meta: std::fs::Metadata,
    /// Its path under the base, for its type and for messages.
    path: PathBuf,
}

/// Why a path is not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    NotFound,
    Forbidden,
}

/// Opened like nginx: non-blocking, so that a FIFO under the base cannot stall
/// the worker (it is then refused as not a regular file).
const OPEN_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_CLOEXEC)
    .union(OFlag::O_NONBLOCK)
    .union(OFlag::O_NOCTTY);

impl FileServer {
    pub fn new(base_path: &Path) -> std::io::Result<Self> {
        let base = std::fs::canonicalize(base_path)?;
        let base_dir = nix::fcntl::open(
            &base,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        // openat2 is Linux 5.6+ and may be filtered by a seccomp policy.
        let beneath = !matches!(
            openat2(
                &base_dir,
                ".",
                OpenHow::new().flags(OPEN_FLAGS).resolve(RESOLVE)
            ),
            Err(Errno::ENOSYS | Errno::EPERM)
        );
        if !beneath {
            tracing::warn!("openat2 unavailable: the file server resolves paths the slow way");
        }
        Ok(FileServer {
            base,
            base_dir,
            beneath,
        })
    }

    /// Answer the request; the caller has nothing more to do.
    pub async fn serve(&self, session: &mut Session) -> Result<()> {
        let method = session.req_header().method.clone();
        if method != http::Method::GET && method != http::Method::HEAD {
            return respond_status_with(session, 405, &[("allow", "GET, HEAD".into())]).await;
        }
        let raw_path = session.req_header().uri.path().to_owned();
        let segments = match sanitize(&raw_path) {
            Ok(segments) => segments,
            Err(err) => {
                tracing::debug!(path = %raw_path, %err, "refused path");
                return respond_status(session, 403).await;
            }
        };
        match self.resolve(&segments, raw_path.ends_with('/')) {
            Target::File(opened) => self.send_file(session, *opened).await,
            Target::AddSlash => {
                let location = directory_location(&segments);
                respond_status_with(session, 301, &[("location", location)]).await
            }
            Target::Refused(Refusal::NotFound) => respond_status(session, 404).await,
            Target::Refused(Refusal::Forbidden) => respond_status(session, 403).await,
        }
    }

    /// Open what `segments` name. Synchronous, as nginx's event loop is: on
    /// cached metadata these calls take microseconds, far less than a hand-off
    /// to a thread pool.
    fn resolve(&self, segments: &[OsString], trailing_slash: bool) -> Target {
        let relative: PathBuf = segments.iter().collect();
        let opened = match self.open_beneath(relative) {
            Ok(opened) => opened,
            Err(refusal) => return Target::Refused(refusal),
        };
        let opened = if opened.meta.is_dir() {
            if !trailing_slash {
                return Target::AddSlash;
            }
            match self.open_beneath(opened.path.join("index.html")) {
                Ok(index) => index,
                Err(refusal) => return Target::Refused(refusal),
            }
        } else {
            opened
        };
        // Sockets, FIFOs, devices, a directory named index.html: never read.
        if !opened.meta.is_file() {
            return Target::Refused(Refusal::NotFound);
        }
        Target::File(Box::new(opened))
    }

    /// Open `relative` if it lies under the base once symlinks are followed.
    ///
    /// openat2(RESOLVE_BENEATH) checks that in the kernel, in one call. It also
    /// refuses absolute symlinks, even ones that lead back inside the base:
    /// those (and kernels without openat2) take the slow path, which resolves
    /// the path in full and checks the result.
    fn open_beneath(&self, relative: PathBuf) -> Result<Opened, Refusal> {
        let path = if relative.as_os_str().is_empty() {
            Path::new(".")
        } else {
            &relative
        };
        let opened = if self.beneath {
            match openat2(
                &self.base_dir,
                path,
                OpenHow::new().flags(OPEN_FLAGS).resolve(RESOLVE),
            ) {
                Err(Errno::EXDEV) => self.open_canonical(path),
                other => other.map_err(refusal),
            }
        } else {
            self.open_canonical(path)
        }?;
        let file = std::fs::File::from(opened);
        match file.metadata() {
            Ok(meta) => Ok(Opened {
                file,
                meta,
                path: relative,
            }),
            Err(_) => Err(Refusal::NotFound),
        }
    }

    fn open_canonical(&self, relative: &Path) -> Result<OwnedFd, Refusal> {
        let real = std::fs::canonicalize(self.base.join(relative))
            .map_err(|err| refusal(Errno::from_raw(err.raw_os_error().unwrap_or(libc::ENOENT))))?;
        if !real.starts_with(&self.base) {
            return Err(Refusal::Forbidden);
        }
        nix::fcntl::open(&real, OPEN_FLAGS, Mode::empty()).map_err(refusal)
    }

    async fn send_file(&self, session: &mut Session, opened: Opened) -> Result<()> {
        let Opened {
            mut file,
            meta,
            path,
        } = opened;
        let path = path.as_path();
        let len = meta.len();
        let modified = meta.modified().ok();
        let last_modified = modified.map(httpdate::fmt_http_date);
        let header = |name: &str| {
            session
                .req_header()
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };

        if let (Some(modified), Some(since)) = (modified, header("if-modified-since")) {
            if not_modified_since(modified, &since) {
                let mut resp = ResponseHeader::build(304, Some(2))?;
                if let Some(lm) = &last_modified {
                    resp.insert_header("last-modified", lm.as_str())?;
                }
                return session.write_response_header(Box::new(resp), true).await;
            }
        }

        // A Range only applies while the file is the version the client has.
        let range_applies = match header("if-range") {
            None => true,
            Some(tag) => last_modified.as_deref() == Some(tag.trim()),
        };
        let range = match header("range") {
            Some(range) if range_applies => parse_range(&range, len),
            _ => RangeRequest::Full,
        };
        let (status, start, count) = match range {
            RangeRequest::Full => (200, 0, len),
            RangeRequest::Partial { start, end } => (206, start, end - start + 1),
            RangeRequest::Unsatisfiable => {
                return respond_status_with(
                    session,
                    416,
                    &[("content-range", format!("bytes */{len}"))],
                )
                .await;
            }
        };

        let mut resp = ResponseHeader::build(status, Some(6))?;
        resp.insert_header("content-type", content_type(path))?;
        resp.insert_header("content-length", count.to_string())?;
        resp.insert_header("accept-ranges", "bytes")?;
        if let Some(lm) = &last_modified {
            resp.insert_header("last-modified", lm.as_str())?;
        }
        if status == 206 {
            resp.insert_header(
                "content-range",
                format!("bytes {start}-{}/{len}", start + count - 1),
            )?;
        }
        let head_only = session.req_header().method == http::Method::HEAD || count == 0;
        session
            .write_response_header(Box::new(resp), head_only)
            .await?;
        if head_only {
            return Ok(());
        }
        if start > 0 {
            file.seek(SeekFrom::Start(start))
                .map_err(|e| read_error(path, e))?;
        }
        let mut remaining = count;
        while remaining > 0 {
            let want = usize::try_from(remaining).unwrap_or(CHUNK).min(CHUNK);
            let mut buf = BytesMut::zeroed(want);
            // Inline, as nginx reads without aio: from the page cache this is a copy.
            let read = file.read(&mut buf).map_err(|e| read_error(path, e))?;
            if read == 0 {
                // The file shrank after we announced its length: the response
                // cannot be completed, so the connection must not be reused.
                return Err(Error::explain(
                    ErrorType::ReadError,
                    format!("{} shrank while being sent", path.display()),
                ));
            }
            buf.truncate(read);
            remaining -= read as u64;
            session
                .write_response_body(Some(Bytes::from(buf)), remaining == 0)
                .await?;
        }
        Ok(())
    }
}

fn read_error(path: &Path, err: std::io::Error) -> Box<Error> {
    Error::explain(
        ErrorType::ReadError,
        format!("reading {}: {err}", path.display()),
    )
}

/// `If-Modified-Since` at second precision (HTTP dates have no more).
fn not_modified_since(modified: SystemTime, since: &str) -> bool {
    let Ok(since) = httpdate::parse_http_date(since.trim()) else {
        return false;
    };
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).ok();
    matches!((secs(modified), secs(since)), (Some(m), Some(s)) if m <= s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(path: &str) -> Result<Vec<String>, PathError> {
        sanitize(path).map(|v| {
            v.into_iter()
                .map(|s| s.to_string_lossy().into_owned())
                .collect()
        })
    }

    #[test]
    fn plain_paths_decode_into_segments() {
        assert_eq!(segs("/").unwrap(), Vec::<String>::new());
        assert_eq!(segs("/a/b.txt").unwrap(), vec!["a", "b.txt"]);
        assert_eq!(segs("/a//./b/").unwrap(), vec!["a", "b"]);
        assert_eq!(segs("/hello%20world.txt").unwrap(), vec!["hello world.txt"]);
    }

    #[test]
    fn traversal_is_refused_however_spelled() {
        assert_eq!(segs("/../etc/passwd"), Err(PathError::DotDot));
        assert_eq!(segs("/a/../../etc/passwd"), Err(PathError::DotDot));
        assert_eq!(segs("/%2e%2e/etc/passwd"), Err(PathError::DotDot));
        assert_eq!(segs("/%2E%2E/etc/passwd"), Err(PathError::DotDot));
        assert_eq!(segs("/.%2e/x"), Err(PathError::DotDot));
        assert_eq!(segs("/..%2fetc%2fpasswd"), Err(PathError::ForbiddenByte));
        assert_eq!(segs("/a%2F..%2F..%2Fetc"), Err(PathError::ForbiddenByte));
        assert_eq!(segs("/a%5c..%5cb"), Err(PathError::ForbiddenByte));
        assert_eq!(segs("/a%00.html"), Err(PathError::ForbiddenByte));
        assert_eq!(segs("/%zz"), Err(PathError::BadEncoding));
        assert_eq!(segs("/%2"), Err(PathError::BadEncoding));
        assert_eq!(segs("relative"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn directory_redirects_stay_on_this_site() {
        let location = |p: &str| directory_location(&sanitize(p).unwrap());
        assert_eq!(location("/sub"), "/sub/");
        assert_eq!(location("//evil.example"), "/evil.example/");
        assert_eq!(location("/a%20b/c"), "/a%20b/c/");
        assert_eq!(location("/"), "/");
    }

    #[test]
    fn ranges() {
        use RangeRequest::*;
        assert_eq!(parse_range("bytes=0-9", 100), Partial { start: 0, end: 9 });
        assert_eq!(
            parse_range("bytes=90-", 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=90-500", 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=-10", 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=-500", 100),
            Partial { start: 0, end: 99 }
        );
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=200-300", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=-5", 0), Unsatisfiable);
        // Ignored: malformed, other units, several ranges.
        assert_eq!(parse_range("bytes=9-0", 100), Full);
        assert_eq!(parse_range("bytes=a-b", 100), Full);
        assert_eq!(parse_range("bytes=-", 100), Full);
        assert_eq!(parse_range("bytes=+1-2", 100), Full);
        assert_eq!(parse_range("items=0-9", 100), Full);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Full);
    }

    #[test]
    fn content_types() {
        assert_eq!(
            content_type(Path::new("a/index.html")),
            "text/html; charset=utf-8"
        );
        assert_eq!(content_type(Path::new("x.PNG")), "image/png");
        assert_eq!(content_type(Path::new("noext")), "application/octet-stream");
    }

    #[test]
    fn if_modified_since_compares_seconds() {
        let t = UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_500);
        let same_second =
            httpdate::fmt_http_date(UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000));
        assert!(not_modified_since(t, &same_second));
        let earlier =
            httpdate::fmt_http_date(UNIX_EPOCH + std::time::Duration::from_secs(1_699_999_999));
        assert!(!not_modified_since(t, &earlier));
        assert!(!not_modified_since(t, "not a date"));
    }

    #[test]
    fn resolve_stays_inside_the_base() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.txt"), "secret").unwrap();
        let base = tempfile::tempdir().unwrap();
        std::fs::write(base.path().join("a.txt"), "a").unwrap();
        std::fs::create_dir(base.path().join("dir")).unwrap();
        std::fs::create_dir(base.path().join("empty")).unwrap();
        std::fs::write(base.path().join("dir/index.html"), "i").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret.txt"), base.path().join("link"))
            .unwrap();
        std::os::unix::fs::symlink(outside.path(), base.path().join("outdir")).unwrap();
        std::os::unix::fs::symlink(base.path().join("a.txt"), base.path().join("abs-in")).unwrap();
        // Both ways of resolving: the kernel's (openat2) and the fallback.
        for beneath in [true, false] {
            let mut server = FileServer::new(base.path()).unwrap();
            assert!(server.beneath, "openat2 is available on the test machine");
            server.beneath = beneath;
            let resolve = |p: &str| server.resolve(&sanitize(p).unwrap(), p.ends_with('/'));
            assert!(matches!(resolve("/a.txt"), Target::File(..)), "{beneath}");
            assert!(
                matches!(resolve("/abs-in"), Target::File(o) if o.path == Path::new("abs-in")),
                "{beneath}"
            );
            assert!(
                matches!(resolve("/dir/"), Target::File(o) if o.path.ends_with("dir/index.html")),
                "{beneath}"
            );
            assert!(matches!(resolve("/dir"), Target::AddSlash), "{beneath}");
            assert!(
                matches!(resolve("/empty/"), Target::Refused(Refusal::NotFound)),
                "{beneath}"
            );
            assert!(
                matches!(resolve("/missing"), Target::Refused(Refusal::NotFound)),
                "{beneath}"
            );
            assert!(
                matches!(resolve("/link"), Target::Refused(Refusal::Forbidden)),
                "{beneath}"
            );
            assert!(
                matches!(
                    resolve("/outdir/secret.txt"),
                    Target::Refused(Refusal::Forbidden)
                ),
                "{beneath}"
            );
        }
    }
}

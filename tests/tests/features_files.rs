//! Issue 4: the file server: content types, ranges, conditional requests,
//! directories, and nothing outside base-path.

use std::path::Path;

use river_tests::client::{self, Connection};
use river_tests::features::reload_ok;
use river_tests::river::River;
use river_tests::{free_port, local};

fn files_service(port: u16, base: &Path) -> String {
    format!(
        r#"    Files {{
        listeners {{
            "127.0.0.1:{port}"
        }}
        file-server {{
            base-path "{}"
        }}
    }}"#,
        base.display()
    )
}

/// 1 MiB + a bit, so it takes many chunks; bytes follow their offset.
fn big_content() -> Vec<u8> {
    (0..(1 << 20) + 4321)
        .map(|i: u32| (i % 251) as u8)
        .collect()
}

fn site() -> (tempfile::TempDir, tempfile::TempDir) {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), "TOP SECRET").unwrap();
    let base = tempfile::tempdir().unwrap();
    let b = base.path();
    std::fs::write(b.join("index.html"), "<h1>home</h1>").unwrap();
    std::fs::write(b.join("a.txt"), "plain text").unwrap();
    std::fs::write(b.join("style.css"), "body{}").unwrap();
    std::fs::write(b.join("big.bin"), big_content()).unwrap();
    std::fs::create_dir(b.join("sub")).unwrap();
    std::fs::write(b.join("sub/index.html"), "<h1>sub</h1>").unwrap();
    std::fs::create_dir(b.join("empty")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret.txt"), b.join("link.txt")).unwrap();
    std::os::unix::fs::symlink(outside.path(), b.join("outdir")).unwrap();
    // Links that stay inside the base are followed, absolute or relative.
    std::os::unix::fs::symlink(b.join("a.txt"), b.join("absolute-in.txt")).unwrap();
    std::os::unix::fs::symlink("sub", b.join("relative-in")).unwrap();
    // A link whose target leaves and re-enters the base is still inside.
    let around = format!("../{}/a.txt", b.file_name().unwrap().to_string_lossy());
    std::os::unix::fs::symlink(around, b.join("around.txt")).unwrap();
    (base, outside)
}

#[test]
fn files_ranges_conditionals_and_directories() {
    let (base, _outside) = site();
    let port = free_port();
    let _river = River::start("    workers 2", &files_service(port, base.path()));
    let addr = local(port);

    let a = client::get(addr, "/a.txt").unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.text(), "plain text");
    assert_eq!(a.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(a.header("content-length"), Some("10"));
    let last_modified = a.header("last-modified").expect("last-modified").to_owned();
    assert_eq!(
        client::get(addr, "/style.css")
            .unwrap()
            .header("content-type"),
        Some("text/css; charset=utf-8")
    );

    let home = client::get(addr, "/").unwrap();
    assert_eq!((home.status, home.text().as_str()), (200, "<h1>home</h1>"));
    assert_eq!(
        home.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(client::get(addr, "/sub/").unwrap().text(), "<h1>sub</h1>");
    let redirect = client::get(addr, "/sub").unwrap();
    assert_eq!(redirect.status, 301);
    assert_eq!(redirect.header("location"), Some("/sub/"));
    assert_eq!(
        client::get(addr, "/empty/").unwrap().status,
        404,
        "no listings"
    );
    assert_eq!(client::get(addr, "/missing.txt").unwrap().status, 404);

    // Keep-alive across all of these: responses are complete and well framed.
    let mut connection = Connection::open(addr).unwrap();
    let big = connection.get("/big.bin", &[]).unwrap();
    assert_eq!(big.status, 200);
    assert_eq!(big.body, big_content());
    assert_eq!(big.header("accept-ranges"), Some("bytes"));

    let part = connection
        .get("/big.bin", &[("range", "bytes=1000-1999")])
        .unwrap();
    assert_eq!(part.status, 206);
    assert_eq!(part.body, big_content()[1000..2000]);
    let total = big_content().len();
    assert_eq!(
        part.header("content-range").map(str::to_owned),
        Some(format!("bytes 1000-1999/{total}"))
    );
    let tail = connection
        .get("/big.bin", &[("range", "bytes=-10")])
        .unwrap();
    assert_eq!(tail.status, 206);
    assert_eq!(tail.body, big_content()[total - 10..]);
    let beyond = connection
        .get("/big.bin", &[("range", "bytes=99999999-")])
        .unwrap();
    assert_eq!(beyond.status, 416);
    assert_eq!(
        beyond.header("content-range").map(str::to_owned),
        Some(format!("bytes */{total}"))
    );

    let cached = connection
        .get("/a.txt", &[("if-modified-since", &last_modified)])
        .unwrap();
    assert_eq!(cached.status, 304);
    assert!(cached.body.is_empty());
    // HEAD: the headers of a GET, no body.
    {
        use std::io::{Read, Write};
        let mut raw = std::net::TcpStream::connect(addr).unwrap();
        raw.write_all(b"HEAD /a.txt HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut bytes = Vec::new();
        raw.read_to_end(&mut bytes).unwrap();
        let text = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 200"), "{text}");
        assert!(text.contains("content-length: 10\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "no body after HEAD: {text}");
    }
    let stale = connection
        .get(
            "/a.txt",
            &[("if-modified-since", "Thu, 01 Jan 1970 00:00:00 GMT")],
        )
        .unwrap();
    assert_eq!(stale.status, 200);
    assert_eq!(stale.text(), "plain text");
}

#[test]
fn nothing_outside_base_path_is_served() {
    let (base, _outside) = site();
    let port = free_port();
    let _river = River::start("    workers 1", &files_service(port, base.path()));
    let secret_name = _outside
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let attempts = [
        "/../secret.txt".to_owned(),
        format!("/../{secret_name}/secret.txt"),
        format!("/%2e%2e/{secret_name}/secret.txt"),
        format!("/%2E%2E%2F{secret_name}%2Fsecret.txt"),
        format!("/sub/..%2f..%2f{secret_name}%2fsecret.txt"),
        "/..%5c..%5cetc%5cpasswd".to_owned(),
        "/../../../../etc/passwd".to_owned(),
        "/link.txt".to_owned(),
        "/outdir/secret.txt".to_owned(),
        "/a.txt%00.html".to_owned(),
    ];
    for (path, body) in [
        ("/absolute-in.txt", "plain text"),
        ("/relative-in/index.html", "<h1>sub</h1>"),
        ("/relative-in/", "<h1>sub</h1>"),
        ("/around.txt", "plain text"),
    ] {
        let response = client::get(local(port), path).expect("a response");
        assert_eq!(response.status, 200, "{path}");
        assert_eq!(response.text(), body, "{path}");
    }
    // A FIFO is never opened for reading (it would block): 404.
    nix::unistd::mkfifo(&base.path().join("pipe"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    assert_eq!(client::get(local(port), "/pipe").unwrap().status, 404);
    for path in &attempts {
        let response = client::get(local(port), path).expect("a response");
        assert!(
            response.status == 403 || response.status == 404 || response.status == 400,
            "{path}: {}",
            response.status
        );
        let body = response.text();
        assert!(
            !body.contains("TOP SECRET") && !body.contains("root:"),
            "{path}: {body}"
        );
    }
}

#[test]
fn reload_changes_base_path() {
    let (base, _outside) = site();
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("a.txt"), "other text").unwrap();
    let port = free_port();
    let river = River::start("    workers 1", &files_service(port, base.path()));
    assert_eq!(
        client::get(local(port), "/a.txt").unwrap().text(),
        "plain text"
    );

    river.rewrite_config("    workers 1", &files_service(port, other.path()));
    reload_ok(&river);
    assert_eq!(
        client::get(local(port), "/a.txt").unwrap().text(),
        "other text"
    );
    assert_eq!(client::get(local(port), "/big.bin").unwrap().status, 404);
}

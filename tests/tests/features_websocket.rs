//! Issue 4: `Upgrade: websocket` through a proxy service is a tunnel.

use river_tests::features::{reload_ok, ws_round_trip, WsEcho};
use river_tests::river::River;
use river_tests::{free_port, local};

fn service(port: u16, upstream: std::net::SocketAddr, tag: &str) -> String {
    format!(
        r#"    Sockets {{
        listeners {{
            "127.0.0.1:{port}"
        }}
        connectors {{
            "{upstream}"
        }}
        path-control {{
            upstream-response {{
                filter kind="upsert-header" key="x-tag" value="{tag}"
            }}
        }}
    }}"#
    )
}

#[test]
fn websocket_echo_through_river_and_after_reload() {
    let first = WsEcho::start();
    let second = WsEcho::start();
    let port = free_port();
    let river = River::start("    workers 2", &service(port, first.addr, "one"));

    let messages = ["hello", "through", "river", &"x".repeat(100_000)];
    let echoes = ws_round_trip(local(port), "/chat", &messages).expect("websocket via river");
    assert_eq!(echoes, messages);

    river.rewrite_config("    workers 2", &service(port, second.addr, "two"));
    reload_ok(&river);
    let echoes = ws_round_trip(local(port), "/chat", &["again"]).expect("after reload");
    assert_eq!(echoes, ["again"]);
}

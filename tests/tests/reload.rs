//! Issue 3: hot reload swaps generations with zero failed requests, rolls back
//! on any failure, and bounds what draining generations cost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use river_tests::client;
use river_tests::load::Load;
use river_tests::river::{alive, children, listening_inodes, process_state, River};
use river_tests::upstream::Upstream;
use river_tests::{free_port, hold_request, local, tagged_proxy, wait_for, wait_gone};

fn reload(river: &River) -> String {
    let output = river.riverctl(&["reload"]);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "riverctl reload failed: {}{}\nlog:\n{}",
        stdout,
        String::from_utf8_lossy(&output.stderr),
        river.log()
    );
    stdout
}

fn x_gen(port: u16) -> String {
    client::get(local(port), "/")
        .expect("request")
        .header("x-gen")
        .unwrap_or_default()
        .to_owned()
}

fn status_json(river: &River) -> serde_json::Value {
    let output = river.riverctl(&["status", "--json"]);
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).expect("status --json is JSON")
}

fn generation_count(river: &River) -> usize {
    status_json(river)["generations"]
        .as_array()
        .map_or(0, Vec::len)
}

#[test]
fn reloads_under_keepalive_load_fail_no_request() {
    let upstream = Upstream::start("alpha");
    let port = free_port();
    let river = River::start(
        "    workers 2\n    threads-per-service 1",
        &tagged_proxy("S", &[port], upstream.addr, "0"),
    );

    let load = Load::keep_alive(local(port), 16, "/");
    let reloads = 30;
    for generation in 1..=reloads {
        river.rewrite_config(
            "    workers 2\n    threads-per-service 1",
            &tagged_proxy("S", &[port], upstream.addr, &generation.to_string()),
        );
        let answer = reload(&river);
        assert!(answer.starts_with("reloaded: generation "), "{answer}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The responses switch to the newest config.
    wait_for(
        "responses from the last generation",
        Duration::from_secs(5),
        || {
            let last = load.last_response()?;
            (last.header("x-gen") == Some(&*reloads.to_string())).then_some(())
        },
    );
    load.finish().assert_clean(1000);
}

#[test]
fn the_request_in_flight_completes_on_the_old_generation() {
    let upstream = Upstream::start("alpha");
    let port = free_port();
    let river = River::start(
        "    workers 1",
        &tagged_proxy("S", &[port], upstream.addr, "old"),
    );
    let old_workers = river.workers();

    let slow = std::thread::spawn(move || client::get(local(port), "/slow/1500"));
    wait_for("the slow request upstream", Duration::from_secs(5), || {
        (upstream.requests() == 1).then_some(())
    });
    river.rewrite_config(
        "    workers 1",
        &tagged_proxy("S", &[port], upstream.addr, "new"),
    );
    reload(&river);
    assert_eq!(x_gen(port), "new");

    let response = slow.join().unwrap().expect("in-flight request completes");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-gen"), Some("old"));
    wait_gone(
        "the old generation to exit",
        &old_workers,
        Duration::from_secs(5),
    );
}

#[test]
fn a_broken_config_is_refused_and_the_old_generation_keeps_serving() {
    let upstream = Upstream::start("alpha");
    let port = free_port();
    let river = River::start(
        "    workers 2",
        &tagged_proxy("S", &[port], upstream.addr, "good"),
    );
    let workers = river.workers();

    std::fs::write(&river.config_path, "system {\n    workers 2\n}\nservices {\n    S {\n        listeners {\n            \"127.0.0.1:notaport\"\n        }\n    }\n}\n").unwrap();
    let output = river.riverctl(&["reload"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:7:13", river.config_path.display())),
        "file:line:column in:\n{stderr}"
    );
    assert_eq!(river.workers(), workers, "old workers untouched");
    assert_eq!(x_gen(port), "good");

    // SIGHUP with the same broken file: logged, nothing changes.
    river.signal(Signal::SIGHUP);
    river.wait_log("reload rejected", 2);
    assert_eq!(river.workers(), workers);
    assert_eq!(x_gen(port), "good");
}

#[test]
fn a_worker_that_cannot_start_rolls_the_reload_back() {
    let upstream = Upstream::start("alpha");
    let port = free_port();
    let river = River::start(
        "    workers 2",
        &tagged_proxy("S", &[port], upstream.addr, "good"),
    );
    let workers = river.workers();
    // The fault hook reads this path from river's environment (see River::spawn).
    let hook = river.dir.path().join("fail-worker-start");
    std::fs::write(&hook, "").unwrap();

    river.rewrite_config(
        "    workers 2",
        &tagged_proxy("S", &[port], upstream.addr, "bad"),
    );
    let output = river.riverctl(&["reload"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("injected"), "{stderr}");
    // The failed generation's workers were SIGKILLed; reaping them may lag the reply.
    assert!(
        workers.iter().all(|pid| alive(*pid)),
        "old generation untouched"
    );
    wait_for(
        "the failed generation to be gone",
        Duration::from_secs(5),
        || (river.workers() == workers).then_some(()),
    );
    assert_eq!(x_gen(port), "good");

    std::fs::remove_file(&hook).unwrap();
    reload(&river);
    assert_eq!(x_gen(port), "bad");
}

#[test]
fn a_draining_worker_is_killed_at_its_deadline() {
    let upstream = Upstream::start("alpha");
    let port = free_port();
    let system = "    workers 1\n    drain-timeout-secs 2";
    let river = River::start(system, &tagged_proxy("S", &[port], upstream.addr, "old"));
    let old_workers = river.workers();

    let held = hold_request(&upstream, port);
    river.rewrite_config(system, &tagged_proxy("S", &[port], upstream.addr, "new"));
    let reloaded = Instant::now();
    reload(&river);
    assert_eq!(x_gen(port), "new");
    wait_gone(
        "the old worker to be killed",
        &old_workers,
        Duration::from_secs(4),
    );
    assert!(reloaded.elapsed() < Duration::from_secs(4));
    assert!(held.join().unwrap().is_err(), "the held request was cut");
    river.wait_log("drain-timeout-secs reached", 1);
    assert_eq!(x_gen(port), "new");
}

/// A River proxying to one of its own listeners holds, in its upstream pool,
/// an idle keep-alive connection to itself. Draining closes the pool, so the
/// old worker exits at once instead of waiting out that connection's 60 s idle
/// timeout (or its drain deadline).
#[test]
fn a_self_proxying_generation_drains_without_waiting_for_its_own_pool() {
    let upstream = Upstream::start("alpha");
    let (front, back) = (free_port(), free_port());
    let system = "    workers 1\n    drain-timeout-secs 120";
    let services = |generation: &str| {
        format!(
            "{}\n{}",
            tagged_proxy("Front", &[front], local(back), generation),
            tagged_proxy("Back", &[back], upstream.addr, generation)
        )
    };
    let river = River::start(system, &services("old"));
    let old_workers = river.workers();
    assert_eq!(x_gen(front), "old");

    river.rewrite_config(system, &services("new"));
    reload(&river);
    assert_eq!(x_gen(front), "new");
    wait_gone(
        "the old worker to drain",
        &old_workers,
        Duration::from_secs(20),
    );
}

#[test]
fn max_draining_generations_bounds_the_generations_alive() {
    let upstream = Upstream::start("alpha");
    let port = free_port();
    let system = "    workers 2\n    max-draining-generations 1";
    let river = River::start(system, &tagged_proxy("S", &[port], upstream.addr, "0"));
    // Workers never exceed workers × (1 + max-draining-generations), not even
    // for an instant while a new generation starts: sample all along.
    let bound = 2 * (1 + 1);
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (sampling, master) = (sampling.clone(), river.pid);
        std::thread::spawn(move || {
            let mut peak = 0;
            while sampling.load(Ordering::Acquire) {
                peak = peak.max(children(master).len());
                std::thread::sleep(Duration::from_millis(1));
            }
            peak
        })
    };
    let mut held = Vec::new();
    for generation in 1..=10 {
        // Every generation holds a request, so none drains by itself.
        held.push(hold_request(&upstream, port));
        river.rewrite_config(
            system,
            &tagged_proxy("S", &[port], upstream.addr, &generation.to_string()),
        );
        reload(&river);
        wait_for(
            "at most 2 generations alive",
            Duration::from_secs(3),
            || (generation_count(&river) <= 2).then_some(()),
        );
    }
    sampling.store(false, Ordering::Release);
    let peak = sampler.join().unwrap();
    assert!(
        peak <= bound,
        "{peak} workers alive at once, more than {bound}"
    );
    river.wait_log("max-draining-generations", 9);
    upstream.release_held();
    for request in held {
        let _ = request.join();
    }
}

#[test]
fn listeners_added_removed_and_kept_across_reloads() {
    let upstream = Upstream::start("alpha");
    let (kept, added) = (free_port(), free_port());
    let river = River::start(
        "    workers 1",
        &tagged_proxy("S", &[kept], upstream.addr, "1"),
    );
    let inode = listening_inodes(kept);
    assert_eq!(inode.len(), 1);

    river.rewrite_config(
        "    workers 1",
        &tagged_proxy("S", &[kept, added], upstream.addr, "2"),
    );
    reload(&river);
    assert_eq!(x_gen(added), "2", "the added listener serves");
    assert_eq!(
        listening_inodes(kept),
        inode,
        "same socket for the unchanged listener"
    );

    river.rewrite_config(
        "    workers 1",
        &tagged_proxy("S", &[kept], upstream.addr, "3"),
    );
    reload(&river);
    wait_for(
        "the removed listener to close",
        Duration::from_secs(5),
        || client::get(local(added), "/").is_err().then_some(()),
    );
    assert!(listening_inodes(added).is_empty());
    assert_eq!(listening_inodes(kept), inode, "still the same socket");
    assert_eq!(x_gen(kept), "3");
}

#[test]
fn a_burst_of_hups_is_coalesced() {
    let upstream = Upstream::start("alpha");
    let port = free_port();
    let river = River::start(
        "    workers 1",
        &tagged_proxy("S", &[port], upstream.addr, "1"),
    );
    for _ in 0..10 {
        river.signal(Signal::SIGHUP);
    }
    river.wait_log("generation serving", 2);
    std::thread::sleep(Duration::from_millis(1500));
    let started = river.log().matches("generation started").count();
    assert!(
        (2..=3).contains(&started),
        "10 HUPs started {} generations after the first",
        started - 1
    );
}

#[test]
fn status_shows_serving_and_draining_generations() {
    let upstream = Upstream::start("alpha");
    let port = free_port();
    let river = River::start(
        "    workers 2",
        &tagged_proxy("S", &[port], upstream.addr, "1"),
    );
    let held = hold_request(&upstream, port);
    reload(&river);

    let status = status_json(&river);
    assert_eq!(status["master_pid"], river.pid);
    let generations = status["generations"].as_array().unwrap();
    let states: Vec<&str> = generations
        .iter()
        .map(|g| g["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["draining", "serving"]);
    assert!(generations[0]["drain_deadline_secs"].as_u64().unwrap() <= 60);
    assert_eq!(generations[1]["workers"].as_array().unwrap().len(), 2);
    let rss = generations[1]["workers"][0]["rss_bytes"].as_u64().unwrap();
    assert!(rss > 1024 * 1024, "worker rss {rss}");

    let text = String::from_utf8_lossy(&river.riverctl(&["status"]).stdout).into_owned();
    assert!(
        text.contains(&format!("master pid {}", river.pid)),
        "{text}"
    );
    assert!(text.contains("generation 2 serving"), "{text}");
    assert!(text.contains("generation 1 draining"), "{text}");
    upstream.release_held();
    assert_eq!(held.join().unwrap().unwrap().status, 200);
}

#[test]
fn the_control_socket_refuses_other_users() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root to run riverctl as another user");
        return;
    }
    let upstream = Upstream::start("alpha");
    let port = free_port();
    let river = River::start(
        "    workers 1",
        &tagged_proxy("S", &[port], upstream.addr, "1"),
    );
    let socket = river.control_socket();
    let mode = |path: &std::path::Path, mode| {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap()
    };
    // The socket file is 0600; open it up so that SO_PEERCRED is what refuses.
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );
    mode(river.dir.path(), 0o755);
    mode(&socket, 0o666);
    let output = std::process::Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(river_tests::river::binary("riverctl"))
        .arg("-s")
        .arg(&socket)
        .arg("reload")
        .output()
        .expect("setpriv");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("permission denied: uid 65534"), "{stderr}");
    assert_eq!(
        river.log().matches("generation started").count(),
        1,
        "no reload happened"
    );
}

#[test]
fn two_hundred_reloads_leak_nothing() {
    let upstream = Upstream::start("alpha");
    let port = free_port();
    let river = River::start(
        "    workers 1",
        &tagged_proxy("S", &[port], upstream.addr, "0"),
    );
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", river.pid))
            .unwrap()
            .count()
    };
    let before = fds();
    for _ in 0..200 {
        river.signal(Signal::SIGHUP);
        std::thread::sleep(Duration::from_millis(15));
    }
    let output = river.riverctl(&["reload"]);
    assert!(output.status.success());
    wait_for(
        "draining generations to finish",
        Duration::from_secs(10),
        || (generation_count(&river) == 1 && children(river.pid).len() == 1).then_some(()),
    );
    assert_eq!(fds(), before, "master fds before and after");
    let zombies: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            process_state(*pid) == Some('Z') && river_tests::river::parent(*pid) == Some(river.pid)
        })
        .collect();
    assert!(zombies.is_empty(), "zombies: {zombies:?}");
    assert_eq!(client::get(local(port), "/").unwrap().status, 200);
}

use std::os::unix::fs::PermissionsExt;

#[test]
fn garbage_on_the_control_socket_gets_an_error_and_harms_nothing() {
    use std::io::{Read, Write};
    let upstream = Upstream::start("alpha");
    let port = free_port();
    let river = River::start(
        "    workers 1",
        &tagged_proxy("S", &[port], upstream.addr, "1"),
    );
    let cases: [&[u8]; 3] = [
        b"\x00\x00\x00\x05\x00\x01\x00\x00hello", // right header, payload not JSON
        b"\xff\xff\xff\xff\x00\x01\x00\x00",      // oversized length
        b"GET / HTTP/1.1\r\nhost: x\r\n\r\n",     // not our protocol at all
    ];
    for garbage in cases {
        let mut stream = std::os::unix::net::UnixStream::connect(river.control_socket()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(garbage).unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer);
        assert!(text.contains("Error"), "answer to {garbage:?}: {text}");
    }
    // The master is fine and still obeys well-formed requests.
    assert!(alive(river.pid));
    reload(&river);
    assert_eq!(x_gen(port), "1");
}

#[test]
fn draining_workers_over_the_memory_limit_are_killed() {
    let upstream = Upstream::start("alpha");
    let port = free_port();
    // 1 MiB: any real worker is above it, so a draining generation is over the limit.
    let system = "    workers 1\n    draining-memory-limit-mb 1";
    let river = River::start(system, &tagged_proxy("S", &[port], upstream.addr, "old"));
    let old_workers = river.workers();
    let held = hold_request(&upstream, port);

    river.rewrite_config(system, &tagged_proxy("S", &[port], upstream.addr, "new"));
    reload(&river);
    wait_gone(
        "the draining worker to be killed",
        &old_workers,
        Duration::from_secs(5),
    );
    river.wait_log("draining-memory-limit-mb exceeded", 1);
    assert!(held.join().unwrap().is_err(), "the held request was cut");
    // The serving generation is never killed for memory.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(children(river.pid).len(), 1);
    assert_eq!(x_gen(port), "new");
}

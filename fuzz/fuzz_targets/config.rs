//! Any text through the KDL config loader: an error value or a config,
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(err) = river_config::parse(&text, "fuzz.kdl") {
        // Rendering the diagnostics must not panic either.
        let _ = err.to_string();
    }
});

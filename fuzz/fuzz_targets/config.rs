//! A configuration file: TOML text read over the defaults, then validated, as `Config::from_file`
//! and `main` do. Neither step may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = toml::from_str::<Config>(text) {
        if config.validate().is_ok() {
            // What validation promises the server.
            assert!(config.ping_interval > 0 && config.pong_timeout > 0);
            assert!(config.client_queue_max_bytes >= config.max_message_size);
            assert!(config.max_message_size >= 128);
        }
    }
});

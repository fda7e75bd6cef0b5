//! A client frame: whatever arrives in a WebSocket text message goes through `decode_frame`, and
//! each decoded command through `request` (the session's dispatch). Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::protocol::decode_frame;

fuzz_target!(|data: &[u8]| {
    // A text message is UTF-8 (the WebSocket layer refuses anything else).
    let Ok(frame) = std::str::from_utf8(data) else {
        return;
    };
    for command in decode_frame(frame).flatten() {
        let id = command.id;
        let request = command.request();
        let _ = (id, request.name(), request.channel());
    }
});

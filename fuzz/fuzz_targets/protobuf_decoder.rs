//! A Protobuf client frame: whatever arrives in a binary WebSocket message of the
//! `centrifuge-protobuf` subprotocol (or an http_stream body) goes through the Protobuf
//! `decode_frame`, and each decoded command through `request` (the session's dispatch). Nothing
//! may panic, and a bad message ends the frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::protocol::protobuf::decode_frame;

fuzz_target!(|data: &[u8]| {
    let mut failed = false;
    for command in decode_frame(bytes::Bytes::copy_from_slice(data)) {
        assert!(!failed, "a command decoded after an error");
        match command {
            Ok(command) => {
                let id = command.id;
                let request = command.request();
                let _ = (id, request.name(), request.channel());
            }
            Err(error) => {
                failed = true;
                let _ = error.to_string();
            }
        }
    }
});

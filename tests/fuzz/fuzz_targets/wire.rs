//! `/cod/compute/1` messages from a peer: the framed stream and the enveloped CBOR inside it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(request) = cod::fuzzing::wire_request(data) {
        // What decodes must encode again and decode to the same message (the outbox stores and resends it).
        let again = cod::transport::protocol::encode(&request).expect("a decoded request encodes");
        assert_eq!(cod::fuzzing::wire_request(&again), Some(request));
    }
    if let Some(response) = cod::fuzzing::wire_response(data) {
        let again =
            cod::transport::protocol::encode(&response).expect("a decoded response encodes");
        assert_eq!(cod::fuzzing::wire_response(&again), Some(response));
    }
    cod::fuzzing::wire_request_frame(data);
    cod::fuzzing::wire_response_frame(data);
});

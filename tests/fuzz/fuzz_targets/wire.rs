//! `/cod/compute/1` and `/cod/link/1` messages from a peer: the framed stream and the enveloped CBOR inside it.
#![no_main]

use cod::transport::protocol::encode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // What decodes must encode, and that encoding must decode and encode to itself: the outbox stores and
    // resends decoded messages. (Not `decode(encode(m)) == m`: encoding drops what carries no meaning, such
    // as the Params of a publisher without a Type, and NaN is never equal to itself.)
    if let Some(request) = cod::fuzzing::wire_request(data) {
        let once = encode(&request).expect("a decoded request encodes");
        let back = cod::fuzzing::wire_request(&once).expect("an encoded request decodes");
        assert_eq!(encode(&back).expect("encodes"), once);
    }
    if let Some(response) = cod::fuzzing::wire_response(data) {
        let once = encode(&response).expect("a decoded response encodes");
        let back = cod::fuzzing::wire_response(&once).expect("an encoded response decodes");
        assert_eq!(encode(&back).expect("encodes"), once);
    }
    cod::fuzzing::wire_request_frame(data);
    cod::fuzzing::wire_response_frame(data);
    cod::fuzzing::wire_link_frame(data);
});

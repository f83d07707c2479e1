//! CAR v1 streams (`cod ipfs import --car`, trustless gateway responses).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cod::fuzzing::car(data);
});

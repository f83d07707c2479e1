//! `inline` inputs: data: URLs, decoded and written (or their gzip tarball unpacked) into the scratch dir.
#![no_main]

use std::sync::LazyLock;

use cod_fuzz::Sandbox;
use libfuzzer_sys::fuzz_target;

static SANDBOX: LazyLock<Sandbox> = LazyLock::new(|| Sandbox::new("data_url"));

fuzz_target!(|data: &[u8]| {
    let Ok(url) = std::str::from_utf8(data) else {
        return;
    };
    let sandbox = &*SANDBOX;
    cod::fuzzing::data_url(url, sandbox.root(), 4 * 1024 * 1024);
    sandbox.check_and_reset();
});

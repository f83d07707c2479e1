//! OCI layer tars unpacked into a rootfs: besides not crashing, nothing may land outside it.
#![no_main]

use std::sync::LazyLock;

use cod::oci::unpack::{IdShift, UnpackLimits, apply_layer};
use cod_fuzz::Sandbox;
use libfuzzer_sys::fuzz_target;

static SANDBOX: LazyLock<Sandbox> = LazyLock::new(|| Sandbox::new("layer"));

fuzz_target!(|data: &[u8]| {
    let sandbox = &*SANDBOX;
    let shift = IdShift {
        base: 0,
        size: 65536,
    };
    let limits = UnpackLimits {
        max_bytes: 4 * 1024 * 1024,
        max_entries: 2000,
    };
    let _ = apply_layer(data, sandbox.root(), shift, limits);
    sandbox.check_and_reset();
});

//! Job specs as `cod job run` reads them (JSON or YAML) and as the API decodes a submission body.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        cod::fuzzing::job_spec_text(text);
    }
    cod::fuzzing::api_job_body("application/json", data);
    cod::fuzzing::api_job_body("application/yaml", data);
});

//! `edge.toml` from any text: a typed error, or a configuration that validates or says why
//! not.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) =
        oodmon_edge::config::EdgeConfig::parse(text, std::path::Path::new("edge.toml"))
    {
        let _ = config.validate();
        let _ = config.source_options();
    }
});

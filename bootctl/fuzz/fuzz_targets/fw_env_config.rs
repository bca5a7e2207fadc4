//! fw_env.config text: parsing never panics and what it accepts is consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rota_bootctl::env::fw_config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = fw_config::parse(text) {
        assert!(matches!(config.copies.len(), 1 | 2));
        for copy in &config.copies {
            assert!(copy.env_size >= 8 && copy.env_size <= fw_config::MAX_ENV_SIZE);
            assert!(copy.line >= 1);
        }
        assert!(config
            .copies
            .iter()
            .all(|c| c.env_size == config.env_size()));
    }
});

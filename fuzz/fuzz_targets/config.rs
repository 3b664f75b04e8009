//! `Config::parse` on arbitrary UTF-8 text, with the built-in services' registry.
//!
//! The TLS pair is loaded at parse time, so development certificates are written once
//! into a temporary directory and the config is parsed as `DIR/lib_chan.conf`: the seeds'
//! `cert = "server.pem"` and `key = "server.key"` point at them, and inputs can get past
//! the `[tls]` table into services and limits. Properties: never panics; errors name the
//! file and, when they have one, a line within the text; a config that parses passes
//! `validate` (the same checks without line numbers).
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use lib_chan_server::devcert::DevCerts;
use lib_chan_server::{Config, Registry};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    registry: Registry,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("temp dir");
    let hosts = ["localhost".to_string(), "127.0.0.1".to_string()];
    DevCerts::generate(&hosts)
        .expect("certificates")
        .write(dir.path())
        .expect("write certificates");
    Fixture {
        path: dir.path().join("lib_chan.conf"),
        _dir: dir,
        registry: lib_chan_services::registry(),
    }
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let f = &*FIXTURE;
    match Config::parse(text, &f.path, &f.registry) {
        Ok(config) => {
            if let Err(e) = config.validate(&f.registry) {
                panic!("parsed, but validate refuses it: {e}");
            }
        }
        Err(e) => {
            assert_eq!(e.file.as_path(), Path::new(&f.path));
            if let Some(line) = e.line {
                assert!(
                    line >= 1 && line <= text.matches('\n').count() + 1,
                    "line {line}"
                );
            }
            let _ = e.to_string();
        }
    }
});

//! `lib_chan completions SHELL` and `lib_chan man DIR`: the bash script loads in `bash -n`
//! and completes the subcommands and their options; zsh and fish scripts name them too;
//! every subcommand (the console's verbs included) gets a man page that `man -l` renders
//! with its options; a bad shell name is refused.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_lib_chan");

const SUBCOMMANDS: &[&str] = &[
    "serve",
    "gen-cert",
    "hash-password",
    "keygen",
    "check-config",
    "rpc",
    "cast",
    "call",
    "ping",
    "bench",
    "shell",
    "import-conf",
    "admin",
    "completions",
    "man",
];

/// man's output without its overstrikes (`X\bX` for bold, `_\bX` for underline).
fn plain(bytes: &[u8]) -> String {
    let mut out: Vec<char> = Vec::new();
    for c in String::from_utf8_lossy(bytes).chars() {
        if c == '\u{8}' {
            out.pop();
        } else {
            out.push(c);
        }
    }
    out.into_iter().collect()
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("lib_chan runs")
}

#[test]
fn completion_scripts_load_and_name_every_subcommand() {
    let bash = run(&["completions", "bash"]);
    assert!(bash.status.success());
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("lib_chan.bash");
    std::fs::write(&script, &bash.stdout).unwrap();
    let check = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // Loaded for real, it completes `lib_chan sh` to shell and `lib_chan shell --re` to
    // --reconnect.
    let complete = |words: &str, cword: usize| {
        let probe = format!(
            "source {}; COMP_WORDS=({words}); COMP_CWORD={cword}; COMP_LINE='{words}'; COMP_POINT=${{#COMP_LINE}}; _lib_chan lib_chan \"${{COMP_WORDS[$COMP_CWORD]}}\" \"${{COMP_WORDS[$COMP_CWORD-1]}}\"; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display()
        );
        let out = Command::new("bash").arg("-c").arg(probe).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let words = complete("lib_chan sh", 1);
    assert!(words.lines().any(|w| w == "shell"), "{words}");
    let words = complete("lib_chan shell --re", 2);
    assert!(words.lines().any(|w| w == "--reconnect"), "{words}");
    for shell in ["zsh", "fish"] {
        let out = run(&["completions", shell]);
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        for sub in SUBCOMMANDS {
            assert!(text.contains(sub), "{shell} script lacks {sub}");
        }
    }
    let bad = run(&["completions", "cmd.exe"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid value"));
}

#[test]
fn every_subcommand_has_a_man_page_that_renders() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["man", dir.path().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut pages = vec!["lib_chan.1".to_string()];
    pages.extend(SUBCOMMANDS.iter().map(|s| format!("lib_chan-{s}.1")));
    pages.extend(
        [
            "info",
            "connections",
            "kick",
            "kick-user",
            "denials",
            "penalties",
            "unblock",
            "reload",
            "stats",
            "top",
        ]
        .iter()
        .map(|v| format!("lib_chan-admin-{v}.1")),
    );
    for page in &pages {
        let path = dir.path().join(page);
        assert!(path.exists(), "no {page}");
        let shown = Command::new("man")
            .arg("-l")
            .arg(&path)
            .env("MANWIDTH", "100")
            .env("MAN_KEEP_FORMATTING", "0")
            .output()
            .expect("man(1) runs (Debian's man-db, as scripts/test.sh installs)");
        assert!(shown.status.success(), "man -l {page}");
        let text = plain(&shown.stdout);
        assert!(text.contains("NAME"), "{page}: {text}");
    }
    // The shell's page documents its options.
    let shell = Command::new("man")
        .arg("-l")
        .arg(dir.path().join("lib_chan-shell.1"))
        .output()
        .unwrap();
    let text = plain(&shell.stdout);
    assert!(text.contains("--reconnect"), "{text}");
    assert!(String::from_utf8_lossy(&out.stdout).lines().count() >= pages.len());
}

//! `lib_chan completions SHELL` and `lib_chan man DIR`: shell completion scripts
//! (clap_complete) and man pages (clap_mangen) generated from the clap definitions, so
//! that they never drift from `--help`.

use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;

/// Prints the completion script for `shell` on standard output.
pub(crate) fn completions<C: CommandFactory>(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut cmd = C::command();
    clap_complete::generate(shell, &mut cmd, "lib_chan", &mut std::io::stdout());
    Ok(())
}

/// Writes `lib_chan.1` and one page per subcommand (`lib_chan-serve.1`, ...) into `dir`,
/// creating it, and prints their paths.
pub(crate) fn man<C: CommandFactory>(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cmd = C::command();
    clap_mangen::generate_to(cmd, dir)
        .with_context(|| format!("cannot write man pages in {}", dir.display()))?;
    let mut pages: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "1"))
        .collect();
    pages.sort();
    for p in pages {
        println!("{}", p.display());
    }
    Ok(())
}

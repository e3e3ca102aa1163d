//! Shell completions and the man page, generated from the same clap definitions the binary
//! parses, so they cannot drift from the real commands.

use super::{Cli, exit};
use clap::CommandFactory;

#[derive(clap::Args, Debug)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    pub shell: clap_complete::Shell,
}

pub fn completions(args: &CompletionsArgs) -> anyhow::Result<u8> {
    let mut cmd = Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "leap-edge", &mut std::io::stdout());
    Ok(exit::OK)
}

/// The man page (roff) on stdout: `leap-edge man > leap-edge.1`.
pub fn man() -> anyhow::Result<u8> {
    let page = clap_mangen::Man::new(Cli::command());
    let mut out = Vec::new();
    page.render(&mut out)?;
    // Subcommands get their own sections, so `man leap-edge` documents every flag.
    for sub in Cli::command().get_subcommands() {
        if sub.is_hide_set() {
            continue;
        }
        let about = sub.get_about().map(ToString::to_string).unwrap_or_default();
        let head = format!(
            ".SH \"LEAP-EDGE {}\"\n{}\n",
            sub.get_name().to_uppercase(),
            about.replace('\n', " ")
        );
        out.extend_from_slice(head.as_bytes());
        clap_mangen::Man::new(sub.clone()).render_options_section(&mut out)?;
    }
    std::io::Write::write_all(&mut std::io::stdout(), &out)?;
    Ok(exit::OK)
}

//! Shell completions and the man page, generated from the same clap definitions the binary
//! parses, so they cannot drift from the real commands.

use super::{Cli, exit};
use clap::CommandFactory;

#[derive(clap::Args, Debug)]
pub(crate) struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    pub(crate) shell: clap_complete::Shell,
}

pub(crate) fn completions(args: &CompletionsArgs) -> anyhow::Result<u8> {
    let mut cmd = Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "leap-edge", &mut std::io::stdout());
    Ok(exit::OK)
}

/// The man page (roff) on stdout: `leap-edge man > leap-edge.1`. One page documents every
/// subcommand (nested ones too) in its own section, so it refers to no other page.
pub(crate) fn man() -> anyhow::Result<u8> {
    let mut out = Vec::new();
    std::io::Write::write_all(&mut std::io::stdout(), &page(&mut out)?)?;
    Ok(exit::OK)
}

pub(crate) fn page(out: &mut Vec<u8>) -> anyhow::Result<Vec<u8>> {
    let cmd = Cli::command();
    let top = clap_mangen::Man::new(cmd.clone());
    top.render_title(out)?;
    top.render_name_section(out)?;
    top.render_synopsis_section(out)?;
    top.render_description_section(out)?;
    top.render_options_section(out)?;
    for sub in cmd.get_subcommands() {
        section(out, sub, "leap-edge")?;
    }
    out.extend_from_slice(TAIL.as_bytes());
    Ok(std::mem::take(out))
}

fn section(out: &mut Vec<u8>, sub: &clap::Command, parent: &str) -> anyhow::Result<()> {
    if sub.is_hide_set() {
        return Ok(());
    }
    let path = format!("{parent} {}", sub.get_name());
    let about = sub
        .get_long_about()
        .or(sub.get_about())
        .map(ToString::to_string)
        .unwrap_or_default();
    let head = format!(".SH \"{}\"\n{}\n", path.to_uppercase(), roff_text(&about));
    out.extend_from_slice(head.as_bytes());
    let named = sub.clone().bin_name(path.clone());
    let page = clap_mangen::Man::new(named);
    let mut body = Vec::new();
    page.render_synopsis_section(&mut body)?;
    page.render_options_section(&mut body)?;
    // Inside the subcommand's own section: subsections, not new top-level sections.
    let body = String::from_utf8_lossy(&body)
        .replace(".SH SYNOPSIS", ".SS Synopsis")
        .replace(".SH OPTIONS", ".SS Options");
    out.extend_from_slice(body.as_bytes());
    for nested in sub.get_subcommands() {
        section(out, nested, &path)?;
    }
    Ok(())
}

/// Plain text safe in roff: a leading dot or quote would be read as a request.
fn roff_text(s: &str) -> String {
    s.replace('\\', "\\\\")
        .lines()
        .map(|l| {
            if l.starts_with('.') || l.starts_with('\'') {
                format!("\\&{l}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

const TAIL: &str = r#".SH "EXIT STATUS"
.TP
0
Success.
.TP
1
A run-time failure: the database cannot be read, the daemon cannot be reached or refused
the command, a device did not answer; \fBrelay status\fR: the relay reports UNHEALTHY.
.TP
2
Bad usage: an unknown option or subcommand, or an argument such as a meter id that is not
configured (for events, schedule and override; history and intervals only note it, since a
removed meter's records stay in the database).
.TP
3
\fBstatus\fR and \fBrelay status\fR only: the daemon (or the relay) is not running (as LSB status scripts use).
.TP
78
A start that a restart cannot fix (EX_CONFIG): the configuration is invalid (the message names the file, line and key), the database is newer than this binary or read-only, or another daemon already runs on the database. Other commands exit 78 on a configuration they cannot use; \fBstatus\fR, \fBoverride\fR and \fBrelease\fR need only a file that parses and print its other problems as warnings.
.SH FILES
.TP
/etc/leap-edge/config.toml
The configuration (see \fBconfig check\fR). \fBdevices probe\fR and \fBsim\fR run without it.
.TP
/var/lib/leap-edge/leap-edge.db
The SQLite database (storage.path): notifications, timeslots, the audit log.
.TP
/var/lib/leap-edge/leap-edge.db.lock
Held by the running daemon; a second daemon on the same database refuses to start. It
records how the daemon was last run, which \fBstatus\fR shows when the daemon is down.
.TP
/run/leap-edge/admin.sock
The admin socket (admin.socket) through which the CLI talks to the daemon.
.TP
/usr/share/leap-edge/devices/*.toml
Device profiles (devices_dir).
.TP
/etc/leap-edge-relay/relay.toml
The fleet relay's own configuration (\fBrelay check\fR), on the partner's public host; its
outbox is /var/lib/leap-edge-relay/relay.db (storage.path).
.SH ENVIRONMENT
.TP
LEAP_EDGE_CONFIG
The configuration file when \fB--config\fR is not given.
.TP
LEAP_EDGE_LOG
The daemon's log filter (tracing syntax, e.g. info,leap_edge=debug).
.TP
TZ
With \fB--local\fR, the time zone times are shown in.
.TP
NO_COLOR
When set, problems are not shown in red on a terminal.
"#;

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// Every command and every option a technician can type has help text.
    #[test]
    fn every_command_and_option_has_help() {
        fn walk(cmd: &clap::Command, path: &str, empty: &mut Vec<String>, seen: &mut usize) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                *seen += 1;
                if arg
                    .get_help()
                    .is_none_or(|h| h.to_string().trim().is_empty())
                {
                    empty.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                let p = format!("{path} {}", sub.get_name());
                if sub
                    .get_about()
                    .is_none_or(|h| h.to_string().trim().is_empty())
                {
                    empty.push(p.clone());
                }
                walk(sub, &p, empty, seen);
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        let (mut empty, mut seen) = (Vec::new(), 0);
        walk(&cmd, "leap-edge", &mut empty, &mut seen);
        assert!(seen > 40, "the walk saw only {seen} options");
        assert!(empty.is_empty(), "no help text: {empty:#?}");
    }

    #[test]
    fn man_page_refers_to_no_missing_page_and_has_the_sections() {
        let page = String::from_utf8(super::page(&mut Vec::new()).unwrap()).unwrap();
        // The relay's folders are paths, not pages.
        let page = page.replace("/leap-edge-relay/", "/");
        assert!(!page.contains("leap-edge-"), "refers to a separate page");
        for s in [
            "EXIT STATUS",
            "FILES",
            "ENVIRONMENT",
            "LEAP-EDGE OVERRIDE DISCHARGE",
            "LEAP-EDGE DEVICES PROBE",
            "LEAP-EDGE CONFIG CHECK",
        ] {
            assert!(page.contains(s), "man page lacks {s}");
        }
    }
}

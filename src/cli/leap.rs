//! `leap-edge leap …`: the partner-side steps with Leap — register the webhook, prove the
//! public path end to end with Leap's integration test, run the polling backstop once.

use super::{duration, exit};
use crate::config::Config;
use crate::leap::LeapClient;
use crate::leap::types::{Level, Webhook, WebhookHeader};
use std::io::IsTerminal;

#[derive(clap::Subcommand, Debug)]
pub(crate) enum LeapCommand {
    /// The webhook Leap posts dispatches to (one meter and one group URL per Leap account).
    #[command(subcommand)]
    Webhook(WebhookCommand),
    /// Ask Leap to send a test notification to the registered URL; show Leap's answer next
    /// to what the daemon stored (the end-to-end check of DNS, TLS, relay, tunnel, daemon).
    Test(TestArgs),
    /// Run the polling backstop once (through the daemon when it runs) and print what it found.
    Poll(PollArgs),
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum WebhookCommand {
    /// Show the URL and header names Leap has registered.
    Show(WebhookArgs),
    /// Register `--url` with [auth] header and the first of [auth] keys.
    Set(WebhookArgs),
    /// Remove the registration (Leap then sends nothing to this account's URL).
    Delete(WebhookArgs),
}

#[derive(clap::Args, Debug)]
pub(crate) struct WebhookArgs {
    /// The group webhook instead of the meter webhook.
    #[arg(long)]
    pub(crate) group: bool,
    /// The public URL Leap should post to (set only), e.g. https://edge.example.com/leap/dispatch.
    #[arg(long)]
    pub(crate) url: Option<String>,
    /// Replace or delete without asking (for scripts).
    #[arg(long)]
    pub(crate) yes: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(clap::Args, Debug)]
pub(crate) struct TestArgs {
    /// A group test notification instead of a meter one.
    #[arg(long)]
    pub(crate) group: bool,
    /// The test timeslot starts this long from now.
    #[arg(long = "in", value_parser = duration::parse, default_value = "2m")]
    pub(crate) start_in: std::time::Duration,
    /// energy_kw of the test timeslot (Leap's range: 0.01–100000).
    #[arg(long, default_value_t = 5.0, value_parser = super::overrides::leap_kw)]
    pub(crate) kw: f64,
    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(clap::Args, Debug)]
pub(crate) struct PollArgs {
    /// Search this many days back (default leap.poll_days_back); ahead stays as configured,
    /// shortened so the window is at most 31 days.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=31))]
    pub(crate) days: Option<u32>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(super) fn run(config: &Config, cmd: &LeapCommand) -> anyhow::Result<u8> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cmd {
        LeapCommand::Poll(a) => rt.block_on(super::leap_poll::run(config, a)),
        LeapCommand::Test(a) => rt.block_on(super::leap_test::run(config, a)),
        LeapCommand::Webhook(w) => {
            let client = match LeapClient::from_config(&config.leap) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("leap-edge: {e}");
                    return Ok(exit::CONFIG);
                }
            };
            rt.block_on(webhook(config, &client, w))
        }
    }
}

fn level(group: bool) -> Level {
    if group { Level::Group } else { Level::Meter }
}

async fn webhook(config: &Config, client: &LeapClient, cmd: &WebhookCommand) -> anyhow::Result<u8> {
    match cmd {
        WebhookCommand::Show(a) => {
            let current = client.get_webhook(level(a.group)).await?;
            print_hook(config, a, current.as_ref());
            Ok(exit::OK)
        }
        WebhookCommand::Set(a) => set(config, client, a).await,
        WebhookCommand::Delete(a) => {
            let lv = level(a.group);
            let Some(current) = client.get_webhook(lv).await? else {
                note(
                    a,
                    &format!("no {} webhook is registered; nothing to delete", lv.path()),
                );
                return Ok(exit::OK);
            };
            print_hook(config, a, Some(&current));
            if !confirm(
                a,
                &format!(
                    "Delete the {} webhook for the whole Leap account?",
                    lv.path()
                ),
            )? {
                return Ok(exit::USAGE);
            }
            client.delete_webhook(lv).await?;
            note(
                a,
                &format!(
                    "deleted: Leap no longer posts {} dispatches to {}",
                    lv.path(),
                    super::text::clean(&current.url)
                ),
            );
            Ok(exit::OK)
        }
    }
}

/// The `--url` to register, or the usage error that was said.
fn checked_url(config: &Config, a: &WebhookArgs) -> Option<String> {
    let Some(url) = a.url.clone() else {
        eprintln!(
            "leap-edge: give the public URL Leap should post to: --url https://…{}",
            config.server.path
        );
        return None;
    };
    if !url.starts_with("https://") {
        eprintln!("leap-edge: --url {url}: Leap posts over HTTPS only; give an https:// URL");
        return None;
    }
    warn_if_path_differs(config, &url);
    Some(url)
}

/// The first `[auth]` key, unless there is none or it is the example's placeholder:
/// registered, that is what anyone who has read this repository could post with, a
/// `cancelled: true` for a live event included (cancellation is final).
fn key_to_register(config: &Config) -> Option<&crate::secret::Secret> {
    let Some(key) = config.auth.keys.first() else {
        eprintln!("leap-edge: [auth] keys is empty: add the key Leap should send first");
        return None;
    };
    if crate::config::is_placeholder(key.expose()) {
        eprintln!(
            "leap-edge: auth.keys[0] is the example's placeholder (it says change-me), printed in every copy of leap-edge: generate one with `openssl rand -hex 32`, put it first in [auth] keys, `leap-edge reload`, then register"
        );
        return None;
    }
    Some(key)
}

async fn set(config: &Config, client: &LeapClient, a: &WebhookArgs) -> anyhow::Result<u8> {
    let Some(url) = checked_url(config, a) else {
        return Ok(exit::USAGE);
    };
    let Some(key) = key_to_register(config) else {
        return Ok(exit::CONFIG);
    };
    let lv = level(a.group);
    let wanted = Webhook {
        url,
        // Leap delivers header names in lower case; register them so.
        headers: vec![WebhookHeader {
            name: config.auth.header.to_ascii_lowercase(),
            value: key.expose().to_string(),
        }],
    };
    let current = client.get_webhook(lv).await?;
    if current.as_ref() == Some(&wanted) {
        note(
            a,
            &format!(
                "the {} webhook is already {} with this key; nothing to change",
                lv.path(),
                wanted.url
            ),
        );
        return Ok(exit::OK);
    }
    if let Some(c) = &current {
        note(
            a,
            &format!(
                "Leap keeps ONE {} webhook per account; currently:",
                lv.path()
            ),
        );
        if a.json {
            note(a, &format!("  {}", c.url));
        } else {
            print_hook(config, a, Some(c));
        }
        if !confirm(a, &format!("Replace it with {}?", wanted.url))? {
            return Ok(exit::USAGE);
        }
    }
    let stored = client.put_webhook(lv, &wanted).await?;
    note(a, "registered:");
    print_hook(config, a, Some(&stored));
    note(
        a,
        &format!(
            "next: `leap-edge leap test{}` proves the whole public path",
            if a.group { " --group" } else { "" }
        ),
    );
    Ok(exit::OK)
}

/// A line for the person at the terminal: on stdout, or on stderr with `--json`, so the JSON
/// on stdout stays one document.
fn note(a: &WebhookArgs, text: &str) {
    if a.json {
        eprintln!("{text}");
    } else {
        crate::outln!("{text}");
    }
}

/// Leap posts to the URL as given: a path other than `[server] path` is right only when a
/// relay or proxy in front maps it; otherwise every post gets a 404.
fn warn_if_path_differs(config: &Config, url: &str) {
    let Ok(uri) = url.parse::<hyper::Uri>() else {
        return;
    };
    if uri.path() != config.server.path {
        eprintln!(
            "leap-edge: warning: --url {url}: its path {} is not [server] path ({}); fine behind a relay or proxy that maps it, otherwise Leap's posts get a 404",
            uri.path(),
            config.server.path
        );
    }
}

/// Ask on the terminal; without one, refuse unless `--yes`.
fn confirm(a: &WebhookArgs, question: &str) -> anyhow::Result<bool> {
    if a.yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        eprintln!(
            "leap-edge: refusing without a terminal: {question} Pass --yes to confirm in a script."
        );
        return Ok(false);
    }
    eprint!("{question} [y/N] ");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let yes = matches!(line.trim(), "y" | "Y" | "yes" | "YES");
    if !yes {
        eprintln!("leap-edge: nothing changed");
    }
    Ok(yes)
}

fn print_hook(config: &Config, a: &WebhookArgs, hook: Option<&Webhook>) {
    let Some(h) = hook else {
        if a.json {
            crate::outln!("null");
        } else {
            crate::outln!("no webhook registered");
        }
        return;
    };
    // Values are credentials: say only whether each matches one of ours.
    let headers: Vec<serde_json::Value> = h
        .headers
        .iter()
        .map(|x| {
            let ours = config.auth.keys.iter().position(|k| k.expose() == x.value);
            let name_ok = x.name.eq_ignore_ascii_case(&config.auth.header);
            serde_json::json!({"name": x.name, "value": "MASKED",
                "matches": ours.filter(|_| name_ok).map(|i| format!("auth.keys[{i}]"))})
        })
        .collect();
    if a.json {
        crate::outln!("{}", serde_json::json!({"url": h.url, "headers": headers}));
        return;
    }
    crate::outln!("  url:    {}", super::text::clean(&h.url));
    for x in &headers {
        let m = x["matches"]
            .as_str()
            .map_or("does NOT match [auth]".to_string(), |k| {
                format!("matches {k}")
            });
        crate::outln!(
            "  header: {} (value masked; {m})",
            x["name"].as_str().unwrap_or_default()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The development key passes `config check` on plain loopback HTTP, but is never what
    /// `leap webhook set` registers with Leap.
    #[test]
    fn the_example_key_is_never_registered() {
        let with = |key: &str| {
            let text =
                format!("[server]\nlisten = \"127.0.0.1:8443\"\n[auth]\nkeys = [\"{key}\"]\n");
            Config::parse_str(&text, std::path::Path::new("c.toml")).unwrap()
        };
        let dev = with("dev-key-change-me-0123456789abcdef");
        assert!(dev.check().is_ok());
        assert!(key_to_register(&dev).is_none());
        let real = with("0123456789abcdef0123456789abcdef");
        assert!(key_to_register(&real).is_some());
    }
}

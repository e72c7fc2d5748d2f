//! Man pages and shell completions for `river` and `riverctl`, generated from
//! the clap definitions the binaries really parse, so the docs cannot drift
//! from the CLI. Used by packaging/build-deb.sh through the `river-docgen` binary.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Command, CommandFactory};
use clap_complete::Shell;

/// The man section: both programs are for the administrator (river runs as
/// root; riverctl talks to a root-owned socket), like nginx(8).
const SECTION: &str = "8";

/// What was written, relative paths under the output directory.
#[derive(Debug, Default)]
pub struct Generated {
    pub man_pages: Vec<PathBuf>,
    pub completions: Vec<PathBuf>,
}

/// `river`'s command, without the hidden `worker` subcommand: it is internal
/// (started by the master only) and must not be documented or completed.
pub fn river_command() -> Command {
    strip_hidden_subcommands(river::cli::Cli::command())
}

pub fn riverctl_command() -> Command {
    strip_hidden_subcommands(riverctl::Cli::command())
}

/// clap keeps hidden subcommands in the synopsis (`[COMMAND]`) and in some
/// completion scripts; rebuilding the command without them is the reliable way
/// to keep them out of every generated file.
fn strip_hidden_subcommands(cmd: Command) -> Command {
    let visible: Vec<Command> = cmd
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set())
        .cloned()
        .collect();
    if visible.len() == cmd.get_subcommands().count() {
        return cmd;
    }
    // clap cannot remove a subcommand in place: rebuild the command around its
    // arguments and visible subcommands.
    let mut rebuilt = copy_header(&cmd, Command::new(leak(cmd.get_name().to_string())));
    for arg in cmd.get_arguments() {
        rebuilt = rebuilt.arg(arg.clone());
    }
    if visible.is_empty() {
        rebuilt
    } else {
        rebuilt.subcommands(visible)
    }
}

/// clap (without its `string` feature, which would change clap's build for the
/// whole workspace) takes only `&'static str` names; this process is short-lived.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn copy_header(from: &Command, mut to: Command) -> Command {
    if let Some(version) = from.get_version() {
        to = to.version(leak(version.to_string()));
    }
    if let Some(about) = from.get_about() {
        to = to.about(about.clone());
    }
    if let Some(about) = from.get_long_about() {
        to = to.long_about(about.clone());
    }
    if let Some(bin) = from.get_bin_name() {
        to = to.bin_name(leak(bin.to_string()));
    }
    to
}

/// Write `man/*.8` and `completions/{bash,zsh,fish}/*` under `out`.
pub fn generate(out: &Path) -> anyhow::Result<Generated> {
    let mut generated = Generated::default();
    let man_dir = out.join("man");
    fs::create_dir_all(&man_dir).with_context(|| format!("cannot create {}", man_dir.display()))?;

    let river = river_command();
    let riverctl = riverctl_command();

    let river_see_also = "riverctl(8), nginx(8)";
    write_man(
        &man_dir,
        "river",
        &river,
        &metrics_section(),
        river_see_also,
        &mut generated,
    )?;

    let subcommands: Vec<String> = riverctl
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set())
        .map(|sub| format!("riverctl-{}(8)", sub.get_name()))
        .collect();
    let riverctl_see_also = format!("river(8), {}", subcommands.join(", "));
    write_man(
        &man_dir,
        "riverctl",
        &riverctl,
        "",
        &riverctl_see_also,
        &mut generated,
    )?;

    // One page per riverctl subcommand, as git does: their options are not in riverctl.8.
    for sub in riverctl.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        let name = format!("riverctl-{}", sub.get_name());
        let mut page = sub
            .clone()
            .name(leak(name.clone()))
            .bin_name(leak(format!("riverctl {}", sub.get_name())));
        // Global options (-c, -s) are declared on riverctl; repeat them here.
        for arg in riverctl.get_arguments().filter(|arg| arg.is_global_set()) {
            page = page.arg(arg.clone());
        }
        if let Some(version) = riverctl.get_version() {
            page = page.version(leak(version.to_string()));
        }
        write_man(
            &man_dir,
            &name,
            &page,
            "",
            "riverctl(8), river(8)",
            &mut generated,
        )?;
    }

    for (shell, dir) in [
        (Shell::Bash, "bash"),
        (Shell::Zsh, "zsh"),
        (Shell::Fish, "fish"),
    ] {
        let dir = out.join("completions").join(dir);
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for (name, cmd) in [("river", &river), ("riverctl", &riverctl)] {
            let mut cmd = cmd.clone();
            let path = clap_complete::generate_to(shell, &mut cmd, name, &dir)
                .with_context(|| format!("cannot write {shell} completion for {name}"))?;
            generated.completions.push(path);
        }
    }
    Ok(generated)
}

/// Escape text for roff: backslashes and hyphens (which would be hyphenated
/// or taken for minus signs), and a leading dot or quote.
fn roff(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    match escaped.chars().next() {
        Some('.') | Some('\'') => format!("\\&{escaped}"),
        _ => escaped,
    }
}

/// river(8)'s METRICS section, from the list the master exports
/// (`river::metrics::names::ALL`), so the page cannot miss a metric.
pub fn metrics_section() -> String {
    let mut out = String::from(".SH METRICS\n");
    out += &roff(
        "With system { metrics \"127.0.0.1:9091\" } (or an absolute Unix socket path) the master \
answers GET /metrics in the Prometheus text format (text/plain; version=0.0.4); any other path \
gets 404. The master serves it, not a worker, so it answers while generations start, drain or \
crash. Counters never go backwards: a worker's counts are folded into the master's totals when \
it exits. A Grafana dashboard is installed as /usr/share/river/river-dashboard.json.",
    );
    out += "\n";
    for family in river::metrics::names::ALL {
        let labels = if family.labels.is_empty() {
            String::new()
        } else {
            format!("{{{}}}", family.labels.join(","))
        };
        out += &format!(
            ".TP\n\\fB{}\\fR{} ({})\n{}\n",
            roff(family.name),
            roff(&labels),
            family.kind.as_str(),
            roff(family.help)
        );
    }
    out
}

fn write_man(
    dir: &Path,
    name: &str,
    cmd: &Command,
    sections: &str,
    see_also: &str,
    generated: &mut Generated,
) -> anyhow::Result<()> {
    // `help` has no page of its own; every page documents -h already.
    let mut cmd = cmd
        .clone()
        .name(leak(name.to_string()))
        .disable_help_subcommand(true);
    cmd.build();
    let man = clap_mangen::Man::new(cmd)
        .title(name.to_uppercase())
        .section(SECTION)
        .manual("System Administration")
        // Without a date clap_mangen leaves an empty .TH field, which shifts
        // the source into the date slot.
        .date(man_date());
    let mut buffer = Vec::new();
    man.render(&mut buffer)
        .with_context(|| format!("cannot render {name}.{SECTION}"))?;
    buffer.extend_from_slice(sections.as_bytes());
    // clap_mangen has no SEE ALSO section of its own.
    buffer.extend_from_slice(format!(".SH \"SEE ALSO\"\n{see_also}\n").as_bytes());
    let path = dir.join(format!("{name}.{SECTION}"));
    fs::write(&path, buffer).with_context(|| format!("cannot write {}", path.display()))?;
    generated.man_pages.push(path);
    Ok(())
}

/// The pages' date: $SOURCE_DATE_EPOCH (reproducible builds; build-deb.sh sets
/// it from the last commit), else now. YYYY-MM-DD.
fn man_date() -> String {
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|value| value.trim().parse::<i64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64)
        });
    let (y, m, d) = river_ipc::civil::civil_from_days(secs.div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(dir: &Path, name: &str) -> String {
        fs::read_to_string(dir.join("man").join(name)).expect("generated page is readable")
    }

    #[test]
    fn man_pages_document_the_real_cli() {
        let dir = tempfile::tempdir().expect("temp dir");
        let generated = generate(dir.path()).expect("generate");
        assert!(generated.man_pages.len() >= 2);

        let river = page(dir.path(), "river.8");
        assert!(
            river.contains(r"\-\-validate"),
            "river.8 lacks --validate:\n{river}"
        );
        assert!(
            river.contains(".TH RIVER 8"),
            "river.8 is not in section 8:\n{river}"
        );
        // The internal worker subcommand must stay undocumented.
        assert!(
            !river.contains("worker\n") && !river.contains("ipc"),
            "river.8 shows the hidden worker subcommand:\n{river}"
        );
        assert!(
            !river.contains("SUBCOMMANDS"),
            "river.8 lists subcommands:\n{river}"
        );

        for family in river::metrics::names::ALL {
            assert!(
                river.contains(&format!(r"\fB{}\fR", family.name.replace('-', r"\-"))),
                "river.8 lacks {}",
                family.name
            );
        }
        assert!(river.contains(".SH METRICS\n"), "{river}");
        assert!(river.contains(r"text/plain; version=0.0.4"), "{river}");

        let riverctl = page(dir.path(), "riverctl.8");
        assert!(
            riverctl.contains("reload"),
            "riverctl.8 lacks reload:\n{riverctl}"
        );
        assert!(page(dir.path(), "riverctl-reload.8").contains(r"\-\-no\-wait"));
    }

    #[test]
    fn completions_omit_the_worker_subcommand() {
        let dir = tempfile::tempdir().expect("temp dir");
        let generated = generate(dir.path()).expect("generate");
        assert_eq!(generated.completions.len(), 6);
        for path in &generated.completions {
            let text = fs::read_to_string(path).expect("completion is readable");
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if name.contains("riverctl") {
                assert!(text.contains("reload"), "{name} lacks reload");
            } else {
                assert!(
                    !text.contains("ipc-fd")
                        && !text.contains("ipc_fd")
                        && !text.contains("\"worker\""),
                    "{name} completes the hidden worker subcommand"
                );
                assert!(text.contains("validate"), "{name} lacks --validate");
            }
        }
    }
}

//! Man pages and shell completions, generated from the clap definitions in
//! cli.rs so that they always say what the parser accepts. One page per
//! subcommand in section 8, as runc's (runc.8, runc-create.8): nexcage is
//! run by root on a node.

use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

/// Man section of every page.
pub const SECTION: &str = "8";

/// The parser as the pages and completions describe it.
pub fn command() -> clap::Command {
    let mut cmd = Cli::command()
        .version(env!("CARGO_PKG_VERSION"))
        .disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// The parser without its hidden subcommands (monitor, init, generate),
/// which completion scripts would otherwise offer: the generators list
/// every subcommand.
fn visible() -> clap::Command {
    let full = Cli::command();
    let shown: Vec<clap::Command> = full
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .cloned()
        .collect();
    // Rebuilt without the hidden ones: clap has no way to remove one.
    let mut cmd = clap::Command::new("nexcage")
        .args(full.get_arguments().cloned())
        .disable_version_flag(true)
        .disable_help_subcommand(true)
        .subcommands(shown);
    cmd.build();
    cmd
}

/// File name and roff text of every page: `nexcage.8` and one per visible
/// subcommand, nested ones included (`nexcage-template-list.8`).
pub fn man_pages() -> std::io::Result<Vec<(String, Vec<u8>)>> {
    fn walk(cmd: clap::Command, out: &mut Vec<(String, Vec<u8>)>) -> std::io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            walk(sub.clone(), out)?;
        }
        let man = clap_mangen::Man::new(cmd)
            .section(SECTION)
            .manual("nexcage")
            .source(format!("nexcage {}", env!("CARGO_PKG_VERSION")));
        let mut text = Vec::new();
        man.render(&mut text)?;
        out.push((man.get_filename(), text));
        Ok(())
    }
    let mut out = Vec::new();
    walk(command(), &mut out)?;
    out.sort();
    Ok(out)
}

/// File name and script of each shell's completion, named as the shells'
/// vendor directories expect (bash: nexcage, zsh: _nexcage, fish:
/// nexcage.fish).
pub fn completions() -> Vec<(String, Vec<u8>)> {
    [
        (Shell::Bash, "nexcage"),
        (Shell::Zsh, "_nexcage"),
        (Shell::Fish, "nexcage.fish"),
    ]
    .into_iter()
    .map(|(shell, file)| {
        let mut cmd = visible();
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut cmd, "nexcage", &mut text);
        (file.to_string(), text)
    })
    .collect()
}

/// Write `files` into `dir`, made if missing.
pub fn write(dir: &Path, files: &[(String, Vec<u8>)]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, text) in files {
        std::fs::write(dir.join(name), text)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(pages: &[(String, Vec<u8>)], name: &str) -> String {
        let (_, text) = pages
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no page {name}"));
        String::from_utf8(text.clone()).unwrap()
    }

    #[test]
    fn every_visible_subcommand_has_its_page_and_no_hidden_one_has() {
        let pages = man_pages().unwrap();
        let names: Vec<&str> = pages.iter().map(|(n, _)| n.as_str()).collect();
        let cmd = command();
        for sub in cmd.get_subcommands() {
            let file = format!("nexcage-{}.8", sub.get_name());
            assert_eq!(
                names.contains(&file.as_str()),
                !sub.is_hide_set(),
                "{file}: {names:?}"
            );
        }
        for file in [
            "nexcage.8",
            "nexcage-create.8",
            "nexcage-check.8",
            "nexcage-template-prune.8",
        ] {
            assert!(names.contains(&file), "{file}: {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("help")), "{names:?}");
    }

    #[test]
    fn a_page_names_every_flag_of_its_command_and_the_global_ones() {
        let pages = man_pages().unwrap();
        let cmd = command();
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            let text = page(&pages, &format!("nexcage-{}.8", sub.get_name()));
            for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
                if let Some(long) = arg.get_long() {
                    // roff escapes '-' as '\-'.
                    let shown = format!("\\-\\-{}", long.replace('-', "\\-"));
                    assert!(text.contains(&shown), "{} lacks --{long}", sub.get_name());
                }
            }
        }
        let create = page(&pages, "nexcage-create.8");
        for flag in [
            "pid\\-file",
            "console\\-socket",
            "preserve\\-fds",
            "bundle",
            "root",
            "debug",
        ] {
            assert!(
                create.contains(&format!("\\-\\-{flag}")),
                "create lacks {flag}"
            );
        }
    }

    #[test]
    fn completions_offer_the_subcommands_and_their_flags() {
        let files = completions();
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["nexcage", "_nexcage", "nexcage.fish"]);
        for (name, text) in &files {
            let text = String::from_utf8_lossy(text);
            for word in ["create", "check", "template", "console-socket"] {
                assert!(text.contains(word), "{name} lacks {word}");
            }
            for hidden in ["monitor", "generate", "listen-fd"] {
                assert!(!text.contains(hidden), "{name} offers {hidden}");
            }
        }
    }

    #[test]
    fn generating_twice_gives_the_same_bytes() {
        assert_eq!(man_pages().unwrap(), man_pages().unwrap());
        assert_eq!(completions(), completions());
    }
}

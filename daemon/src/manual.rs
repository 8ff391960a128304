//! What the package ships about `arroyod` beside the binary: man pages generated from its
//! clap definition (`clap_mangen`) and shell completions (`clap_complete`).
//!
//! It only renders the command line it is given; it never starts the daemon.

use std::path::{Path, PathBuf};

/// Errors of writing the manual.
#[derive(Debug, thiserror::Error)]
pub enum ManualError {
    /// A page or the directory could not be written.
    #[error("writing {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Writes `NAME.1` for the command and `NAME-SUB.1` for each of its visible subcommands to
/// `dir` (created when missing); returns the pages written.
pub fn write_pages(command: clap::Command, dir: &Path) -> Result<Vec<PathBuf>, ManualError> {
    let failed = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ManualError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(failed(dir))?;
    let name = command.get_name().to_owned();
    let subcommands: Vec<clap::Command> = command
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set())
        .map(|sub| {
            let full = format!("{name}-{}", sub.get_name());
            sub.clone().name(full)
        })
        .collect();
    let mut written = Vec::new();
    for page in std::iter::once(command).chain(subcommands) {
        let path = dir.join(format!("{}.1", page.get_name()));
        let mut text = Vec::new();
        clap_mangen::Man::new(page)
            .render(&mut text)
            .map_err(failed(&path))?;
        std::fs::write(&path, text).map_err(failed(&path))?;
        written.push(path);
    }
    Ok(written)
}

/// Prints the completion script of `command` for `shell` to stdout.
pub fn print_completions(mut command: clap::Command, shell: clap_complete::Shell) {
    let name = command.get_name().to_owned();
    clap_complete::generate(shell, &mut command, name, &mut std::io::stdout());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_per_visible_subcommand() {
        let command = clap::Command::new("tool")
            .about("does things")
            .subcommand(clap::Command::new("run").about("runs"))
            .subcommand(clap::Command::new("secret").hide(true));
        let dir = tempfile::tempdir().unwrap();
        let written = write_pages(command, dir.path()).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["tool.1", "tool-run.1"]);
        let page = std::fs::read_to_string(&written[1]).unwrap();
        assert!(page.contains(".TH tool-run 1"), "{page}");
    }
}

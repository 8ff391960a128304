//! The commands that send a query file: `submit`, `validate` and `explain` (which also takes
//! a pipeline), and how their query errors are shown: as `FILE:LINE:COL: error:` diagnostics
//! on stderr, or in the JSON answer.

use std::io::{self, Read as _, Write};
use std::path::Path;
use std::process::ExitCode;

use arroyod_proto::{ExplainRequest, QueryErrors, SqlError, SubmitRequest, ValidateRequest};
use prost::Message as _;
use tonic::{Code, Status};

use super::{CommandError, EXIT_ERROR, Session, write_stdout};
use crate::render;

impl Session {
    /// A query the daemon refuses exits 1, its errors printed as `validate` prints them.
    pub(super) async fn submit(
        &self,
        file: &Path,
        mut request: SubmitRequest,
    ) -> Result<ExitCode, CommandError> {
        let query = read_query(file)?;
        request.query = query.clone();
        let answer = self.client().await?.submit(request).await;
        let pipeline = match answer {
            Ok(response) => response
                .into_inner()
                .pipeline
                .ok_or(CommandError::Incomplete("the pipeline"))?,
            Err(status) => {
                return match query_errors(&status) {
                    Some(errors) => self.refused(file, &errors),
                    None => Err(self.rpc_error(status)),
                };
            }
        };
        // The id is the last word, for scripts: `arroyoctl submit q.sql | awk '{print $NF}'`.
        self.write_pipeline(&pipeline, |w, p| {
            writeln!(w, "submitted pipeline {}", render::pipeline_label(p))
        })?;
        Ok(ExitCode::SUCCESS)
    }

    /// Exits 1 when the query has errors, which go to stderr as diagnostics (or to stdout in
    /// the JSON answer).
    pub(super) async fn validate(&self, file: &Path) -> Result<ExitCode, CommandError> {
        let query = read_query(file)?;
        let response = self
            .call(|mut c| async move {
                c.validate(ValidateRequest {
                    query: query.clone(),
                })
                .await
            })
            .await?;
        if self.json {
            let label = query_label(file);
            write_stdout(|w| render::write_json(w, &render::validate_json(&label, &response)))?;
        } else if response.errors.is_empty() {
            let label = query_label(file);
            let mut stderr = io::stderr().lock();
            for warning in &response.warnings {
                let _ = write!(stderr, "{}", render::warning(&label, warning));
            }
            drop(stderr);
            write_stdout(|w| {
                writeln!(w, "ok")?;
                writeln!(w, "{}", render::sinks_line(&response.sinks))
            })?;
        } else {
            print_diagnostics(file, &response.errors);
        }
        Ok(if response.errors.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_ERROR)
        })
    }

    /// A file (or `-`) is planned by the daemon; anything else names a pipeline. A query
    /// that does not plan exits 1 with its diagnostics.
    pub(super) async fn explain(
        &self,
        target: &str,
        dot: bool,
        parallelism: Option<u32>,
    ) -> Result<ExitCode, CommandError> {
        let path = Path::new(target);
        let is_file = target == "-" || path.is_file();
        let query = if is_file {
            Some(read_query(path)?)
        } else {
            None
        };
        let request = ExplainRequest {
            id_or_name: if is_file {
                String::new()
            } else {
                target.to_owned()
            },
            query: query.clone().unwrap_or_default(),
            parallelism: parallelism.unwrap_or(0),
        };
        let graph = self
            .call(|mut c| async move { c.explain(request).await })
            .await?;
        if !graph.errors.is_empty() {
            return self.refused(path, &graph.errors);
        }
        write_stdout(|w| {
            if dot {
                write!(w, "{}", render::explain_dot(&graph))
            } else if self.json {
                render::write_json(w, &render::explain_json(&graph))
            } else {
                render::write_explain(w, &graph)
            }
        })?;
        Ok(ExitCode::SUCCESS)
    }

    /// A query the daemon refused: its errors as diagnostics on stderr, or with `--json` as
    /// the answer on stdout; exit 1.
    fn refused(&self, file: &Path, errors: &[SqlError]) -> Result<ExitCode, CommandError> {
        if self.json {
            let label = query_label(file);
            write_stdout(|w| render::write_json(w, &render::submit_errors_json(&label, errors)))?;
        } else {
            print_diagnostics(file, errors);
        }
        Ok(ExitCode::from(EXIT_ERROR))
    }
}

/// The query errors a refused `submit` carries in its status details.
fn query_errors(status: &Status) -> Option<Vec<SqlError>> {
    if status.code() != Code::InvalidArgument {
        return None;
    }
    let errors = QueryErrors::decode(status.details()).ok()?.errors;
    (!errors.is_empty()).then_some(errors)
}

/// Writes query errors to stderr in the diagnostic format: the `FILE:LINE:COL: error:`
/// line, the source line with a caret, the hints.
fn print_diagnostics(file: &Path, errors: &[SqlError]) {
    let label = query_label(file);
    let mut stderr = io::stderr().lock();
    for error in errors {
        // A closed stderr leaves nowhere to report to; the exit status still tells.
        let _ = write!(stderr, "{}", render::diagnostic(&label, error));
    }
}

/// The query in `path`, or on stdin when `path` is `-`.
fn read_query(path: &Path) -> Result<String, CommandError> {
    let read = if path == Path::new("-") {
        let mut query = String::new();
        io::stdin().read_to_string(&mut query).map(|_| query)
    } else {
        std::fs::read_to_string(path)
    };
    read.map_err(|source| CommandError::ReadQuery {
        path: path.to_path_buf(),
        source,
    })
}

/// How diagnostics name the query's file.
fn query_label(path: &Path) -> String {
    if path == Path::new("-") {
        "<stdin>".to_owned()
    } else {
        path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdin_is_labelled() {
        assert_eq!(query_label(Path::new("-")), "<stdin>");
        assert_eq!(query_label(Path::new("q/a.sql")), "q/a.sql");
    }
}

//! The commands that change a pipeline's life: `stop` (waiting, with progress), `restart`,
//! `update`, `checkpoint`, `delete` and `resume`.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use arroyod_proto::{
    DeleteRequest, Pipeline, PipelineRef, RestartRequest, StopRequest, UpdateRequest,
};

use super::{CommandError, Session, write_stdout};
use crate::cli::StopMode;
use crate::render;

/// How often a waiting `stop` looks at the pipeline.
const STOP_POLL: Duration = Duration::from_millis(250);
/// After how long a waiting `stop` shows its progress.
const STOP_PROGRESS_AFTER: Duration = Duration::from_secs(2);

impl Session {
    /// Requests the stop. Waiting, it shows on stderr which subtasks have ended once the stop
    /// takes a while, and fails when the stop could not do what its mode promises (a final
    /// checkpoint) or the pipeline failed.
    pub(super) async fn stop(
        &self,
        id_or_name: String,
        mode: StopMode,
        wait: bool,
    ) -> Result<(), CommandError> {
        let client = self.client().await?;
        let request = StopRequest {
            id_or_name: id_or_name.clone(),
            mode: arroyod_proto::StopMode::from(mode).into(),
            wait,
        };
        let mut stopping = client.clone();
        let stop = stopping.stop(request);
        let progress = async {
            let mut client = client.clone();
            let started = Instant::now();
            let mut shown = String::new();
            loop {
                tokio::time::sleep(STOP_POLL).await;
                if started.elapsed() < STOP_PROGRESS_AFTER {
                    continue;
                }
                let Ok(p) = client
                    .status(PipelineRef {
                        id_or_name: id_or_name.clone(),
                    })
                    .await
                else {
                    continue;
                };
                let line = stop_progress(&p.into_inner(), started.elapsed());
                if line != shown {
                    let _ = writeln!(io::stderr(), "{line}");
                    shown = line;
                }
            }
        };
        let pipeline = tokio::select! {
            stopped = stop => stopped.map_err(|status| self.rpc_error(status))?.into_inner(),
            never = progress => never,
        };
        self.write_pipeline(&pipeline, render::write_state)?;
        if !wait {
            return Ok(());
        }
        let label = render::pipeline_label(&pipeline);
        match pipeline.last_stop {
            Some(end) if !end.clean && matches!(pipeline.state.as_str(), "Stopped" | "Failed") => {
                Err(CommandError::UncleanStop {
                    pipeline: label,
                    message: end.message,
                })
            }
            _ => Ok(()),
        }
    }

    pub(super) async fn restart(&self, request: RestartRequest) -> Result<(), CommandError> {
        let answer = self
            .call(|mut c| async move { c.restart(request).await })
            .await?;
        let pipeline = answer
            .pipeline
            .ok_or(CommandError::Incomplete("the pipeline"))?;
        write_stdout(|w| {
            if self.json {
                let mut v = render::pipeline_json(&pipeline);
                v["notes"] = serde_json::json!(answer.notes);
                render::write_json(w, &v)
            } else {
                render::write_state(w, &pipeline)?;
                for note in &answer.notes {
                    writeln!(w, "note: {note}")?;
                }
                Ok(())
            }
        })
    }

    pub(super) async fn update(&self, request: UpdateRequest) -> Result<(), CommandError> {
        let pipeline = self
            .call(|mut c| async move { c.update(request).await })
            .await?;
        self.write_pipeline(&pipeline, render::write_state)
    }

    pub(super) async fn checkpoint(&self, id_or_name: String) -> Result<(), CommandError> {
        let request = PipelineRef {
            id_or_name: id_or_name.clone(),
        };
        let c = self
            .call(|mut c| async move { c.checkpoint(request).await })
            .await?;
        write_stdout(|w| {
            if self.json {
                render::write_json(w, &render::checkpoint_json(&c))
            } else {
                writeln!(
                    w,
                    "checkpoint {} of {id_or_name} completed: {} bytes in {}",
                    c.epoch,
                    c.bytes,
                    render::millis(c.duration_ms)
                )
            }
        })
    }

    pub(super) async fn delete(&self, request: DeleteRequest) -> Result<(), CommandError> {
        let answer = self
            .call(|mut c| async move { c.delete(request).await })
            .await?;
        let pipeline = answer
            .pipeline
            .ok_or(CommandError::Incomplete("the pipeline"))?;
        write_stdout(|w| {
            if self.json {
                render::write_json(
                    w,
                    &serde_json::json!({
                        "pipeline": render::pipeline_json(&pipeline),
                        "removed": answer.removed,
                        "kept": answer.kept,
                    }),
                )
            } else {
                writeln!(w, "deleted pipeline {}", render::pipeline_label(&pipeline))?;
                for path in &answer.removed {
                    writeln!(w, "removed: {path}")?;
                }
                for path in &answer.kept {
                    writeln!(w, "kept: {path}")?;
                }
                Ok(())
            }
        })
    }

    /// The daemon refuses (`FailedPrecondition`) a pipeline that is not stopped, failed or
    /// finished; its message says so.
    pub(super) async fn resume(&self, id_or_name: String) -> Result<(), CommandError> {
        let pipeline = self
            .call(|mut c| async move { c.resume(PipelineRef { id_or_name }).await })
            .await?;
        self.write_pipeline(&pipeline, render::write_state)
    }
}

/// A waiting stop's progress: how many subtasks have ended, when the worker said.
fn stop_progress(p: &Pipeline, waited: Duration) -> String {
    let label = render::pipeline_label(p);
    let secs = waited.as_secs();
    if p.subtasks > 0 {
        format!(
            "stopping {label}: {} of {} subtasks ended ({secs}s)",
            p.subtasks_ended, p.subtasks
        )
    } else {
        format!(
            "stopping {label}: {}, waiting for its worker ({secs}s)",
            p.state
        )
    }
}

//! `arroyoctl wait`: asks for a pipeline's state until it is one of those wanted, one of the
//! others that never change by themselves (Stopped, Finished, Failed), or the timeout passes.

use std::time::Duration;

use arroyod_proto::PipelineRef;
use tokio::time::Instant;

use super::{CommandError, Session};
use crate::render;

/// Time between two looks at the pipeline.
const POLL: Duration = Duration::from_millis(100);
/// States only a command leaves.
const FINAL: [&str; 3] = ["Stopped", "Finished", "Failed"];

impl Session {
    pub(super) async fn wait(
        &self,
        id_or_name: String,
        states: &[String],
        timeout: Duration,
    ) -> Result<(), CommandError> {
        let deadline = Instant::now() + timeout;
        let wanted = states.join(" or ");
        let mut client = self.client().await?;
        loop {
            let pipeline = client
                .status(PipelineRef {
                    id_or_name: id_or_name.clone(),
                })
                .await
                .map_err(|status| self.rpc_error(status))?
                .into_inner();
            if states.contains(&pipeline.state) {
                return self.write_pipeline(&pipeline, render::write_state);
            }
            if FINAL.contains(&pipeline.state.as_str()) {
                return Err(CommandError::Ended {
                    pipeline: render::pipeline_label(&pipeline),
                    state: pipeline.state,
                    wanted,
                    failure: pipeline.failure,
                });
            }
            if Instant::now() >= deadline {
                return Err(CommandError::WaitTimedOut {
                    pipeline: render::pipeline_label(&pipeline),
                    state: pipeline.state,
                    wanted,
                    timeout,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

-- Checkpointing: each pipeline's checkpoint interval, the fingerprint of its plan (what
-- `arroyod run -s` compares to decide whether a state dir holds this pipeline), and the
-- checkpoints its workers completed (the files themselves live under the state URL).
ALTER TABLE pipelines ADD COLUMN checkpoint_interval_ms INTEGER NOT NULL DEFAULT 10000;
ALTER TABLE pipelines ADD COLUMN plan_hash TEXT NOT NULL DEFAULT '';
ALTER TABLE pipelines ADD COLUMN state_url TEXT NOT NULL DEFAULT '';

CREATE TABLE checkpoints (
    pipeline_id  TEXT NOT NULL REFERENCES pipelines(id),
    epoch        INTEGER NOT NULL,
    generation   INTEGER NOT NULL,
    bytes        INTEGER NOT NULL,
    duration_ms  INTEGER NOT NULL,
    completed_at TEXT NOT NULL,
    PRIMARY KEY (pipeline_id, epoch)
);

-- Pipelines: what was submitted (query, parallelism), what the operator wants (desired), and
-- what is (state, failure, generation: bumped at every scheduling attempt).
CREATE TABLE pipelines (
    id          TEXT PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL UNIQUE,
    query       TEXT NOT NULL,
    parallelism INTEGER NOT NULL,
    desired     TEXT NOT NULL,
    state       TEXT NOT NULL,
    failure     TEXT NOT NULL DEFAULT '',
    generation  INTEGER NOT NULL DEFAULT 0,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

-- State changes and failures, newest last, for `status` and post-mortems.
CREATE TABLE pipeline_events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline_id TEXT NOT NULL REFERENCES pipelines(id),
    at          TEXT NOT NULL,
    state       TEXT NOT NULL,
    message     TEXT NOT NULL DEFAULT ''
);
CREATE INDEX pipeline_events_by_pipeline ON pipeline_events (pipeline_id, seq);

-- Operations (issue 12): a pipeline's memory limit, the kind and generation of each recorded
-- event (what `arroyoctl logs` shows), and, per checkpoint, the output log's offset when it
-- was taken (where the rows a restore writes again begin).
ALTER TABLE pipelines ADD COLUMN memory_limit_bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE pipeline_events ADD COLUMN kind TEXT NOT NULL DEFAULT 'state';
ALTER TABLE pipeline_events ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
ALTER TABLE checkpoints ADD COLUMN output_offset INTEGER NOT NULL DEFAULT 0;

-- The GPU job queue: trainings, generations and class-image runs as rows, so the queue
-- survives restarts and any front end (Discord, CLI) can submit and watch jobs.

CREATE TABLE jobs (
    id               INTEGER PRIMARY KEY,
    kind             TEXT NOT NULL CHECK (kind IN ('train', 'generate', 'class_images')),
    status           TEXT NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    guild_id         TEXT NOT NULL,
    user_id          TEXT NOT NULL,
    payload          TEXT NOT NULL,           -- JSON: the request
    result           TEXT,                    -- JSON: what it produced
    progress         REAL NOT NULL DEFAULT 0, -- 0..1
    progress_text    TEXT,
    run_id           INTEGER REFERENCES training_runs(id) ON DELETE CASCADE,
    generation_id    INTEGER REFERENCES generations(id) ON DELETE SET NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    worker_id        TEXT,
    heartbeat_at     TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    error            TEXT,
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    started_at       TEXT,
    finished_at      TEXT
);
CREATE INDEX jobs_status ON jobs (status, kind, id);
CREATE INDEX jobs_user ON jobs (user_id, status);

-- What happened to a job, in order, for subscribers that want every step (the bot, the CLI).
CREATE TABLE job_events (
    id         INTEGER PRIMARY KEY,
    job_id     INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    kind       TEXT NOT NULL,                 -- queued, started, progress, checkpoint, validation, preview, finished, failed, cancelled
    data       TEXT NOT NULL DEFAULT '{}',    -- JSON
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX job_events_job ON job_events (job_id, id);

-- What the Discord front end remembers between restarts: per-server settings, who may
-- imagine with a pet, where each job is shown, and how far the event relay has read.

CREATE TABLE guild_settings (
    guild_id           TEXT PRIMARY KEY,
    gallery_channel_id TEXT,                           -- where 📌 shares images; NULL = not set
    vote_emoji         TEXT NOT NULL DEFAULT '⭐',      -- reaction that votes for a validation image
    who_may_train      TEXT NOT NULL DEFAULT 'everyone'
                       CHECK (who_may_train IN ('everyone', 'managers')),
    max_steps          INTEGER NOT NULL DEFAULT 2000   -- the most steps one /train may ask for
);

CREATE TABLE pet_sharing (
    pet_id             INTEGER PRIMARY KEY REFERENCES pets(id) ON DELETE CASCADE,
    others_may_imagine INTEGER NOT NULL DEFAULT 1
);

-- One row per job started from Discord: the channel it was asked in, the training thread,
-- and the message edited in place with its progress (status for trainings, preview for images).
CREATE TABLE discord_jobs (
    job_id            INTEGER PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
    guild_id          TEXT NOT NULL,
    channel_id        TEXT NOT NULL,
    thread_id         TEXT,
    status_message_id TEXT,
    requested_by      TEXT NOT NULL
);

-- The last job_events.id the relay has turned into messages (one row).
CREATE TABLE discord_relay (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    last_event_id INTEGER NOT NULL
);

-- Pets, their photos, training runs with checkpoints and validation images, votes, generations.
-- Paths are stored relative to the data folder so the folder can move.

CREATE TABLE pets (
    id          INTEGER PRIMARY KEY,
    guild_id    TEXT NOT NULL,              -- Discord guild id, or 'local' for the CLI
    owner_id    TEXT NOT NULL,
    name        TEXT NOT NULL,              -- as the owner typed it; never used in a path
    token       TEXT NOT NULL UNIQUE,       -- the trigger word the LoRA learns, e.g. 'pwt3k'
    class_noun  TEXT NOT NULL,              -- 'cat', 'dog', ...
    active_checkpoint_id INTEGER REFERENCES checkpoints(id) ON DELETE SET NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE UNIQUE INDEX pets_guild_name ON pets (guild_id, name COLLATE NOCASE);

CREATE TABLE photos (
    id            INTEGER PRIMARY KEY,
    pet_id        INTEGER NOT NULL REFERENCES pets(id) ON DELETE CASCADE,
    sha256        TEXT NOT NULL,            -- of the decoded RGB pixels, so re-encodes match
    phash         TEXT NOT NULL,            -- 64-bit perceptual hash, hex
    original_name TEXT NOT NULL,
    original_path TEXT NOT NULL,
    prepared_path TEXT NOT NULL,
    width         INTEGER NOT NULL,         -- of the upright original
    height        INTEGER NOT NULL,
    crop_left     INTEGER NOT NULL,
    crop_top      INTEGER NOT NULL,
    crop_size     INTEGER NOT NULL,
    added_by      TEXT NOT NULL,
    added_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (pet_id, sha256)
);
CREATE INDEX photos_pet ON photos (pet_id);

CREATE TABLE training_runs (
    id           INTEGER PRIMARY KEY,
    pet_id       INTEGER NOT NULL REFERENCES pets(id) ON DELETE CASCADE,
    status       TEXT NOT NULL DEFAULT 'queued'
                 CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    params       TEXT NOT NULL,             -- JSON: every training parameter of this run
    step         INTEGER NOT NULL DEFAULT 0,
    total_steps  INTEGER NOT NULL,
    error        TEXT,
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    started_at   TEXT,
    finished_at  TEXT,
    chosen_checkpoint_id INTEGER REFERENCES checkpoints(id) ON DELETE SET NULL
);
CREATE INDEX training_runs_pet ON training_runs (pet_id);

CREATE TABLE checkpoints (
    id             INTEGER PRIMARY KEY,
    run_id         INTEGER NOT NULL REFERENCES training_runs(id) ON DELETE CASCADE,
    step           INTEGER NOT NULL,
    path           TEXT NOT NULL,           -- folder: runs/<run>/checkpoints/step-<n>
    diffusers_file TEXT NOT NULL,           -- pytorch_lora_weights.safetensors (load_lora_weights)
    kohya_file     TEXT NOT NULL,           -- single file for A1111 / ComfyUI
    created_at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (run_id, step)
);

CREATE TABLE validation_images (
    id            INTEGER PRIMARY KEY,
    run_id        INTEGER NOT NULL REFERENCES training_runs(id) ON DELETE CASCADE,
    step          INTEGER NOT NULL,
    checkpoint_id INTEGER REFERENCES checkpoints(id) ON DELETE CASCADE,  -- NULL at step 0
    prompt        TEXT NOT NULL,
    seed          INTEGER NOT NULL,
    path          TEXT NOT NULL,
    message_id    TEXT,                     -- the Discord message that shows it, once posted
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX validation_images_run ON validation_images (run_id, step);
CREATE INDEX validation_images_message ON validation_images (message_id);

CREATE TABLE votes (
    id                  INTEGER PRIMARY KEY,
    validation_image_id INTEGER REFERENCES validation_images(id) ON DELETE CASCADE,
    checkpoint_id       INTEGER REFERENCES checkpoints(id) ON DELETE CASCADE,
    user_id             TEXT NOT NULL,
    emoji               TEXT NOT NULL,
    created_at          TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    CHECK ((validation_image_id IS NULL) <> (checkpoint_id IS NULL))
);
-- One vote per user and emoji on each image or checkpoint (NULLs are distinct in UNIQUE, hence two).
CREATE UNIQUE INDEX votes_image_user ON votes (validation_image_id, user_id, emoji)
    WHERE validation_image_id IS NOT NULL;
CREATE UNIQUE INDEX votes_checkpoint_user ON votes (checkpoint_id, user_id, emoji)
    WHERE checkpoint_id IS NOT NULL;

CREATE TABLE generations (
    id              INTEGER PRIMARY KEY,
    guild_id        TEXT NOT NULL,
    pet_id          INTEGER REFERENCES pets(id) ON DELETE CASCADE,   -- NULL: the plain base model
    checkpoint_id   INTEGER REFERENCES checkpoints(id) ON DELETE SET NULL,
    prompt          TEXT NOT NULL,
    negative_prompt TEXT NOT NULL DEFAULT '',
    seed            INTEGER NOT NULL,         -- of the first image; image i used seed + i
    steps           INTEGER NOT NULL,
    guidance        REAL NOT NULL,
    width           INTEGER NOT NULL,
    height          INTEGER NOT NULL,
    lora_scale      REAL NOT NULL DEFAULT 1.0,
    files           TEXT NOT NULL DEFAULT '[]', -- JSON list of paths, one per image
    requested_by    TEXT NOT NULL,
    message_id      TEXT,
    created_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX generations_pet ON generations (pet_id);

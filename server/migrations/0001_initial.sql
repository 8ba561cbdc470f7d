-- The documented schema: the current state of each game, plus one history table per kind
-- of value (a row per change, with the version and the timestamp of the change).
CREATE TABLE game_state (
    game_id        TEXT PRIMARY KEY,
    status         TEXT NOT NULL,
    current_player TEXT,
    scores         JSON NOT NULL,
    timer          JSON NOT NULL,
    settings       JSON NOT NULL,
    version        INTEGER NOT NULL,
    updated_at     TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE scores (
    game_id   TEXT NOT NULL,
    player_id TEXT NOT NULL,
    score     INTEGER,          -- NULL: the player was removed (by an import)
    version   INTEGER NOT NULL,
    timestamp TEXT NOT NULL
);
CREATE INDEX scores_by_game ON scores (game_id, player_id, version);

CREATE TABLE timers (
    game_id      TEXT NOT NULL,
    player_id    TEXT NOT NULL,
    remaining_ms INTEGER,       -- NULL: the player was removed (by an import)
    version      INTEGER NOT NULL,
    timestamp    TEXT NOT NULL
);
CREATE INDEX timers_by_game ON timers (game_id, player_id, version);

CREATE TABLE settings (
    game_id   TEXT NOT NULL,
    key       TEXT NOT NULL,
    value     TEXT,             -- NULL: the setting was removed
    version   INTEGER NOT NULL,
    timestamp TEXT NOT NULL
);
CREATE INDEX settings_by_game ON settings (game_id, key, version);

-- Drop the history tables' indexes (migration 1 created them).
--
-- Why: the history tables (`scores`, `timers`, `settings`) are an append-only audit log:
-- rows are only ever inserted, and rowid order is commit order. Nothing in the server (or
-- the rest of the project) reads them by game: games are served from `game_state`. Each
-- index ordered by `game_id` made every group commit insert at about one index leaf page per
-- changed player and write each of those pages to the WAL (about 60 WAL frames per commit of
-- ~45 changes), the largest single cost per acknowledged update left (a concurrent A/B with
-- this migration: about 0.84x the server's CPU time per acknowledged update; BENCHMARKS.md,
-- "New state server"). Without them, a commit appends to the end of each table.
--
-- To query history by game, build the index on a COPY of the database (e.g. made with
-- `sqlite3 state.db ".backup copy.db"`), never on the live file, e.g.:
--   CREATE INDEX scores_by_game ON scores (game_id, player_id, version);
-- (likewise `timers (game_id, player_id, version)`, `settings (game_id, key, version)`).
DROP INDEX IF EXISTS scores_by_game;
DROP INDEX IF EXISTS timers_by_game;
DROP INDEX IF EXISTS settings_by_game;

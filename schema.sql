-- schema.sql - the qdup question store, schema version 2.
--
-- qdup-index and qdup-daemon apply this script (compiled into the programs, see
-- indexer/CMakeLists.txt) inside one transaction when they create a store, then
-- fill in meta (indexer/store.c). The version below must equal
-- QD_STORE_SCHEMA_VERSION in include/qdup/store.h; a later version of this file
-- comes with the code that migrates stores of the earlier versions
-- (indexer/verdicts.c: version 1 had no verdicts table).
--
-- SQLite is the truth: every question keeps its text and its vector, so the FAISS
-- file beside the database (DB.faiss) can always be rebuilt and checked without
-- re-encoding anything. Journal mode (WAL), synchronous and busy_timeout are
-- connection settings made by the code, not here.

-- 'QDUP' in ASCII, so `file` and the programs can tell a qdup store from any other
-- SQLite database.
PRAGMA application_id = 1363432784;

-- Key/value settings of the store. Values written by store.c:
--   schema_version   integer, this file's version
--   dim              integer, vector dimension (the model's)
--   index_spec       text, FAISS index_factory string given at creation
--   model_fingerprint text, 16 hex digits (qd_model_fingerprint)
--   model_path       text, absolute path of the model last used to write
--   seq              integer, last change sequence number (0: no change yet)
--   faiss_seq        integer, the change the FAISS file reflects
--   faiss_crc        integer, CRC-32 of the whole FAISS file; NULL: no file vouched for
--   faiss_size       integer, its size in bytes
--   created          real, unix time the store was created
-- and while a switch to another model is staged (indexer/reembed.c):
--   reembed_fingerprint text, the fingerprint of the model being staged
--   reembed_model_path  text, its path (relative to the database's directory when
--                       the model lies there or below, like model_path)
--   reembed_complete    integer, 1 once the staging reached every row
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value              -- any type; NULL where the comment above allows it
) WITHOUT ROWID;

INSERT INTO meta (key, value) VALUES ('schema_version', 2);

-- One row per question ever added and not yet compacted away. A removed question
-- keeps its row (a tombstone: removed and removed_seq set) until compaction, so that
-- index kinds that cannot delete (HNSW) can still filter it out and a crash after
-- the removal can be replayed onto an older FAISS file.
CREATE TABLE questions (
    -- Also the FAISS id. AUTOINCREMENT: ids are never reused, even after compaction
    -- deleted the highest ones, so a stale FAISS file can never name the wrong row.
    row         INTEGER PRIMARY KEY AUTOINCREMENT,
    ext_id      TEXT NOT NULL CHECK (length(CAST(ext_id AS BLOB)) BETWEEN 1 AND 256),
    text        TEXT NOT NULL CHECK (length(CAST(text AS BLOB)) >= 1),
    -- qd_store_text_key() of text (64-bit hash of its token sequence), as a signed
    -- integer: exact duplicates are refused by comparing these.
    text_key    INTEGER NOT NULL,
    -- dim float32 values, little-endian: 4 * dim bytes.
    vec         BLOB NOT NULL,
    created     REAL NOT NULL,   -- unix time, seconds
    removed     REAL,            -- unix time of removal; NULL while live
    seq         INTEGER NOT NULL CHECK (seq >= 1),  -- the change that added it
    removed_seq INTEGER,         -- the change that removed it; NULL while live
    CHECK ((removed IS NULL) = (removed_seq IS NULL))
);

-- An external id is unique among live rows only: a removed id may come back.
CREATE UNIQUE INDEX questions_live_id ON questions (ext_id) WHERE removed IS NULL;
-- For replaying the changes after the FAISS file's checkpoint at open.
CREATE INDEX questions_seq ON questions (seq);
CREATE INDEX questions_removed_seq ON questions (removed_seq) WHERE removed_seq IS NOT NULL;

-- Moderators' verdicts on suggested duplicates (version 2): NEW was closed as a
-- duplicate of OLD (duplicate 1), or the suggestion was dismissed (0). The texts are
-- kept as they were when the verdict was given, so that removing or compacting a
-- question loses nothing learned; `qdup-index verdicts` exports them as pairs for
-- `qdup-train --init`. One verdict per (new_id, old_id): a later one replaces it.
-- indexer/verdicts.c creates the same table when it migrates a version 1 store.
CREATE TABLE verdicts (
    new_id    TEXT NOT NULL,
    new_text  TEXT NOT NULL,
    old_id    TEXT NOT NULL,
    old_text  TEXT NOT NULL,
    duplicate INTEGER NOT NULL CHECK (duplicate IN (0, 1)),
    decided   REAL NOT NULL,    -- unix time of the verdict, seconds
    PRIMARY KEY (new_id, old_id)
);

-- The staging of a switch to another model (`qdup-index reembed`): the vector the
-- model named by meta reembed_fingerprint gives each row of questions. Not created
-- here: indexer/reembed.c creates it when a staging starts (CREATE TABLE IF NOT
-- EXISTS, the statement below) and the switch drops it in the same transaction that
-- copies the vectors into questions.vec and records the new model_fingerprint, so
-- the model in force and the vectors in questions always agree, whenever a process
-- is killed. A store without it is the usual case, and the schema version stays 2:
-- a program that does not know the table ignores it.
--   CREATE TABLE reembed (row INTEGER PRIMARY KEY, vec BLOB NOT NULL);

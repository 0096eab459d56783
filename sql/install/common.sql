-- tandem's own objects, the same on both sides. Everything lives in schema `tandem`, never in `public`
-- (Supabase exposes `public` through its REST API). Idempotent: safe to run again.

CREATE SCHEMA IF NOT EXISTS tandem;
REVOKE ALL ON SCHEMA tandem FROM PUBLIC;

-- What was installed and with which version of this SQL; read by init (is anything to do?), check and
-- uninstall (which slot and publication to remove). `role`: the role tandem connects as; only its
-- sessions' writes count as tandem's own (see the capture and ownership triggers).
CREATE TABLE IF NOT EXISTS tandem.installation (
    item  text PRIMARY KEY,
    value text NOT NULL
);

-- How far a direction has applied, written in the same transaction as the data it describes.
CREATE TABLE IF NOT EXISTS tandem.progress (
    direction  text PRIMARY KEY,
    lsn        pg_lsn,
    applied_at timestamptz NOT NULL DEFAULT now()
);
-- reverse: the cloud's commit time of the last transaction applied (what `tandem status` measures the
-- lag in seconds from).
ALTER TABLE tandem.progress ADD COLUMN IF NOT EXISTS committed_at timestamptz;
-- reverse: when the running worker last found nothing unapplied in what the cloud sent.
ALTER TABLE tandem.progress ADD COLUMN IF NOT EXISTS caught_up_at timestamptz;

-- Changes that were not applied because the target row is owned by the other side (or, for mobile rows,
-- because the desktop already holds different desktop-made content under that key).
CREATE TABLE IF NOT EXISTS tandem.conflicts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    detected_at timestamptz NOT NULL DEFAULT now(),
    direction   text NOT NULL,
    table_name  text NOT NULL,
    row_key     jsonb,
    incoming    jsonb,
    current     jsonb,
    reason      text NOT NULL,
    resolved_at timestamptz
);
-- How an operator resolved it (`tandem conflicts resolve`): the side kept, and who chose.
ALTER TABLE tandem.conflicts ADD COLUMN IF NOT EXISTS resolution text;
ALTER TABLE tandem.conflicts ADD COLUMN IF NOT EXISTS resolved_by text;
-- A conflict by concurrency (two changes of one row made without seeing each other), as the reverse
-- direction records it on the desktop, where it is settled. Every version is an object of each column's
-- exact text (a numeric(12,2) 2000.00 stays "2000.00"; a value never passes through a JSON number).
--   kind: the desktop's change, then the phone's: update/update, update/delete (the desktop updated, the
--         phone deleted), delete/update, insert/insert (both created the key);
--   base: the version both sides last agreed on (NULL: unknown, or none for insert/insert);
--   desktop_row, mobile_row: each side's version (NULL: that side deleted the row);
--   columns: the columns both sides changed (every differing column for insert/insert);
--   desktop_at: the desktop transaction's time (its capture), mobile_at: the phone's commit in the cloud;
--   cloud_lsn, cloud_xid: the phone's transaction in the cloud; desktop_xid: the desktop's transaction;
--   policy: the table's policy; outcome: what both sides were given (desktop, mobile, merged; NULL while
--         a person must decide); result: that row (NULL: deleted).
-- A settled conflict has resolved_at, resolution = outcome and resolved_by = 'policy <name>'.
ALTER TABLE tandem.conflicts ADD COLUMN IF NOT EXISTS kind text;
ALTER TABLE tandem.conflicts ADD COLUMN IF NOT EXISTS base jsonb;
ALTER TABLE tandem.conflicts ADD COLUMN IF NOT EXISTS desktop_row jsonb;
ALTER TABLE tandem.conflicts ADD COLUMN IF NOT EXISTS mobile_row jsonb;
ALTER TABLE tandem.conflicts ADD COLUMN IF NOT EXISTS columns text[];
ALTER TABLE tandem.conflicts ADD COLUMN IF NOT EXISTS desktop_at timestamptz;
ALTER TABLE tandem.conflicts ADD COLUMN IF NOT EXISTS mobile_at timestamptz;
ALTER TABLE tandem.conflicts ADD COLUMN IF NOT EXISTS cloud_lsn pg_lsn;
ALTER TABLE tandem.conflicts ADD COLUMN IF NOT EXISTS cloud_xid bigint;
ALTER TABLE tandem.conflicts ADD COLUMN IF NOT EXISTS desktop_xid bigint;
ALTER TABLE tandem.conflicts ADD COLUMN IF NOT EXISTS policy text;
ALTER TABLE tandem.conflicts ADD COLUMN IF NOT EXISTS outcome text;
ALTER TABLE tandem.conflicts ADD COLUMN IF NOT EXISTS result jsonb;
-- The open conflicts of a row, found by its key (the forward direction holds a row back while one is open).
CREATE INDEX IF NOT EXISTS conflicts_open ON tandem.conflicts (table_name, row_key) WHERE resolved_at IS NULL;

-- Rows the target refused (foreign key, NOT NULL, length, check, ...): kept, listed, retried.
CREATE TABLE IF NOT EXISTS tandem.dead_letters (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    failed_at   timestamptz NOT NULL DEFAULT now(),
    direction   text NOT NULL,
    table_name  text NOT NULL,
    row_key     jsonb,
    row_image   jsonb,
    sqlstate    text NOT NULL,
    message     text NOT NULL,
    batch       text,
    attempts    integer NOT NULL DEFAULT 1,
    retried_at  timestamptz,
    resolved_at timestamptz
);
-- Reverse dead letters: the row as the desktop last had it, from the first change of it that did not
-- apply (JSON `null` when that change created the row; SQL NULL when not known). The row's next change
-- is compared with it instead of its own old image: the desktop still holds this version.
ALTER TABLE tandem.dead_letters ADD COLUMN IF NOT EXISTS old_image jsonb;
CREATE INDEX IF NOT EXISTS dead_letters_open ON tandem.dead_letters (table_name, row_key) WHERE resolved_at IS NULL;

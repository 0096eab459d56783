-- tandem's own objects, the same on both sides. Everything lives in schema `tandem`, never in `public`
-- (Supabase exposes `public` through its REST API). Idempotent: safe to run again.

CREATE SCHEMA IF NOT EXISTS tandem;
REVOKE ALL ON SCHEMA tandem FROM PUBLIC;

-- What was installed and with which version of this SQL; read by init (is anything to do?), check and
-- uninstall (which slot and publication to remove).
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

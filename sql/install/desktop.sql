-- Desktop side: the outbox and the capture function. The triggers that call it are created per
-- configured table by `tandem init` (AFTER INSERT / UPDATE / DELETE / TRUNCATE, statement level).

-- Which keys changed. Capture keys, not rows: the reader re-reads the current rows for these keys, so an
-- apply is always "make the cloud equal the desktop for these keys" (idempotent, net effect per key).
-- `id` is taken at insert, not at commit: it orders nothing and is never used as a high-water mark.
CREATE TABLE IF NOT EXISTS tandem.outbox (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_schema text NOT NULL,
    table_name   text NOT NULL,
    op           "char" NOT NULL,        -- I, U, D (a key), T (truncate, no key)
    row_key      text[],                 -- key (or scope) values as text, in the trigger's column order
    xid          xid8 NOT NULL DEFAULT pg_current_xact_id(),
    captured_at  timestamptz NOT NULL DEFAULT now()
);
-- A desktop change the forward direction held back because the cloud row holds a phone's change the
-- desktop had not received yet when the batch read it (see `table_state.horizon`): it is taken again once
-- the table's horizon reaches this cloud transaction id (an xid8, as bigint). NULL: take it now.
ALTER TABLE tandem.outbox ADD COLUMN IF NOT EXISTS wait_for bigint;
CREATE INDEX IF NOT EXISTS outbox_waiting ON tandem.outbox (wait_for) WHERE wait_for IS NOT NULL;

-- Each configured table's state: `new` (init added it; the next run syncs it first), `syncing`,
-- `streaming`, or `parked` with why and how to fix it
-- (its statements do not fit the schema; its changes wait: outbox rows stay, mobile rows are kept as
-- dead letters). Kept on the desktop, by the table's desktop name, so it can be read while run is stopped.
CREATE TABLE IF NOT EXISTS tandem.table_state (
    table_name text PRIMARY KEY,
    state      text NOT NULL,
    reason     text,
    fix        text,
    since      timestamptz NOT NULL DEFAULT now()
);
-- When the table's initial sync (or the reconcile after a new slot) finished; NULL: it is due.
ALTER TABLE tandem.table_state ADD COLUMN IF NOT EXISTS synced_at timestamptz;
-- The cloud position a reconcile brought the table's mobile rows to: the reverse stream skips the
-- table's changes of transactions that committed before it (the reconcile brought them already).
ALTER TABLE tandem.table_state ADD COLUMN IF NOT EXISTS sync_lsn pg_lsn;
-- The table's horizon: a cloud snapshot (pg_snapshot text) every transaction of which the desktop has
-- received for this table: applied, or kept as an open conflict or dead letter. The reverse stream sets
-- it when it passes a snapshot tandem wrote into the cloud's WAL (every forward transaction, `run
-- --once`'s marker), a sync or reconcile when its cut is done; a new slot clears it. A cloud row whose
-- last writer a phone was is one the desktop has received when that writer's transaction is visible in
-- it: a desktop change of it is then an ordinary edit; otherwise the two changes did not see each other.
ALTER TABLE tandem.table_state ADD COLUMN IF NOT EXISTS horizon text;

-- A reconcile's cut in the reverse stream (a logical message at the cloud position its scan sees): the
-- reverse worker, on reaching it, applies what came before, says so, and waits until the reconcile has
-- brought the table's mobile rows (done), so the scan's snapshot and the desktop meet exactly there.
CREATE TABLE IF NOT EXISTS tandem.cuts (
    id         text PRIMARY KEY,
    table_name text,
    made_at    timestamptz NOT NULL DEFAULT now(),
    reached_at timestamptz,
    done_at    timestamptz
);

-- Each reconcile (and initial sync) run: when, what triggered it, and its report per table.
CREATE TABLE IF NOT EXISTS tandem.reconciles (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT now(),
    trigger     text NOT NULL,      -- command, schedule, sync
    dry_run     boolean NOT NULL,
    report      jsonb NOT NULL
);

-- The capture function. Trigger arguments: the key (or scope) columns of the table. Statement-level with
-- transition tables: one INSERT into the outbox per statement, not per row. Writes made by tandem itself
-- (a session of tandem's role, recorded by init, with the setting tandem.applying = on) are not captured,
-- so nothing echoes back; another role that sets the setting is captured like the application.
-- SECURITY DEFINER: the desktop application needs no privilege on schema tandem. The keys' text is made
-- under tandem's session settings, whatever the application's are, so the reader reads them back exactly
-- (a DMY DateStyle or extra_float_digits = 0 in the application's session would otherwise lose them).
-- The SET clauses cost a few microseconds per statement (the trigger runs once per statement).
CREATE OR REPLACE FUNCTION tandem.capture() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'postgres' SET extra_float_digits = 3
    SET TimeZone = 'UTC' SET bytea_output = 'hex' SET lc_monetary = 'C' AS $fn$
DECLARE
    key_expr text;
    captured bigint := 0;
BEGIN
    -- tandem's own writes: a session of tandem's role (recorded by init) that set tandem.applying.
    IF current_setting('tandem.applying', true) = 'on' THEN
        IF EXISTS (SELECT FROM tandem.installation i WHERE i.item = 'role' AND i.value = session_user::text) THEN
            RETURN NULL;
        END IF;
    END IF;
    IF TG_OP = 'TRUNCATE' THEN
        INSERT INTO tandem.outbox (table_schema, table_name, op, row_key)
        VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, 'T', NULL);
        captured := 1;
    ELSE
        SELECT 'ARRAY[' || string_agg(format('%I::text', col), ', ' ORDER BY ord) || ']'
          INTO key_expr
          FROM unnest(TG_ARGV) WITH ORDINALITY AS a(col, ord);
        IF TG_OP = 'INSERT' THEN
            EXECUTE format(
                'INSERT INTO tandem.outbox (table_schema, table_name, op, row_key)
                 SELECT DISTINCT $1, $2, ''I''::"char", %s FROM tandem_new', key_expr)
            USING TG_TABLE_SCHEMA, TG_TABLE_NAME;
        ELSIF TG_OP = 'UPDATE' THEN
            -- Old and new keys: when an update moves a row to another key, both must be made equal.
            EXECUTE format(
                'INSERT INTO tandem.outbox (table_schema, table_name, op, row_key)
                 SELECT $1, $2, ''U''::"char", k
                   FROM (SELECT %1$s AS k FROM tandem_old UNION SELECT %1$s FROM tandem_new) AS keys', key_expr)
            USING TG_TABLE_SCHEMA, TG_TABLE_NAME;
        ELSE
            EXECUTE format(
                'INSERT INTO tandem.outbox (table_schema, table_name, op, row_key)
                 SELECT DISTINCT $1, $2, ''D''::"char", %s FROM tandem_old', key_expr)
            USING TG_TABLE_SCHEMA, TG_TABLE_NAME;
        END IF;
        GET DIAGNOSTICS captured = ROW_COUNT;
    END IF;
    IF captured > 0 THEN
        PERFORM pg_notify('tandem_outbox', '');
    END IF;
    RETURN NULL;
END
$fn$;
REVOKE ALL ON FUNCTION tandem.capture() FROM PUBLIC;

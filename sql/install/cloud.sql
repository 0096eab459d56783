-- Cloud side: ownership marking, and what init changed that uninstall must restore.

-- What phones changed and deleted: the row before each phone UPDATE or DELETE (of any owner), as the
-- record's text under tandem's settings, with the table's column names then. After a lost slot this is
-- how tandem tells "a row a phone deleted" (its last version is here) from "a desktop row the cloud has
-- not seen yet" (nothing here), and "a phone's edit the desktop missed" (the desktop still holds the
-- version here) from a desktop edit or a colliding key (it holds something else).
--
-- `xid` is the phone's transaction and `key` the row's key (or, for a cloud-key table, its scope) before
-- the change, each value as `to_jsonb` writes it under tandem's settings. With them the forward direction
-- tells a phone's delete (or a key it moved) that the desktop has not received yet from a key the cloud
-- never had: such a key is held back until the reverse direction has delivered the phone's change (see
-- `tandem.table_state.horizon` on the desktop). A reconcile prunes a table's entries it has applied.
--
-- In a cloud-key table a phone's INSERT is journaled too (`I`, the new row; a statement-level trigger,
-- one insert for the statement's rows): the desktop tells its rows apart by content alone, so only this
-- tells a row a phone made after the last version the desktop received (and then changed or deleted)
-- from a row the desktop had and changed: a reconcile must neither pair the former with a desktop row
-- of like content nor take its delete for one of a row the desktop holds.
CREATE TABLE IF NOT EXISTS tandem.journal (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    table_schema text NOT NULL,
    table_name   text NOT NULL,
    op           "char" NOT NULL,   -- U: updated, D: deleted, I: inserted (cloud-key tables)
    names        text[] NOT NULL,
    old          text NOT NULL
);
CREATE INDEX IF NOT EXISTS journal_table ON tandem.journal (table_schema, table_name, id);
ALTER TABLE tandem.journal ADD COLUMN IF NOT EXISTS xid xid8;
ALTER TABLE tandem.journal ADD COLUMN IF NOT EXISTS key jsonb;
CREATE INDEX IF NOT EXISTS journal_recent ON tandem.journal (table_schema, table_name, xid);

-- A phone's write is always mobile-owned: every INSERT or UPDATE not made by tandem gets source = 'M'.
-- tandem's own writes are those of a session that is tandem's role (recorded by init as the
-- installation's `role`: no other login can become it without its password) and has set
-- tandem.applying = on; a session of any other role that sets the setting is a phone like any other.
-- The trigger's WHEN names the role, so tandem's writes skip the call altogether; the function checks
-- again, as a defence.
--
-- When a phone takes over (UPDATE) or deletes a desktop-owned row, the row as it was goes into the WAL as a
-- transactional logical message, just before the change itself: the row-filtered publication sends such
-- an update as a bare INSERT of the new row (and such a delete not at all), and the reverse direction
-- needs the old row to find the desktop's copy. The message costs nothing to keep: no table, no cleanup.
-- It carries the table's column names and the old row's text as a record, made under tandem's session
-- settings (so every value reads back exactly on the desktop; the phone's own settings are put back
-- right after): JSON (to_jsonb) would lose -0, array bounds and json's own text.
--
-- Every name in the body is schema-qualified (functions, operators, types), so a session's search_path
-- cannot swap them. That is the safety a `SET search_path` clause would give, without its price: the
-- clause saves and restores a setting on every call, which made a phone's 100k-row INSERT take ~40%
-- longer (measured 2026-11-29: 0.39 s against 0.28 s through this body; 0.17 s with no trigger).
-- `OPERATOR(pg_catalog.=)` instead of `IS DISTINCT FROM` and `IN`, which look `=` up by search_path.
--
-- Every phone UPDATE and DELETE also leaves the row as it was in `tandem.journal` (above), with the key
-- (or scope) columns the trigger's arguments name; called at statement level (`tandem_journal_inserts`,
-- with the statement's new rows as `tandem_new`), it journals a phone's inserted rows. SECURITY
-- DEFINER: the phones' roles get no privilege on schema tandem; the body names everything with its
-- schema, so no search_path can swap what it calls. `use_variable`: a column of the table named like
-- one of the variables (`names`) is never taken for it.
CREATE OR REPLACE FUNCTION tandem.mark_mobile() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
#variable_conflict use_variable
DECLARE
    own     text[];
    old_row text;
    old_key pg_catalog.jsonb;
    names   text[];
BEGIN
    IF pg_catalog.current_setting('tandem.applying', true) OPERATOR(pg_catalog.=) 'on' THEN
        IF EXISTS (SELECT FROM tandem.installation i WHERE i.item OPERATOR(pg_catalog.=) 'role'
                      AND i.value OPERATOR(pg_catalog.=) SESSION_USER::pg_catalog.text) THEN
            RETURN CASE WHEN TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN OLD ELSE NEW END;
        END IF;
    END IF;
    IF TG_LEVEL OPERATOR(pg_catalog.=) 'STATEMENT' OR TG_OP OPERATOR(pg_catalog.<>) 'INSERT' THEN
        own := ARRAY[pg_catalog.current_setting('DateStyle'), pg_catalog.current_setting('IntervalStyle'),
                     pg_catalog.current_setting('extra_float_digits'), pg_catalog.current_setting('lc_monetary'),
                     pg_catalog.current_setting('bytea_output'), pg_catalog.current_setting('TimeZone')];
        PERFORM pg_catalog.set_config('DateStyle', 'ISO, MDY', true),
                pg_catalog.set_config('IntervalStyle', 'postgres', true),
                pg_catalog.set_config('extra_float_digits', '3', true),
                pg_catalog.set_config('lc_monetary', 'C', true),
                pg_catalog.set_config('bytea_output', 'hex', true),
                pg_catalog.set_config('TimeZone', 'UTC', true);
        names := (SELECT pg_catalog.array_agg(a.attname::pg_catalog.text ORDER BY a.attnum)
                    FROM pg_catalog.pg_attribute a
                   WHERE a.attrelid OPERATOR(pg_catalog.=) TG_RELID
                     AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped);
        IF TG_LEVEL OPERATOR(pg_catalog.=) 'STATEMENT' THEN
            INSERT INTO tandem.journal (table_schema, table_name, op, names, old, xid)
            SELECT TG_TABLE_SCHEMA, TG_TABLE_NAME, 'I', names, (n.*)::pg_catalog.text, pg_catalog.pg_current_xact_id()
              FROM tandem_new n;
        ELSE
            old_row := OLD::pg_catalog.text;
        END IF;
        IF TG_NARGS OPERATOR(pg_catalog.>) 0 AND TG_LEVEL OPERATOR(pg_catalog.=) 'ROW' THEN
            old_key := (SELECT pg_catalog.jsonb_agg(r.j OPERATOR(pg_catalog.->) a.name ORDER BY a.ord)
                          FROM (SELECT pg_catalog.to_jsonb(OLD) AS j) r,
                               pg_catalog.unnest(TG_ARGV) WITH ORDINALITY AS a(name, ord));
        END IF;
        PERFORM pg_catalog.set_config('DateStyle', own[1], true),
                pg_catalog.set_config('IntervalStyle', own[2], true),
                pg_catalog.set_config('extra_float_digits', own[3], true),
                pg_catalog.set_config('lc_monetary', own[4], true),
                pg_catalog.set_config('bytea_output', own[5], true),
                pg_catalog.set_config('TimeZone', own[6], true);
        IF TG_LEVEL OPERATOR(pg_catalog.=) 'STATEMENT' THEN
            RETURN NULL;
        END IF;
        INSERT INTO tandem.journal (table_schema, table_name, op, names, old, xid, key)
        VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, pg_catalog.left(TG_OP, 1)::pg_catalog."char", names, old_row,
                pg_catalog.pg_current_xact_id(), old_key);
        IF (OLD.source::pg_catalog.text OPERATOR(pg_catalog.=) 'M') IS NOT TRUE THEN
            PERFORM pg_catalog.pg_logical_emit_message(true, 'tandem.claim', pg_catalog.jsonb_build_object(
                'op', pg_catalog.lower(TG_OP), 'schema', TG_TABLE_SCHEMA, 'table', TG_TABLE_NAME,
                'names', names, 'old', old_row)::pg_catalog.text);
        END IF;
    END IF;
    IF TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN
        RETURN OLD;
    END IF;
    NEW.source := 'M';
    RETURN NEW;
END
$fn$;
REVOKE ALL ON FUNCTION tandem.mark_mobile() FROM PUBLIC;

-- The replica identity each synced table had before init set it to FULL.
CREATE TABLE IF NOT EXISTS tandem.replica_identity_before (
    table_schema text NOT NULL,
    table_name   text NOT NULL,
    identity     "char" NOT NULL,
    index_name   text,
    PRIMARY KEY (table_schema, table_name)
);

-- Supabase's API roles get nothing in schema tandem, whatever default privileges say.
DO $do$
DECLARE
    api_role text;
BEGIN
    FOREACH api_role IN ARRAY ARRAY['anon', 'authenticated'] LOOP
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = api_role) THEN
            EXECUTE format('REVOKE ALL ON SCHEMA tandem FROM %I', api_role);
            EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA tandem FROM %I', api_role);
            EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA tandem FROM %I', api_role);
            EXECUTE format('REVOKE ALL ON ALL FUNCTIONS IN SCHEMA tandem FROM %I', api_role);
        END IF;
    END LOOP;
END
$do$;

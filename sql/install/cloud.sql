-- Cloud side: ownership marking, and what init changed that uninstall must restore.

-- A phone's write is always mobile-owned: every INSERT or UPDATE not made by tandem (whose sessions set
-- tandem.applying = on) gets source = 'M'. So a phone's edit of a desktop-made row makes it mobile-owned;
-- a later desktop change of that row is then a logged conflict, not a silent revert.
--
-- When a phone takes over (UPDATE) or deletes a desktop-owned row, the row as it was goes into the WAL as a
-- transactional logical message, just before the change itself: the row-filtered publication sends such
-- an update as a bare INSERT of the new row (and such a delete not at all), and the reverse direction
-- needs the old row to find the desktop's copy. The message costs nothing to keep: no table, no cleanup.
CREATE OR REPLACE FUNCTION tandem.mark_mobile() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    IF current_setting('tandem.applying', true) IS NOT DISTINCT FROM 'on' THEN
        RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.source IS DISTINCT FROM 'M' THEN
        PERFORM pg_logical_emit_message(true, 'tandem.claim', jsonb_build_object(
            'op', lower(TG_OP), 'schema', TG_TABLE_SCHEMA, 'table', TG_TABLE_NAME, 'old', to_jsonb(OLD))::text);
    END IF;
    IF TG_OP = 'DELETE' THEN
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

-- Cloud side: ownership marking, and what init changed that uninstall must restore.

-- A phone's write is always mobile-owned: every INSERT or UPDATE not made by tandem (whose sessions set
-- tandem.applying = on) gets source = 'M'. So a phone's edit of a desktop-made row makes it mobile-owned;
-- a later desktop change of that row is then a logged conflict, not a silent revert.
CREATE OR REPLACE FUNCTION tandem.mark_mobile() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    IF current_setting('tandem.applying', true) IS DISTINCT FROM 'on' THEN
        NEW.source := 'M';
    END IF;
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

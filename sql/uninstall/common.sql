-- Removes schema tandem and everything in it (outbox, progress, conflicts, dead letters, functions).
-- tandem uninstall runs it after it has dropped the triggers, the publication and the slot, and restored
-- the replica identities it changed.
DROP SCHEMA IF EXISTS tandem CASCADE;

-- PostgreSQL only: SQLite has no notifications, and Ponte does not cache the directory
-- there (crates/server/src/directory). Kept so both engines have the same versions.
SELECT 1;

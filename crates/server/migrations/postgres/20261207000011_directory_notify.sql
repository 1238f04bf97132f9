-- Every change to what the directory cache keeps (crates/server/src/directory) announces
-- the account it belongs to on the channel `ponte_directory`, so each replica forgets
-- that account's entries. NOTIFY is delivered at commit, once per distinct payload per
-- transaction, and never for a rolled-back change.
-- TG_ARGV[0] names the column holding the account id.
CREATE FUNCTION ponte_directory_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    new_account TEXT;
    old_account TEXT;
BEGIN
    IF TG_OP <> 'DELETE' THEN
        new_account := to_jsonb(NEW) ->> TG_ARGV[0];
        PERFORM pg_notify('ponte_directory', new_account);
    END IF;
    IF TG_OP <> 'INSERT' THEN
        old_account := to_jsonb(OLD) ->> TG_ARGV[0];
        IF old_account IS DISTINCT FROM new_account THEN
            PERFORM pg_notify('ponte_directory', old_account);
        END IF;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER accounts_directory AFTER INSERT OR UPDATE OR DELETE ON accounts
    FOR EACH ROW EXECUTE FUNCTION ponte_directory_changed('id');
CREATE TRIGGER users_directory AFTER INSERT OR UPDATE OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION ponte_directory_changed('account_id');
CREATE TRIGGER external_identities_directory AFTER INSERT OR UPDATE OR DELETE ON external_identities
    FOR EACH ROW EXECUTE FUNCTION ponte_directory_changed('account_id');
CREATE TRIGGER companies_directory AFTER INSERT OR UPDATE OR DELETE ON companies
    FOR EACH ROW EXECUTE FUNCTION ponte_directory_changed('account_id');
CREATE TRIGGER integrations_directory AFTER INSERT OR UPDATE OR DELETE ON integrations
    FOR EACH ROW EXECUTE FUNCTION ponte_directory_changed('account_id');
CREATE TRIGGER invites_directory AFTER INSERT OR UPDATE OR DELETE ON invites
    FOR EACH ROW EXECUTE FUNCTION ponte_directory_changed('account_id');

-- TRUNCATE fires no row trigger: say "everything" once per statement.
CREATE FUNCTION ponte_directory_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ponte_directory', '*');
    RETURN NULL;
END
$$;

CREATE TRIGGER accounts_directory_truncate AFTER TRUNCATE ON accounts
    FOR EACH STATEMENT EXECUTE FUNCTION ponte_directory_truncated();
CREATE TRIGGER users_directory_truncate AFTER TRUNCATE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION ponte_directory_truncated();
CREATE TRIGGER external_identities_directory_truncate AFTER TRUNCATE ON external_identities
    FOR EACH STATEMENT EXECUTE FUNCTION ponte_directory_truncated();
CREATE TRIGGER companies_directory_truncate AFTER TRUNCATE ON companies
    FOR EACH STATEMENT EXECUTE FUNCTION ponte_directory_truncated();
CREATE TRIGGER integrations_directory_truncate AFTER TRUNCATE ON integrations
    FOR EACH STATEMENT EXECUTE FUNCTION ponte_directory_truncated();
CREATE TRIGGER invites_directory_truncate AFTER TRUNCATE ON invites
    FOR EACH STATEMENT EXECUTE FUNCTION ponte_directory_truncated();

-- The language a user's mail is written in (it or en), set by the POS backend or an admin.
ALTER TABLE users ADD COLUMN lang TEXT NOT NULL DEFAULT 'it';

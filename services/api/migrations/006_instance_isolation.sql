-- Whether an instance runs as a user of its own (the local driver as root) or as the platform's
-- user; NULL when the platform that started it did not say.
ALTER TABLE instances ADD COLUMN isolated BOOLEAN;

-- The volumes an instance was placed with (a JSON list of pier.volumes.Volume): a restart mounts the same.
ALTER TABLE instances ADD COLUMN volumes TEXT NOT NULL DEFAULT '[]';

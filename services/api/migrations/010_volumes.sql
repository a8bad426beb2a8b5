-- The model API's volumes (pier.volumes.Volume, a JSON list), fixed at create and placed with it.
ALTER TABLE models ADD COLUMN volumes TEXT NOT NULL DEFAULT '[]';

-- The model API's health policy, as placed: the kubernetes driver makes it its pods' probes, and a
-- restart of an instance starts it with the same ones. NULL (instances placed before): the defaults.
ALTER TABLE instances ADD COLUMN health TEXT;

"""Documents and state: spec, validation, templating, store, secrets, bus, collaboration."""

"""Request and response models of the REST API, one module per resource.

Request models (``…In``, ``…Update``) forbid unknown fields and refuse, anywhere in the
document, text with NUL characters and non-finite numbers (neither can be stored as
JSON or text on Postgres); response models (``…Out``) are separate, so what the API
accepts and what it shows can change independently.
"""

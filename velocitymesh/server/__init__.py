"""The server layer (DESIGN.md §4, §6): one ASGI app with the REST API, webhooks, health,
login and the Panel dashboard. Start with ``velocitymesh.server.app.create_app``."""

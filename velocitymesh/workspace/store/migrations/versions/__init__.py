"""Migration scripts, applied in order by ``velocitymesh.workspace.store.db.upgrade``."""

"""SQLAlchemy models, one module per domain word; importing this registers them all."""

"""End-to-end jobs behind the CLI commands (each composes data, models, objectives and hooks)."""

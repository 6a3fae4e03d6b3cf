"""The core: settings, the schema, the database, object storage, ingest, scoring, writes and reads — plain functions."""

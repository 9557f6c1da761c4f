"""The cloud coordinator: ingest, registry, flexibility model, dispatch, trader API."""

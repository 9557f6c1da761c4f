"""The trader API (FastAPI): pools, flexibility, schedules, setpoints, a live stream, under /v1."""

from cloud.api.app import ApiServer, ApiSettings, create_app, serve_api

__all__ = ["ApiServer", "ApiSettings", "create_app", "serve_api"]

"""Replicate's API for the klein models (routes.py): predictions, their stream and webhook, the models."""

from kleinserve.api.replicate.routes import router

__all__ = ["router"]

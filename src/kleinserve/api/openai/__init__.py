"""The OpenAI Images dialect: routes.py (the routes), multipart.py (reading an edit's form and its image
files)."""

from kleinserve.api.openai.routes import router

__all__ = ["router"]

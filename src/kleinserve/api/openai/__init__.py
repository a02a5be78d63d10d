"""The OpenAI Images dialect: routes.py (the routes), schemas.py (the bodies they validate and the answers,
as /openapi.json shows them), multipart.py (reading an edit's form and its image files)."""

from kleinserve.api.openai.routes import router

__all__ = ["router"]

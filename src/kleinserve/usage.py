"""Token usage of a generation, in the shape OpenAI's image models report it.

What the model really processes, counted in its own units:
- text tokens: the prompt as the text encoder sees it (chat template applied, at most 512 tokens, padding
  not counted), plus the negative prompt's when classifier-free guidance runs a second pass;
- image tokens: the latent tokens of the reference images (one per 16x16 pixels of each reference at the
  size it is encoded at);
- output tokens: the latent tokens generated (one per 16x16 pixels of each output image).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from kleinserve.request import GenerationRequest, reference_image_size

PIXELS_PER_TOKEN = 16


@dataclass(frozen=True)
class Usage:
    text_tokens: int
    image_tokens: int
    output_tokens: int

    @property
    def input_tokens(self) -> int:
        return self.text_tokens + self.image_tokens

    def openai(self) -> dict:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.input_tokens + self.output_tokens,
            "input_tokens_details": {"text_tokens": self.text_tokens, "image_tokens": self.image_tokens},
            "output_tokens_details": {"text_tokens": 0, "image_tokens": self.output_tokens},
        }

    def record(self) -> dict:
        return asdict(self)


def image_tokens(width: int, height: int) -> int:
    return (width // PIXELS_PER_TOKEN) * (height // PIXELS_PER_TOKEN)


def request_usage(request: GenerationRequest, text_tokens: int) -> Usage:
    references = sum(image_tokens(*reference_image_size(*image.size)) for image in request.images)
    return Usage(text_tokens, references, request.num_images * image_tokens(request.width, request.height))

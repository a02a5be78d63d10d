"""kleinserve: self-hosted serving for the FLUX.2 [klein] image models."""

__version__ = "0.1.0"

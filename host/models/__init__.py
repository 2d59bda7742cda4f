"""Model zoo, user-model loading and a short training routine."""

from host.models.zoo import available_models, create_model

__all__ = ["available_models", "create_model"]

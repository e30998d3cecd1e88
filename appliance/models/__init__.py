"""TangoFlux inference (diffusers + transformers) and a tiny offline stand-in for tests."""

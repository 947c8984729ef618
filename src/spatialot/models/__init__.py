"""spatialot.models."""

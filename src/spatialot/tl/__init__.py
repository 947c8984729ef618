"""spatialot.tl."""

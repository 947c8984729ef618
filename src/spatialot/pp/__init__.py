"""spatialot.pp."""

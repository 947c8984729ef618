"""spatialot.pl."""

"""Ray Train training, Ray Tune search and evaluation on a feature table."""

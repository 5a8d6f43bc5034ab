"""Pipelines over the commands: the recipe from labelled data to a calibrated manifest."""

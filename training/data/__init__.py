"""Data: sources, face-crop extraction, the crop index, group folds, datasets and samplers, self-blending."""

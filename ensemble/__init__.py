"""Stacking ensemble and the Kaggle bundle."""

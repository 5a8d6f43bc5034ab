"""The training loop of one model on one fold, its settings, initialisation, evaluation and export."""

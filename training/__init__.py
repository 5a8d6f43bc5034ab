"""Training: face extraction, leak-free folds and train_fold.py."""

"""Research tools: robustness to upload noise and white-box attacks, and training-time defences."""

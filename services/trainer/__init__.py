"""The learning loop: training data from the plant's documents and history, fine-tuning, model versions."""

"""Downstream task plugins (entry-point group `vlp.tasks`): retrieval, zero-shot, linear probe,
fine-tuning and VQA."""

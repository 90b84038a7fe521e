"""Two-line integrations with training frameworks (Hugging Face transformers,
Lightning, Keras 3) and a decorator for any training function.

Each framework is imported only by its own module, so ``import afs_core`` never
loads torch, transformers, lightning or keras.
"""

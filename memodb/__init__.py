"""memodb: build, read, check and describe MEmoBERT / UNITER-compatible LMDB databases.

Never imports torch.
"""
__version__ = "0.1.0"

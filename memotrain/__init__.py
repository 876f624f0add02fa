"""memotrain: the thin trainer for MEmoBERT-style models (reads memodb databases)."""

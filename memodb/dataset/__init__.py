"""Dataset folders: the dataset config, ``memo db build`` (whole or one shard) and
``memo db merge``."""

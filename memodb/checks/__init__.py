"""``memo db check``: the dispatcher (run), the report types, and the checks of feature
databases, text databases and folders (split groups, dataset and shard folders)."""

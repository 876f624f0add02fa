"""memodb: build, read, check and describe MEmoBERT / UNITER-compatible LMDB databases.
Never imports torch. The public API is below; each name is imported on first use (PEP 562),
so ``import memodb.errors`` stays cheap."""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_API = {
    "create_imgdb": "memodb.feature.imgdb",
    "feature_warnings": "memodb.feature.imgdb",
    "rawimg_db": "memodb.feature.rawimg",
    "extract_speech": "memodb.feature.speech",
    "trans2npz": "memodb.feature.trans2npz",
    "create_txtdb": "memodb.text.txtdb",
    "FeatureDB": "memodb.store.reader",
    "TextDB": "memodb.store.textdb",
    "BuildResult": "memodb.store.build",
    "check": "memodb.checks.run",
    "CheckReport": "memodb.checks.report",
    "build_dataset": "memodb.dataset.build",
    "merge_shards": "memodb.dataset.merge",
    "stats": "memodb.describe",
    "MemoError": "memodb.errors",
    "BadInputError": "memodb.errors",
    "BadInputsError": "memodb.errors",
    "OutputExistsError": "memodb.errors",
    "DatabaseError": "memodb.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'memodb' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__():
    return sorted(set(globals()) | set(_API))

"""What every memo database shares: keys, value codecs, manifests, names, the staged writer and
the one build protocol, the readers (FeatureDB, TextDB)."""

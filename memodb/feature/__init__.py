"""Feature databases: upstream inputs (npz, Denseface h5, OpenFace crops), frame selection,
create-imgdb, trans2npz and rawimg-db."""

"""Engine connectors: one sub-package per database engine (reader, writer, catalog, types)."""

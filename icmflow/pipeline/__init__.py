"""The pipeline layer: CLI, params schema, output paths and provenance."""

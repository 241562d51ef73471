"""Spark jobs of TRAIT's data-selection side: ingest, score, select. Imports pyspark, pyarrow and fastText only."""

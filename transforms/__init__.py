"""Reusable PTransforms and DoFns shared by every job (stream, backfill, training)."""

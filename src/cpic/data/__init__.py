"""Data layer: built-in volumes (procedural fields now; real volumes and cohorts to come)."""

from cpic.data.procedural import blob_field

__all__ = ["blob_field"]

"""Small building blocks shared by several layers; imports nothing else of cpic."""

from cpic.util.atomic import atomic_path, new_temp_file, write_text_atomic
from cpic.util.keystore import KeyStore

__all__ = ["KeyStore", "atomic_path", "new_temp_file", "write_text_atomic"]

"""Small building blocks shared by several layers; imports nothing else of cpic."""

from cpic.util.atomic import atomic_path, new_temp_file, write_text_atomic
from cpic.util.keystore import KeyStore
from cpic.util.optional import MissingDependency, require
from cpic.util.threads import Threads, choose_threads, use_threads

__all__ = [
    "KeyStore",
    "MissingDependency",
    "Threads",
    "atomic_path",
    "choose_threads",
    "new_temp_file",
    "require",
    "use_threads",
    "write_text_atomic",
]

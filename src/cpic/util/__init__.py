"""Small building blocks shared by several layers; imports nothing else of cpic."""

from cpic.util.keystore import KeyStore

__all__ = ["KeyStore"]

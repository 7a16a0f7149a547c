"""Offline data sources: real data that ships inside PyPI packages, or files the user names."""

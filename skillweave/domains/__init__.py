"""Domains, one folder each."""

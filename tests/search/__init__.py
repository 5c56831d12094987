"""Tests of the search package (spaces, data, trainer, store, drivers, gallery)."""

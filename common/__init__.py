"""Shared pieces: data records, wire codec, env specs and wrappers, config and metric helpers."""

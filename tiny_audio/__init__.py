"""Tiny Audio's recipe around the shipped model files: presets, data, stage 0, evaluation, corpus, offline bases, demo."""

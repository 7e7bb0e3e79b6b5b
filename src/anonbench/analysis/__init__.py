"""Analyses the stages and the report share: scoring, resampling, similarity, stale labels, SSIM summaries, privacy."""

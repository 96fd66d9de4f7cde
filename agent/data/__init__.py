"""Offline speech and text data: TTS voices, sentences, and synthesized speech sets with manifests."""

"""Judging embeddings and runs: `textinv eval` (`evaluate`, with CLIP/DINO in `scoring`) and the HTML run report
(`report`)."""

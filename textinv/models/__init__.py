"""Models: where one comes from (`source`), what its files say without loading it (`peek`), loading it (`loading`,
`checkpoints`), putting embeddings into it (`embeddings`, `tokens`), its text conditioning (`conditioning`) and its
vocabulary (`vocabulary`)."""

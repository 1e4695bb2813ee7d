"""Training an embedding: the loop (`loop`), what it builds before its first step (`setup`), what a checkpoint
holds and how a run starts or resumes (`state`), what it draws from (`data`), its image logs (`image_log`) and
validation while it trains (`validation`). The run folder itself is `textinv.runs.Run`'s."""

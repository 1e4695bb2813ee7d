"""Making images: sampling with embeddings (`sampling`), the PNG metadata that describes them (`metadata`), a loaded
model kept between requests (`session`) and the interactive dream> prompt (`dream`)."""

"""Training an embedding: the loop (`loop`), what it draws from (`data`), its image logs (`image_log`) and
validation while it trains (`validation`)."""

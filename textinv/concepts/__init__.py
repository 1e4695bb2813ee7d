"""The sd-concepts-library on the Hugging Face hub: fetching a concept (`fetch`) and searching for one (`search`)."""

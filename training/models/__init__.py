"""One module per model; `training.registry` lists them."""

"""`python -m training fit`: your own data -> a trained, exported, carded (and optionally published) model.

One module per concern: `options` (what the command was asked), `cli` (the command line), `sources` (which
kind of data a path holds), `tables` / `images` / `series` (the readers), `clean` (checks and splits of vectors),
`nets` (the networks), `pca` (the baseline and its export as a linear autoencoder), `loop` (training with early
stopping), `progress` (the terminal), `distributed` (torchrun), `vectors` / `pictures` / `sequences` (one fit
per kind), `summary` (what the command prints at the end). Nothing runs at import.
"""

"""The benchmark's comparison side, kept out of the installed product.

`chatroom bench` (in the package) loads chatroom and measures it. This folder holds
what only the people measuring need: the peer servers (`peers/`), `--compare`,
`--sweep` and `--plot`, run from the repository's root as `python -m bench`, with
the extra packages in `bench/requirements.txt`.
"""

"""``python -m shardcache``: the same as the ``shardcache`` command."""

from .cli import main

main()

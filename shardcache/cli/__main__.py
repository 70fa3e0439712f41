"""``python -m shardcache.cli``: the same as the ``shardcache`` command."""

from . import main

main()

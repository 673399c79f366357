"""The GPU recipe: what travels to a lent GPU machine (``pack``: dataset, weights, wheels) and
what runs there and comes back (``run``: train, extract, benchmark, return the results;
``lease``: the machine's limits; ``gpu_check``: the plan of tools/gpu_check.sh, checked here)."""

"""The GPU recipe: what travels to a lent GPU machine (``pack``: dataset, weights, wheels) and
what runs there and comes back (``run``: train, extract, benchmark, return the results)."""

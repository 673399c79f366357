"""The CRF stage of the pipeline over the ``densecrf`` library: pairing dumped score maps with
their images (``io``), refining a list in parallel, resumably (``batch``) and searching the CRF
parameters on a held-out set (``search``)."""

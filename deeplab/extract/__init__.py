"""Score-map extraction: run a test net over a list of images and dump one score map per image
(``runner``: reading, batching, writing, resuming), the net wrapper that gives class scores for
an image canvas (``scorenet``) and the score-map files themselves (``scoremaps``: .npy + .json
sidecar, the fork's .mat, upsampling with the Interp alignment)."""

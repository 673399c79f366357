"""Utilities, as BVLC's src/caffe/util: atomic output files (``files``), image and label I/O
(``images``), list files (``lists``), HDF5 blobs (``hdf5``) and LMDB / LevelDB Datum records (``db``)."""

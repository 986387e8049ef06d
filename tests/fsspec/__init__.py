"""Tests of the fsspec filesystem (nbia://) and its use from Dask."""

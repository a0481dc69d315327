"""VOP overlap retrieval pipeline: the package behind the Snakemake workflow."""

__version__ = "0.1.0"

"""VOP overlap retrieval pipeline: the package behind the Snakemake workflow."""

import os

# HDF5 file locking fails on NFS/Lustre (errno 37) and every writer here owns its file: switch it off
# before h5py is first imported. A value the user set wins.
os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")

__version__ = "0.1.0"

"""Methods built on the foundation: STEGO (``stego``) and the study's projection baselines (``projections``)."""

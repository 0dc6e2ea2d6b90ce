"""Training a sweep's same-shaped jobs as one stacked model (``launcher=stacked``): which jobs
stack (``plan``), the training loop (``training``) and the per-model L-BFGS (``lbfgs``)."""

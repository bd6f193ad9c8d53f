"""Training: the epoch loop on Ray Train with a single-process twin (``loop``: ``train_model``, ``train_local``)
and hyper-parameter search on Ray Tune (``tune``: ``tune_model``). The models themselves live in
``raymlops.model.nets``.

Import the submodules directly; this package imports nothing so ``import raymlops.train`` stays cheap.
"""

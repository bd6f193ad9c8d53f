"""Training: the epoch loop on Ray Train with a single-process twin (``loop``: ``train_model``, ``train_local``),
gradient-boosted trees on Ray Train's XGBoostTrainer (``gbdt``: ``train_gbdt``, ``fit_gbdt``) and hyper-parameter
search on Ray Tune for both (``tune``: ``tune_model``). The models themselves live in ``raymlops.model.nets`` and
``raymlops.model.gbdt``.

Import the submodules directly; this package imports nothing so ``import raymlops.train`` stays cheap.
"""

"""Serving: online inference on Ray Serve and batch prediction on Ray Data, both through ``load_package``.

``raymlops.serve.batch.predict_batch`` scores a whole dataset with a registered model version.
``raymlops.serve.predlog`` is the buffered parquet prediction / feedback log and its reader (``read_log``,
``join_feedback``); the routing and request-validation logic it serves with is pure, in ``raymlops.core.routing``
and ``raymlops.core.request_validation``.
"""

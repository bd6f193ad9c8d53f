"""The controller that runs the loop: triggers, retraining, canary analysis, promotion and rollback.

The pure half (no Ray, no MLflow, clock injected): the state machine (``state``), canary analysis (``canary``)
and trigger policies (``triggers``). The shell over it: ``controller`` (the plain-Python controller that persists,
acts and observes through ports), ``ports`` (the real ports: state file, Ray tasks, Serve, MLflow, logs, webhook),
``actor`` (the detached Ray actor around it), ``monitor``, ``preexposure``, ``status`` and ``operations`` (operator
commands: promote, rollback, pause, resume, approve). ``statefile`` owns the persisted state's place and layout.
Import the submodules directly; this package imports nothing.
"""

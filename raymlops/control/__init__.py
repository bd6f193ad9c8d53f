"""The controller's pure logic: canary analysis (``canary``), trigger policies (``triggers``) and the controller
state machine (``state``). Clock injected, no Ray, no MLflow: the detached actor is a thin shell around these.
"""

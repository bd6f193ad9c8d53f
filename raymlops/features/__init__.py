"""The feature store: definitions, point-in-time retrieval, materialisation and online retrieval.

Nothing heavy is imported here; import the submodules (``definitions``, ``offline``, ``materialize``, ``online``,
``stores``, ``serving``, ``training``) directly.
"""

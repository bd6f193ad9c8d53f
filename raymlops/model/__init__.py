"""The model package and the built-in nets: what ``train`` writes and evaluation, serving and the registry read.

``raymlops.model.nets`` builds the models (the built-in tabular MLP, or a user factory) and maps their outputs to
predictions; ``raymlops.model.package`` writes and loads a package (safetensors weights, fitted transform, frozen
schema, signature, metrics, and a sha256 manifest). ``load_package`` is the single loading path of evaluation,
batch prediction and online serving. Import the submodules directly; this package imports nothing.
"""

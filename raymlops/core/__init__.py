"""Pure logic (numpy / pyarrow / polars only): statistics sketches, schema, drift, validation, transforms."""

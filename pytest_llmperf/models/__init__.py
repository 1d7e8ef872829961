"""Models under test: specs (``spec``), named shapes (``shapes``), dtypes, memory plans (``plan``),
synthetic checkpoints (``synthetic``, ``tokenizer``) and resolving a spec to a checkpoint here
(``sources``)."""

"""The regression gate: per-comparison evidence, the rule that turns it into a verdict, and its baselines."""

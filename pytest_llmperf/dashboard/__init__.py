"""The trend dashboard: a static site of every series' history, with its change points flagged."""
